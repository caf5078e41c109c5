"""Security findings of QA round 4, fixed: linear-time redaction, URL passwords with quotes, unsigned
SageMaker headers on signed requests, credentials in a scheduled crontab line, capture links out of
the monitor's folders, deeply nested capture lines."""

from __future__ import annotations

import json
import os
import time

import pytest

from analyzer.redact import REDACTED, redact, redact_url
from tests import test_endpoint_server, test_schedule

# ---------------------------------------------------------------------------------------------
# 1. redact() is linear in the length of its text (a model-server client controls logged text)

# Shapes that made one of the patterns quadratic (the first two were found by QA: 16 s and 5 s for
# 70 KB), and shapes that stress each pattern's slowest path.
_ADVERSARIAL = [
    ("", "a-", ""),                    # URL scheme rescanned from every word boundary
    ("", "x-auth-", "token"),          # the same, with a field name at the end
    ("", "a.", ""),
    ("", "a://a", ""),                 # many schemes, userinfo without '@'
    ("", "http://'", ""),
    ("?", "tokena", ""),               # a query parameter name split at every field word
    ("<", "tokena", ""),               # an XML element name split at every field word
    ("<", "token-", ""),
    ("", "xxxxn:", ""),                # words that look like a field until the name list
    ("", "a:", ""),
    ("", '"token":"', ""),
]


def _best_time(text: str, runs: int) -> float:
    """The shortest of ``runs`` timings (the others measure the machine's load); one run only when it
    takes over 2 s (a quadratic pattern: no need to wait for more)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        redact(text)
        best = min(best, time.perf_counter() - start)
        if best > 2:
            break
    return best


@pytest.mark.parametrize(("head", "unit", "tail"), _ADVERSARIAL)
def test_redact_time_grows_linearly_with_adversarial_text(head: str, unit: str, tail: str) -> None:
    # Ten times the text takes about ten times as long; a quadratic pattern takes a hundred times as long.
    def text(size: int) -> str:
        return head + unit * (size // len(unit)) + tail

    small = _best_time(text(100_000), runs=5)
    # Checked first so that a quadratic pattern fails here (half a minute at 100 KB before the fix) instead
    # of running an hour on 1 MB. About 0.05 s on a loaded two-core machine.
    assert small < 3, f"{unit!r}: 100 KB took {small:.3f} s"
    large = _best_time(text(1_000_000), runs=2)
    assert large / small < 40, f"{unit!r}: 1 MB took {large:.3f} s, 100 KB {small:.4f} s"
    assert large < 10  # generous: about 0.5 s on a loaded two-core machine


# ---------------------------------------------------------------------------------------------
# 2. URL passwords holding quotes or angle brackets are hidden whole


@pytest.mark.parametrize("char", ["'", '"', "<", ">"])
def test_url_password_with_a_quote_or_angle_bracket_is_hidden_whole(char: str) -> None:
    password = f"s3cr{char}etPa55"
    for text, expected in [
        (f"http://admin:{password}@127.0.0.1:9/", "http://***@127.0.0.1:9/"),
        (f'--model-url "http://admin:{password}@127.0.0.1:9/"', '--model-url "http://***@127.0.0.1:9/"'),
        (f"The model at http://svc:{password}@127.0.0.1:9/invocations did not become healthy",
         "The model at http://***@127.0.0.1:9/invocations did not become healthy"),
        (f"endpoint http://svc:{password}@h:1 and mail bob@example.com",
         "endpoint http://***@h:1 and mail bob@example.com"),
    ]:
        assert redact(text) == expected
        assert redact_url(text) == expected
        assert "etPa55" not in redact(text)


def test_s3_uri_with_access_key_and_quoted_secret_is_hidden_whole() -> None:
    text = "Loading s3://AKIAIOSFODNN7EXAMPLE:wJalr'XUtnFEMI@bkt/cfg/analysis_config.json"
    assert redact(text) == "Loading s3://***@bkt/cfg/analysis_config.json"
    assert redact_url("s3://AKIA:wJalr\"XUtnFEMI@bkt/cfg/") == "s3://***@bkt/cfg/"


def test_job_message_from_the_qa_repro_is_redacted() -> None:
    line = ("exit_message: ClientError: predictor.endpoint_url: The model at "
            "http://svc:Sup3r'Secret@127.0.0.1:9/invocations did not become healthy within 60 s "
            "(GET /ping: HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection)")
    cleaned = redact(line)
    assert "Sup3r" not in cleaned and "Secret@" not in cleaned
    assert "http://***@127.0.0.1:9/invocations did not become healthy" in cleaned
    assert cleaned.endswith("(GET /ping: HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection)")


@pytest.mark.parametrize("text", [
    '{"url":"http://h:1","mail":"a@b.c"}',             # compact JSON: the quote closes the URL
    '<a href="http://h/x">bob@example.com</a>',
    '<a href="http://h">bob@example.com</a>',
    "'http://h:1', 'bob@example.com'",
    "see http://h:1/x' and a@b",
])
def test_text_after_a_url_is_not_swallowed(text: str) -> None:
    assert redact(text) == text


def test_a_quoted_url_keeps_its_closing_quote_and_what_follows() -> None:
    assert redact("(url='http://u:p\"w@h:1/x') next@thing") == "(url='http://***@h:1/x') next@thing"
    assert redact("1.http://u:pw@h/ x") == "1.http://***@h/ x"
    assert redact(f"http://{REDACTED}@h/") == f"http://{REDACTED}@h/"


model_url = test_endpoint_server.model_url  # the same real model server fixture

# ---------------------------------------------------------------------------------------------
# 3. SigV4: every X-Amzn-SageMaker-* header must be signed; the log reason is printable and short


def _boto3_signed_request(url: str, **extra: str) -> tuple[str, dict[str, str], bytes]:
    """A request as boto3's sagemaker-runtime client signs and sends it (captured before sending)."""
    import boto3
    from botocore.config import Config

    from tests.test_endpoint_server import KEY_ID, NAME, SECRET

    sent: dict = {}

    def capture(request, **_) -> None:
        sent.update(url=request.url, headers=dict(request.headers), body=request.body)

    client = boto3.session.Session().client(
        "sagemaker-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET, config=Config(retries={"total_max_attempts": 1}, read_timeout=30))
    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", capture)
    answer = client.invoke_endpoint(EndpointName=NAME, Body=b"0.5,1,2,3", ContentType="text/csv", Accept="text/csv",
                                    **extra)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in sent["headers"].items()}
    body = sent["body"] if isinstance(sent["body"], bytes) else sent["body"].encode()
    return sent["url"], headers, body


@pytest.mark.parametrize("added", [
    {"X-Amzn-SageMaker-Inference-Id": "forged-id"},
    {"X-Amzn-SageMaker-Custom-Attributes": "injected"},
    {"X-Amzn-SageMaker-Enable-Explanations": "`true`"},
])
def test_sigv4_unsigned_sagemaker_header_added_to_a_signed_request_is_refused(model_url: str, added: dict) -> None:
    import urllib3

    from container.endpoint.auth import SigV4Verifier
    from tests.test_endpoint_server import KEY_ID, SECRET, endpoint

    with endpoint({}, model_url, verifier=SigV4Verifier(KEY_ID, SECRET)) as url:
        target, headers, body = _boto3_signed_request(url)
        assert not any(name.lower().startswith("x-amzn-sagemaker-") for name in headers)
        http = urllib3.PoolManager()
        assert http.request("POST", target, body=body, headers=headers).status == 200  # the replay window
        signed_id = _boto3_signed_request(url, InferenceId="signed-id-1")[1]  # boto3 signs each one it sends
        assert "x-amzn-sagemaker-inference-id" in signed_id["Authorization"]
        answer = http.request("POST", target, body=body, headers={**headers, **added})
        assert answer.status == 403
        assert answer.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")
        assert "must be signed" in json.loads(answer.data)["message"]
        assert next(iter(added)).lower() in json.loads(answer.data)["message"]


def _signed_headers(body: bytes, extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tests.test_endpoint_server import KEY_ID, SECRET

    request = AWSRequest("POST", "http://127.0.0.1:9/invocations", data=body,
                         headers={"Content-Type": "text/csv", **(extra or {})})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    return [*request.headers.items(), ("Host", "127.0.0.1:9")]


def test_sigv4_signed_sagemaker_headers_are_accepted_and_unsigned_ones_named() -> None:
    from container.endpoint.auth import AuthenticationError, SigV4Verifier
    from tests.test_endpoint_server import KEY_ID, SECRET

    verifier = SigV4Verifier(KEY_ID, SECRET)
    headers = _signed_headers(b"x", {"X-Amzn-SageMaker-Inference-Id": "a", "X-Amzn-SageMaker-Custom-Attributes": "c"})
    verifier.verify("POST", "/invocations", headers, b"x")
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify("POST", "/invocations", [*headers, ("X-Amzn-SageMaker-Target-Model", "m.tar.gz")], b"x")
    assert str(caught.value) == "unsigned SageMaker header(s): x-amzn-sagemaker-target-model"


def test_sigv4_refusal_reason_is_printable_and_short() -> None:
    from container.endpoint.auth import MAX_REASON_LENGTH, AuthenticationError, SigV4Verifier
    from tests.test_endpoint_server import KEY_ID, SECRET

    verifier = SigV4Verifier(KEY_ID, SECRET)
    headers = _signed_headers(b"x")
    hostile = "\x1b[2J\x1b]0;pwned\x07" + "n" * 6000
    # an unsigned SageMaker header with a hostile name, and a hostile name in SignedHeaders
    forged_authorization = [(k, v.replace("SignedHeaders=", f"SignedHeaders={hostile};") if k == "Authorization" else v)
                            for k, v in headers]
    for attempt in ([*headers, (f"x-amzn-sagemaker-{hostile}", "v")], forged_authorization):
        with pytest.raises(AuthenticationError) as caught:
            verifier.verify("POST", "/invocations", attempt, b"x")
        reason = str(caught.value)
        assert "\x1b" not in reason and "\x07" not in reason and "\\x1b[2j" in reason.lower()
        assert len(reason) <= MAX_REASON_LENGTH


# ---------------------------------------------------------------------------------------------
# 4. lucent schedule refuses to pin AWS_ENDPOINT_URL userinfo on a crontab line

# test_schedule's fixtures: the real crontab (restored afterwards), the SDK's monitoring schedule as files
crontab_lines, user_crontab, monitoring = test_schedule.crontab_lines, test_schedule.user_crontab, test_schedule.monitoring


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
@pytest.mark.parametrize("action", ["--print", "--install"])
def test_schedule_refuses_endpoint_url_userinfo(tmp_path, monkeypatch, capsys, crontab_lines, variable, action):
    from container.schedule import main

    monkeypatch.setenv("LUCENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, "http://minio:Pa55word@127.0.0.1:18652")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "credit-bias", "schedule": "hourly", "config": "s3://bkt/cfg/",
                               "data": "s3://bkt/ok/", "output": "s3://bkt/monitoring/"}), encoding="utf-8")
    before = crontab_lines()
    assert main([str(job), action]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: ${variable}: holds credentials in its URL (http://***@127.0.0.1:18652)"), err
    assert "Pa55word" not in err and "minio" not in err
    assert crontab_lines() == before
    assert not (tmp_path / "state").exists()
    monkeypatch.setenv(variable, "http://127.0.0.1:18652")  # without userinfo: pinned as before
    assert main([str(job), "--print"]) == 0
    assert f"{variable}=http://127.0.0.1:18652 " in capsys.readouterr().out


def test_schedule_refuses_endpoint_url_userinfo_for_a_monitoring_schedule(monitoring, crontab_lines, capsys,
                                                                           monkeypatch):
    from tests.test_schedule import schedule

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:Pa55'word@127.0.0.1:18652")
    before = crontab_lines()
    assert schedule(monitoring, "--install") == 1
    out, err = capsys.readouterr()
    assert "error: $AWS_ENDPOINT_URL: holds credentials in its URL (http://***@127.0.0.1:18652)" in err
    assert "Pa55" not in out + err
    assert crontab_lines() == before
    assert not monitoring["state"].exists()


# ---------------------------------------------------------------------------------------------
# 5. lucent monitor does not follow links out of the capture or ground truth folder
# 6. a deeply nested first capture line is a malformed line, not a traceback


@pytest.fixture
def churn_records():
    from container.monitor.demo import make_churn_data

    return make_churn_data(300, seed=2)


def test_monitor_skips_links_out_of_the_capture_and_ground_truth_folders(tmp_path, churn_records, caplog) -> None:
    import logging
    import shutil

    from container.monitor.demo import ENDPOINT
    from tests.test_monitor_run import Setup

    setup = Setup(tmp_path / "job", churn_records)
    capture_files = sorted((setup.capture / ENDPOINT).rglob("*.jsonl"))
    truth_files = sorted((setup.root / "ground-truth").rglob("*.jsonl"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("root:$6$secret-hash:19000:0:99999:7:::\n", encoding="utf-8")
    shutil.copy(capture_files[0], outside / "more-capture.jsonl")  # a valid capture file: would be merged twice
    shutil.copy(truth_files[0], outside / "more-truth.jsonl")
    hour = capture_files[0].parent
    (hour / "00-shadow.jsonl").symlink_to(outside / "shadow")
    (hour / "01-valid.jsonl").symlink_to(outside / "more-capture.jsonl")
    (truth_files[0].parent / "00-truth.jsonl").symlink_to(outside / "more-truth.jsonl")
    variant_link = setup.capture / ENDPOINT / "OtherVariant"
    variant_link.symlink_to(outside, target_is_directory=True)  # a variant folder leading out
    (hour / "02-inside.jsonl").symlink_to(capture_files[1])  # a link inside the folder is read as before
    caplog.set_level(logging.WARNING)

    assert setup.run() == 0
    counts = setup.analysis()["lucent"]["monitor"]
    assert counts["malformed_lines"] == 0  # the shadow file was not read
    assert counts["records_in_window"] == len(churn_records) + len(capture_files[1].read_text().splitlines())
    assert counts["ground_truth_without_records"] == 0
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped ")]
    for link in ("00-shadow.jsonl", "01-valid.jsonl", "00-truth.jsonl", "OtherVariant"):
        assert sum(link in message for message in skipped) == 1, skipped
    assert all("outside" in message and "(not read)" in message for message in skipped)


@pytest.fixture
def listed_capture(tmp_path):
    """A local capture folder's two hour folders as ``lucent monitor`` lists them (``_list_hour_files``), and a
    folder outside it holding a secret and a capture-like file: to swap files for links once they are listed."""
    from container.monitor.run import _list_hour_files
    from container.storage import Location

    folder = tmp_path / "capture" / "churn-endpoint"
    hours = [folder / "AllTraffic" / "2024" / "05" / "01" / hour for hour in ("13", "14")]
    for hour in hours:
        hour.mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (hours[0] / name).write_text(f"{name}\n", encoding="utf-8")
    (hours[0] / "d.jsonl").symlink_to(hours[0] / "a.jsonl")  # a link inside the folder: read, as before
    (hours[1] / "e.jsonl").write_text("e.jsonl\n", encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("root:$6$secret-hash:19000:0:99999:7:::\n", encoding="utf-8")
    (outside / "e.jsonl").write_text("outside\n", encoding="utf-8")
    listed = _list_hour_files(None, Location(str(folder)), ["2024/05/01/13", "2024/05/01/14"], variants=True)
    assert listed == [str(hours[0] / name) for name in ("a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl")] + [
        str(hours[1] / "e.jsonl")]
    return hours, outside, listed


def test_a_capture_file_swapped_for_a_link_after_the_listing_is_not_read(listed_capture, caplog) -> None:
    """The listing checks where each file leads; the merge reads it later. A file, or a folder on its way,
    swapped for a link out of the folder in between (a TOCTOU) is not followed: the reader opens the real
    path the listing checked, part by part, following no link, and skips the file with a warning. Driven
    through the listing and the reader directly, to swap between them."""
    import logging
    import shutil

    from container.monitor.run import _read_files

    hours, outside, listed = listed_capture
    (hours[0] / "b.jsonl").unlink()
    (hours[0] / "b.jsonl").symlink_to(outside / "shadow")  # the file itself
    shutil.rmtree(hours[1])
    hours[1].symlink_to(outside, target_is_directory=True)  # the hour folder holding it
    caplog.set_level(logging.WARNING)
    read = list(_read_files(None, listed))
    assert read == [(str(hours[0] / "a.jsonl"), b"a.jsonl\n"), (str(hours[0] / "c.jsonl"), b"c.jsonl\n"),
                    (str(hours[0] / "d.jsonl"), b"a.jsonl\n")]
    assert [r.getMessage() for r in caplog.records] == [
        f"Skipped {hours[0] / 'b.jsonl'}: a symbolic link now lies on its path, since it was listed (not read)",
        f"Skipped {hours[1] / 'e.jsonl'}: a symbolic link now lies on its path, since it was listed (not read)"]


def test_a_capture_file_swapped_for_a_pipe_after_the_listing_is_not_read(listed_capture, caplog) -> None:
    """A FIFO swapped in: opened without waiting for a writer, and skipped (a plain read would block)."""
    import logging

    from container.monitor.run import _read_files

    hours, _, listed = listed_capture
    (hours[0] / "c.jsonl").unlink()
    os.mkfifo(hours[0] / "c.jsonl")
    caplog.set_level(logging.WARNING)
    assert [uri for uri, _ in _read_files(None, listed)] == [str(hours[0] / name) for name in (
        "a.jsonl", "b.jsonl", "d.jsonl")] + [str(hours[1] / "e.jsonl")]
    assert [r.getMessage() for r in caplog.records] == [
        f"Skipped {hours[0] / 'c.jsonl'}: not a plain file any more, since it was listed (not read)"]


def test_a_deeply_nested_first_capture_line_is_a_malformed_line(tmp_path, churn_records) -> None:
    from container.monitor.demo import ENDPOINT
    from tests.test_monitor_run import Setup

    setup = Setup(tmp_path, churn_records)
    first = sorted((setup.capture / ENDPOINT).rglob("*.jsonl"))[0]
    first.write_text("[" * 200_000 + "]" * 200_000 + "\n" + first.read_text(encoding="utf-8"), encoding="utf-8")
    assert setup.run() == 0
    counts = setup.analysis()["lucent"]["monitor"]
    assert counts["malformed_lines"] == 1 and counts["merged_records"] == len(churn_records)
    [example] = counts["malformed_examples"]
    assert first.name in example and "line 1" in example
