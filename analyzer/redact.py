"""Keeping secrets out of logs, exit messages and outputs.

A secret reaches text in three ways here: credentials in a URL's userinfo (``http://user:pass@host``),
HTTP headers that carry credentials (``Authorization``, ``X-Amz-Security-Token``, ...) printed by a
library's debug log, and AWS key ids or secret keys in the same logs. :func:`redact` removes all
three from any text; :class:`RedactingFilter` applies it to every log record, whichever library
logged it, and :func:`redact_url` is for the URLs Lucent prints itself.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"

# scheme://userinfo@ -- userinfo is everything up to the last '@' before the host's end.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@'\"<>]+)@")
# Header lines and dict reprs: 'Authorization': b'AWS4-HMAC-SHA256 ...', X-Amz-Security-Token: abc
_SECRET_FIELDS = (r"authorization|proxy-authorization|x-amz-security-token|x-amz-credential|"
                  r"aws_secret_access_key|aws_session_token|secretaccesskey|sessiontoken|"
                  r"x-api-key|api[_-]?key|cookie|set-cookie|password|secret|token")
_FIELD_VALUE = re.compile(
    rf"(?P<key>['\"]?(?:{_SECRET_FIELDS})['\"]?\s*[:=]\s*)"
    r"(?P<value>b?'[^']*'|b?\"[^\"]*\"|[^\s,;&}\]]+(?:\s+Credential=[^\s,;&}\]]+)?[^\n,;&}\]]*)",
    re.IGNORECASE)
# Query-string credentials of presigned URLs (X-Amz-Signature=..., X-Amz-Credential=...).
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|"
                           r"AWSAccessKeyId)=)(?P<value>[^&\s'\"]+)", re.IGNORECASE)
# AWS access key ids (long-term AKIA, temporary ASIA, ...) wherever they appear.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA|ANPA|AGPA)[A-Z0-9]{12,}\b")


def redact_url(url: str) -> str:
    """``url`` with its userinfo (``user:password@``) replaced by ``***@``."""
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", url)


def redact(text: str) -> str:
    """``text`` with URL userinfo, credential headers and fields, presigned-URL signatures and AWS
    key ids replaced by ``***``."""
    if not text:
        return text
    text = redact_url(text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)
    text = _FIELD_VALUE.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _ACCESS_KEY_ID.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record: message, arguments and traceback text.

    Installed on handlers (not loggers), because a logger's filters do not see records that
    propagate from its children -- botocore's, urllib3's and gunicorn's included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger).
    Idempotent."""
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
