"""analyzer.redact: secrets out of text and out of every log record, botocore's debug log included."""

from __future__ import annotations

import io
import logging
import urllib.parse

import boto3
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from analyzer.redact import (
    REDACTED,
    RedactingFilter,
    install_redaction,
    redact,
    redact_any,
    redact_record,
    redact_url,
)
from tests.conftest import moto_s3

KEY_ID = "ASIAQEXAMPLEKEY12345"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLETOKEN//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="
PASSWORD = "Pa55w0rdX"


# ---------------------------------------------------------------------------------------------
# redact_url


@pytest.mark.parametrize(("url", "expected"), [
    ("http://user:Pa55w0rdX@models.internal:8080/invocations", "http://***@models.internal:8080/invocations"),
    ("https://user:p%40ss%2Fword@host/x?y=1", "https://***@host/x?y=1"),  # '@' and '/' percent-encoded
    ("http://user:p@ss@host:1/", "http://***@host:1/"),  # an unencoded '@' in the password
    ("http://user:pw@[::1]:8080/invocations", "http://***@[::1]:8080/invocations"),
    ("http://[::1]:8080/invocations", "http://[::1]:8080/invocations"),
    ("s3://AKIAEXAMPLE:secret@bucket/key", "s3://***@bucket/key"),
    ("http://token@host/", "http://***@host/"),
    ("http://host/path/user@example.com", "http://host/path/user@example.com"),  # '@' after the host
    ("http://host/?mail=a@b.c", "http://host/?mail=a@b.c"),
    ("mail bob@example.com", "mail bob@example.com"),
    ("", ""),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_inside_a_sentence_and_a_repr() -> None:
    text = "Using the model endpoint at 'http://u:Pa55w0rdX@h:1' (or http://v:Pa55w0rdX@h:2/x, again)"
    assert redact_url(text) == "Using the model endpoint at 'http://***@h:1' (or http://***@h:2/x, again)"


# ---------------------------------------------------------------------------------------------
# redact: shapes


@pytest.mark.parametrize(("text", "secret"), [
    # dict reprs as botocore logs them (str and bytes values)
    (f"headers={{'X-Amz-Security-Token': b'{SESSION_TOKEN}', 'Content-Length': '0'}}", SESSION_TOKEN),
    (f"{{'Authorization': b'AWS4-HMAC-SHA256 Credential={KEY_ID}/20240101/us-east-1/s3/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=90b16cacd5d3520ab8217b38cdcab877'}", "90b16cacd5d3520ab"),
    (f"{{'Authorization': 'AWS4-HMAC-SHA256 Credential={KEY_ID}/20240101/us-east-1/s3/aws4_request'}}", KEY_ID),
    # header lines, with and without a space, and a header line inside a bytes repr
    (f"x-amz-security-token:{SESSION_TOKEN}", SESSION_TOKEN),
    ("Authorization: Basic dXNlcjpQYTU1dzByZFg=", "dXNlcjpQYTU1dzByZFg="),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9"),
    ("send: b'POST /invocations HTTP/1.1\\r\\nHost: h\\r\\nAuthorization: Basic dXNlcjpw\\r\\n\\r\\n'",
     "dXNlcjpw"),
    # botocore.auth's debug line: the signature is on the next line
    ("Signature:\n90b16cacd5d3520ab8217b38cdcab8776af2ce2632b031ace3457e7d4b89ddd2", "90b16cacd5d3520ab82"),
    # JSON (credentials files, STS as JSON) and XML (STS answers in a "Response body" line)
    (f'{{"AccessKeyId": "{KEY_ID}", "SecretAccessKey": "{SECRET_KEY}", "SessionToken": "{SESSION_TOKEN}"}}',
     SECRET_KEY),
    (f"b'<Credentials><AccessKeyId>{KEY_ID}</AccessKeyId><SecretAccessKey>{SECRET_KEY}</SecretAccessKey>"
     f"<SessionToken>{SESSION_TOKEN}</SessionToken></Credentials>'", SESSION_TOKEN),
    (f"aws_secret_access_key = {SECRET_KEY}", SECRET_KEY),
    # presigned URLs, SigV4 and SigV2
    (f"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={KEY_ID}%2F20240101%2F"
     "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
     "&X-Amz-Signature=4f6a0c1e2d3b4a5968778695a4b3c2d1e0f", "4f6a0c1e2d3b4a5968778695a4b3c2d1e0f"),
    (f"http://127.0.0.1:1/b/k?AWSAccessKeyId={KEY_ID}&Signature=IsNYSbEID1C4boNz11w3iVdxOxE%3D"
     "&x-amz-security-token=IQoJb3JpZ2luX2VjEXAMPLE%2F%2F&Expires=1796535658", "IsNYSbEID1C4boNz11w3iVdxOxE"),
    # key ids alone, and a URL password in an exit message
    (f"Unable to locate credentials for {KEY_ID}", KEY_ID),
    ("ClientError: The model at http://svc:Pa55w0rdX@10.0.0.5:8080/invocations failed", PASSWORD),
    ("password=Pa55w0rdX&user=me", PASSWORD),
    # credentials in query strings and compound field names (found by the security review)
    (f"GET /invocations?access_token={PASSWORD}&client_secret=Zz9SEKRIT/ping", PASSWORD),
    ("GET /invocations?page=1&client_secret=Pa55w0rdX", PASSWORD),
    (f"https://h/x?apiKey={PASSWORD}&page=2", PASSWORD),
    (f"x-auth-token: {PASSWORD}", PASSWORD),
    (f"{{'client_secret': '{PASSWORD}'}}", PASSWORD),
    (f"db_password={PASSWORD} retries=3", PASSWORD),
    # unencoded '#' and '?' in a URL password
    ("endpoint http://alice:S3cr#Pa55w0rdX@127.0.0.1:1/invocations", "Pa55w0rdX"),
    ("endpoint http://alice:S3cr?Pa55w0rdX@127.0.0.1:1/invocations", "Pa55w0rdX"),
])
def test_redact_hides_the_secret_in_each_shape(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert REDACTED in cleaned
    assert KEY_ID not in cleaned and SESSION_TOKEN not in cleaned
    assert redact(cleaned) == cleaned  # idempotent


def test_redact_keeps_what_is_around_the_secret() -> None:
    assert redact("headers={'X-Amz-Date': b'20240101T000000Z', 'X-Amz-Security-Token': b'abc', 'Host': 'h'}") == (
        "headers={'X-Amz-Date': b'20240101T000000Z', 'X-Amz-Security-Token': ***, 'Host': 'h'}")
    assert redact("Authorization: Basic dXNl\nnext line") == "Authorization: ***\nnext line"


@pytest.mark.parametrize("text", [
    "2024-05-01 12:00:00,123 INFO lucent: Analysis config path: /opt/ml/processing/input/config/a.json",
    "Dataset type: text/csv uri: /opt/ml/processing/input/data",
    "Using the model endpoint at http://127.0.0.1:8080",
    "Model endpoint delivered 12.50000 requests per second and a total of 40 requests over 3 seconds",
    "Collected analyses:\n{\n    \"version\": \"1.0\",\n    \"label\": \"Target\", \"facet\": [\"Sex\"]\n}",
    "Top tokens of review: great, bad, awful (max_top_tokens: 50)",
    "feature top_token: 5, n_tokens=3, granularity: token",
    "Calculating signature using v4 auth.",
    "host;x-amz-content-sha256;x-amz-date;x-amz-security-token\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4",
    "mail bob@example.com or see s3://bucket/prefix/key@v2?versionId=3",
    "exit_message: Completed: SageMaker XAI Analyzer ran successfully",
    "Ünïcödé ✓ 日本語のテキスト 🙂",
    "",
])
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


_KEYWORDS = ("authoriz", "token", "secret", "password", "passwd", "cookie", "signature", "credential", "key=",
             "auth", "pwd", "sig", "session", "passw",
             "api_key", "api-key", "apikey", "akia", "asia", "aroa", "aida", "anpa", "agpa", "abia", "acca")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="@", blacklist_categories=("Cs",))))
@example("key: value, other=thing; x [1] {a: b}")
def test_text_without_secret_markers_is_unchanged_byte_for_byte(text: str) -> None:
    if any(word in text.lower() for word in _KEYWORDS):
        return
    assert redact(text) == text


@settings(max_examples=300, deadline=None)
@given(secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=%-_",
                      min_size=8, max_size=60),
       shape=st.sampled_from([
           "http://u:{s}@host:8080/x", "'Authorization': b'Bearer {s}'", "X-Amz-Security-Token: {s}",
           "{{\"SessionToken\": \"{s}\"}}", "<SecretAccessKey>{s}</SecretAccessKey>", "?X-Amz-Signature={s}&a=b",
           "token={s}", "Signature:\n{s}", "https://user:{s}@[2001:db8::1]/", "password: '{s}'"]))
def test_no_secret_survives_any_shape(secret: str, shape: str) -> None:
    if "://" in shape:  # userinfo is percent-encoded in a URL (an unencoded '/' would end the host)
        secret = urllib.parse.quote(secret, safe="")
    text = "before " + shape.format(s=secret) + " after"
    cleaned = redact(text)
    assert secret not in cleaned
    assert cleaned.startswith("before ")
    assert redact(cleaned) == cleaned


def test_redact_any_walks_json_values() -> None:
    value = {"uri": "http://u:Pa55w0rdX@h/", "list": ["x", {"t": f"token={SESSION_TOKEN}"}], "n": 3, "f": None}
    assert redact_any(value) == {"uri": "http://***@h/", "list": ["x", {"t": "token=***"}], "n": 3, "f": None}


# ---------------------------------------------------------------------------------------------
# Log records


@pytest.fixture
def captured_root_log():
    """The root logger at DEBUG with a handler on a buffer, redaction installed; restored afterwards."""
    root = logging.getLogger()
    previous_level, previous_factory = root.level, logging.getLogRecordFactory()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_redaction(root)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        logging.setLogRecordFactory(previous_factory)


def test_records_are_redacted_in_message_arguments_and_traceback(captured_root_log) -> None:
    log = logging.getLogger("lucent.test_redact")
    log.info("endpoint %s with %r", "http://u:Pa55w0rdX@h:1/", {"Authorization": "Basic dXNlcjpw"})
    try:
        raise ValueError(f"bad token={SESSION_TOKEN}")
    except ValueError:
        log.exception("failed for %s", KEY_ID)
    text = captured_root_log.getvalue()
    assert PASSWORD not in text and "dXNlcjpw" not in text and SESSION_TOKEN not in text and KEY_ID not in text
    assert "endpoint http://***@h:1/ with {'Authorization': ***}" in text
    assert "ValueError: bad token=***" in text


def test_handlers_added_later_and_loggers_that_do_not_propagate_are_covered(captured_root_log) -> None:
    # gunicorn's error logger does this: its own handler, propagate=False, set up after ours.
    logger = logging.getLogger("lucent.test_redact.gunicorn_like")
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("upstream %s", "https://svc:Pa55w0rdX@h/")
    finally:
        logger.removeHandler(handler)
    assert own.getvalue() == "upstream https://***@h/\n"


def test_records_made_without_the_factory_are_redacted_by_the_handler_filter() -> None:
    record = logging.makeLogRecord({"msg": "token=%s", "args": (SESSION_TOKEN,), "levelno": logging.INFO})
    RedactingFilter().filter(record)
    assert record.getMessage() == "token=***"


def test_install_is_idempotent(captured_root_log) -> None:
    factory = logging.getLogRecordFactory()
    install_redaction()
    install_redaction()
    assert logging.getLogRecordFactory() is factory
    handler = logging.getLogger().handlers[-1]
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


def test_malformed_record_is_left_for_logging_to_report() -> None:
    record = logging.makeLogRecord({"msg": "%d apples", "args": ("three",)})
    assert redact_record(record) is record  # no exception here: the handler reports it as usual
    assert (record.msg, record.args) == ("%d apples", ("three",))


# ---------------------------------------------------------------------------------------------
# A real botocore client at DEBUG (what `lucent launch -v` prints)


@pytest.fixture(scope="module")
def moto_endpoint():
    with moto_s3() as url:
        yield url


def test_botocore_debug_log_carries_no_credentials(moto_endpoint, captured_root_log) -> None:
    session = boto3.session.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY,
                                    aws_session_token=SESSION_TOKEN, region_name="us-east-1")
    client = session.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="redact-test")
    client.put_object(Bucket="redact-test", Key="k", Body=b"x")
    assert client.get_object(Bucket="redact-test", Key="k")["Body"].read() == b"x"
    presigned = client.generate_presigned_url("get_object", Params={"Bucket": "redact-test", "Key": "k"})
    logging.getLogger("lucent.test_redact").info("Presigned: %s", presigned)
    client.delete_object(Bucket="redact-test", Key="k")
    client.delete_bucket(Bucket="redact-test")

    text = captured_root_log.getvalue()
    assert "botocore.endpoint" in text and "Sending http request" in text  # the debug log was on
    assert "Authorization" in text and "X-Amz-Security-Token" in text  # ... and showed the headers, redacted
    for secret in (KEY_ID, SECRET_KEY, SESSION_TOKEN, SESSION_TOKEN[:20]):
        assert secret not in text
    for line in text.splitlines():
        assert "AWS4-HMAC-SHA256 Credential" not in line
        if "'Authorization'" in line:
            assert "'Authorization': ***" in line


# ---------------------------------------------------------------------------------------------
# The model server's own process: gunicorn's handlers and the model's code


MODEL_SCRIPT = f'''
import logging

import numpy as np


class Model:
    def predict(self, x):
        return np.zeros(len(x))


def model_fn(model_dir):
    # Logged in a worker, through gunicorn's own (non-propagating) error logger and the root logger.
    logging.getLogger("gunicorn.error").warning("upstream is http://svc:{PASSWORD}@10.0.0.5/ token=%s",
                                                "{SESSION_TOKEN}")
    logging.getLogger("model").warning("key id {KEY_ID}")
    return Model()
'''


def test_model_server_log_is_redacted(tmp_path) -> None:
    from container.sidecar.server import start_model_server

    (tmp_path / "model" / "code").mkdir(parents=True)
    (tmp_path / "model" / "code" / "inference.py").write_text(MODEL_SCRIPT)
    log_file = tmp_path / "server.log"
    with start_model_server(tmp_path / "model", workers=1, log_file=log_file) as server:
        server.wait_healthy(60)
    text = log_file.read_text()
    assert "upstream is http://***@10.0.0.5/ token=***" in text
    assert "key id ***" in text
    assert PASSWORD not in text and SESSION_TOKEN not in text and KEY_ID not in text


@pytest.mark.parametrize(("expression", "reason"), [
    ("1", 'Parse error at column 0, token "1" (NUMBER)'),
    ("[*]]", 'Unexpected token ]: Parse error at column 3, token "]" (RBRACKET)'),
    ("$", "Unknown token $"),
    ("a[", "Incomplete expression"),
])
def test_jmespath_errors_survive_redaction(expression: str, reason: str) -> None:
    """jmespath's "invalid token: ..." read as a credential field: the user saw "invalid token: ***"."""
    from analyzer.errors import UserError
    from analyzer.predict.locator import JsonLocator

    with pytest.raises(UserError) as caught:
        JsonLocator(expression, "predictor.probability")
    assert redact(str(caught.value)) == (f"predictor.probability {expression!r} is not a valid JMESPath "
                                         f"expression: {reason}")
