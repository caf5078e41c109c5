"""Keeping secrets out of logs, exit messages and outputs.

A secret reaches text in four ways here: credentials in a URL's userinfo (``http://user:pass@host``),
HTTP headers and fields that carry credentials (``Authorization``, ``X-Amz-Security-Token``, the
signature lines of botocore's debug log, ``"SessionToken": ...``, ``<SecretAccessKey>``), the
query string of a presigned URL, and AWS access key ids anywhere. :func:`redact` removes all of
them from any text, :func:`redact_url` is for the URLs Lucent prints itself, and
:func:`install_redaction` applies :func:`redact` to every log record of the process.

Redaction is deliberately broad (a value after ``token=`` is hidden even when it is harmless): a
hidden harmless value costs a little debugging, a printed session token costs a credential.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"

# scheme://userinfo@host -- the userinfo runs to the last '@' before the next '/' or whitespace, whatever
# it holds, so a password with an unencoded '@', '#', '?', quote or angle bracket ("p@ss#1", "s3cr'et") is
# hidden whole. (A '?' or '#' before an '@' in a URL without userinfo, "http://h?x=a@b", hides a little
# more than needed: safe side.) A quote followed by , : ; ) } ] or > ends the userinfo: that is a URL
# closing in compact JSON or an HTML attribute ('"url":"http://h","mail":"a@b"'), and the text after it
# is not the URL's (a password holding such a pair is not found).
# Every pattern here is linear in the length of the text (logs carry client-sent text; see
# tests/test_security_qa4_redaction.py): the scheme starts where a run of scheme characters starts (the
# lookbehind), so the engine cannot restart inside a long run ('a-a-a-...') and rescan it from each
# position; a run's leading digits, '+', '.' and '-' are kept as they are ("1.http://..." keeps "1.").
_URL_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<lead>[0-9+.\-]*)(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)"
                           r"(?P<userinfo>(?:[^\s/'\"]|['\"](?![,:;)}\]>]))+)@")
# Header lines, dict reprs, JSON and key=value fields whose value is a credential:
#   'Authorization': b'AWS4-HMAC-SHA256 ...'   x-amz-security-token:IQo...   "SessionToken": "..."
#   botocore.auth's "Signature:\n<hex>" (the value may start on the next line).
_SECRET_FIELD_NAMES = (
    "authorization", "proxy-authorization", "x-amz-security-token", "x-amz-credential", "x-amz-signature",
    "aws_secret_access_key", "aws_session_token", "secretaccesskey", "secret_access_key", "sessiontoken",
    "session_token", "x-api-key", "api_key", "api-key", "apikey", "set-cookie", "cookie", "password", "passwd",
    "secret", "token", "signature", "credential")
# Compound names that carry credentials too: access_token, client_secret, x-auth-token, db_password...
_SECRET_PREFIX_NAMES = (
    "access", "refresh", "id", "auth", "x-auth", "client", "bearer", "private", "app", "db", "admin", "user",
    "master", "oauth", "jwt", "csrf", "github", "slack", "hf", "openai", "storage", "account")


def _alternation(words: tuple[str, ...]) -> str:
    """A regex that matches exactly one of ``words``, factored by common prefixes (``a(?:pp|uth)``):
    the engine tries each first character once instead of each word in turn, at every position."""
    tree: dict = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(tree)


_SECRET_FIELDS = _alternation(_SECRET_FIELD_NAMES)
_SECRET_PREFIXES = _alternation(_SECRET_PREFIX_NAMES)
# Every field name is at least this long and ends in one of these characters (see the first look below).
_FIELD_MIN_LENGTH = min(len(name) for name in _SECRET_FIELD_NAMES)
_FIELD_LAST_CHARS = re.escape("".join(sorted({name[-1] for name in _SECRET_FIELD_NAMES})))
_FIELD_VALUE = re.compile(
    # The field name starts a word ("top_token: 5" is no credential) or is one of the compound names
    # above, or it follows an escaped line break in a bytes repr ("...\\r\\nAuthorization: ...").
    rf"(?:(?<![\w-])|(?<=\\[rnt]))"
    # (A cheap first look, the same shape as the key: only a word long enough, ending in a character
    # that ends a field name and followed by ':' or '=', goes on to the list of names. This keeps the
    # pattern fast on long text that holds no field: "a:a:a:..." is not tried against every name.)
    rf"(?=['\"]?[\w-]{{{_FIELD_MIN_LENGTH - 1},}}[{_FIELD_LAST_CHARS}]['\"]?\s*[:=])"
    rf"(?P<key>['\"]?(?:(?:{_SECRET_PREFIXES})[_-])?(?:{_SECRET_FIELDS})['\"]?\s*[:=]\s*)"
    # A quoted value (str or bytes repr), or an unquoted one up to the end of its line or field. A
    # backslash ends it too: in a bytes repr ("...\r\nHost: ...") the next header follows one. A value
    # already redacted is left as it is (redacting twice changes nothing).
    r"(?!\*\*\*(?:[\s,;&}\]\\]|$))(?P<value>b?'[^']*'|b?\"[^\"]*\"|[^\s,;&}\]\\]+[^\n,;&}\]\\]*)",
    re.IGNORECASE)
# The same fields as XML elements (AWS STS and IMDS answers in botocore's "Response body" lines).
# (The name is one run of name characters that holds a field name somewhere, found by a lookahead that
# stops at the first one: a long run is scanned a bounded number of times, not once per split.)
_XML_SECRET = re.compile(rf"(?P<open><(?P<tag>(?=[\w:-]*?(?:{_SECRET_FIELDS}))[\w:-]+)>)[^<]*(?=</(?P=tag)>)",
                         re.IGNORECASE)
# Query-string credentials: presigned URLs (X-Amz-Signature=..., X-Amz-Credential=..., SigV2's Signature=
# and AWSAccessKeyId=), and any parameter whose name says it holds a credential (access_token=,
# client_secret=, x-auth-token=, apiKey=, ...): a query string is no place for prose.
# (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, Signature and AWSAccessKeyId all hold one of
# the words; the name is matched like an XML element's above, in linear time.)
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?=[\w.\-]*?(?:token|secret|passw|pwd|key|auth|credential|signature|"
                           r"session|sig))[\w.\-]+=)(?P<value>[^&\s'\"#]+)", re.IGNORECASE)
# AWS access key ids (long-term AKIA, temporary ASIA, ...) wherever they appear.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA|ANPA|AGPA|ABIA|ACCA)[A-Z0-9]{12,}\b")


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) replaced by ``***@``; any other text is returned
    unchanged. Use it on every URL or URI Lucent logs or puts in a message."""
    return _URL_USERINFO.sub(lambda m: f"{m['lead']}{m['scheme']}{REDACTED}@", str(url))


def redact(text: str) -> str:
    """``text`` with URL userinfo, credential headers and fields, presigned-URL signatures and AWS
    key ids replaced by ``***``. Text without any of them is returned unchanged, byte for byte."""
    if not text:
        return text
    text = redact_url(text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    text = _XML_SECRET.sub(lambda m: f"{m['open']}{REDACTED}", text)
    text = _FIELD_VALUE.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _ACCESS_KEY_ID.sub(REDACTED, text)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record in place: its message (formatted with its arguments), traceback and stack.

    The arguments are merged into the message, because a secret can be in either. A record whose
    arguments do not fit its message is left alone, for the handler to report as usual.
    """
    # Skip a record already redacted, unless its message was replaced since (``logging.makeLogRecord``
    # makes an empty record through the factory, then sets msg and args).
    if record.args is None and getattr(record, "lucent_redacted", None) is record.msg:
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
        return record
    cleaned = redact(message)
    record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record.lucent_redacted = record.msg
    return record


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record that reaches the handler (see :func:`redact_record`).

    On handlers, not loggers: a logger's filters do not see records that propagate from its children.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def _redacting_factory(make_record):
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(make_record(*args, **kwargs))

    factory.lucent_redacting = True
    return factory


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Redact every log record of this process, whichever library logs it and whichever handler
    writes it. Idempotent.

    Two layers:

    * The log record factory (``logging.setLogRecordFactory``) is wrapped so that each record is
      redacted when it is created. This is what covers handlers added later (gunicorn's error and
      access logs, a library that calls ``basicConfig``) and loggers that do not propagate to the
      root logger (``gunicorn.error``): every ``Logger`` makes its records through the factory.
      The cost is formatting each record's message once, eagerly, for records that pass their
      logger's level (the same work a handler would do).
    * A :class:`RedactingFilter` on each handler of ``logger`` (default: the root logger) catches
      records made without the factory (``logging.makeLogRecord``, e.g. records received from
      another process).
    """
    current = logging.getLogRecordFactory()
    if not getattr(current, "lucent_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(current))
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def redact_any(value: Any) -> Any:
    """:func:`redact` applied to every string in a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_any(v) for v in value]
    return value
