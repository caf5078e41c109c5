"""What one client may cost the model server: body size, read timeouts, open connections.

Shared by the worker that receives requests (``worker.py``), the app's own check of the body size
(``app.py``, for any other WSGI server) and the command line (``cli.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MIB = 1024 * 1024  # "MB" in SageMaker's limits and in --max-body-mb
SAGEMAKER_MAX_BODY_BYTES = 6 * MIB  # SageMaker's InvokeEndpoint request limit
MAX_BODY_VARIABLE = "LUCENT_MAX_BODY_MB"
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0  # SageMaker gives a whole invocation 60 s
DEFAULT_MAX_CONNECTIONS = 64  # per worker
DEFAULT_SEND_TIMEOUT_S = 30.0  # a client that reads nothing of its response for this long is dropped


@dataclass(frozen=True)
class RequestLimits:
    """``max_body_bytes``: larger bodies get 413 before they are read. ``header_timeout``: seconds from
    the connection to the end of the headers; ``body_timeout``: from there to the end of the body (408
    otherwise). ``max_connections``: connections one worker holds at once. ``send_timeout``: seconds
    from the end of the app's work to the last byte of a response its client has not read yet (sent by
    the worker's loop meanwhile; then the connection is closed)."""

    max_body_bytes: int = SAGEMAKER_MAX_BODY_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    send_timeout: float = DEFAULT_SEND_TIMEOUT_S


def default_max_body_bytes() -> int:
    """``$LUCENT_MAX_BODY_MB`` when set, else SageMaker's 6 MB; ValueError names the variable."""
    text = os.environ.get(MAX_BODY_VARIABLE, "").strip()
    if not text:
        return SAGEMAKER_MAX_BODY_BYTES
    return mb_to_bytes(text, MAX_BODY_VARIABLE)


def mb_to_bytes(text: str, name: str) -> int:
    """``text`` megabytes (1 MB = 1,048,576 bytes) as bytes; ValueError naming ``name`` unless > 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of megabytes, got {text!r}") from None
    if not 0 < value < 1e6:  # NaN fails too
        raise ValueError(f"{name} must be more than 0 and less than 1000000 (megabytes), got {text!r}")
    return max(1, int(value * MIB))


MAX_SIZE_DIGITS = 15  # a Content-Length with more significant digits is over any cap (10**15 bytes = 1 PB)


def announced_size(digits: str) -> int | None:
    """A Content-Length value already checked to be ASCII digits, as a number (leading zeros are
    allowed: ``00031`` is 31); None when it has too many digits to be below any cap."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= MAX_SIZE_DIGITS else None


SERVE_MODEL_BODY_HINT = f"lucent serve-model --max-body-mb or ${MAX_BODY_VARIABLE}"


def body_too_large_message(size: int | None, cap: int, chunked: bool = False, hint: str = SERVE_MODEL_BODY_HINT) -> str:
    """Why a body is refused with 413 (the worker's and the app's checks say the same); ``hint``: where
    the limit comes from, for the server that refuses (the endpoint's is SageMaker's, fixed)."""
    if chunked:
        what = "a chunked request body larger than"
    elif size is None:
        what = "a request body larger than"
    else:
        what = f"a request body of {size:,} bytes is larger than"
    return f"{what} the server's limit of {cap:,} bytes ({cap / MIB:g} MB; {hint})"
