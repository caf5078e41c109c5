"""SigV4 request authentication, checked with botocore's own signer.

With ``LUCENT_ENDPOINT_ACCESS_KEY_ID`` and ``LUCENT_ENDPOINT_SECRET_ACCESS_KEY`` set, every request
must carry the signature boto3 computes from those credentials. The verifier rebuilds the request as
the client signed it (method, path and query as received, the headers named in ``SignedHeaders``,
the SHA-256 of the body actually received), lets ``botocore.auth.SigV4Auth`` compute the signature,
and compares the two in constant time. Why botocore: any difference between two implementations of
the canonical request would be a request boto3 signs and Lucent refuses (or the reverse).

Also checked: the key id, the credential scope (date, service ``sagemaker``, ``aws4_request``),
``X-Amz-Date`` within 15 minutes of now (as AWS allows), and that ``host`` and ``x-amz-date`` are
signed. A declared ``X-Amz-Content-SHA256`` must be the body's hash: botocore trusts that header over
the body, so an attacker could otherwise sign a body and send another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from analyzer.errors import UserError

ACCESS_KEY_VARIABLE = "LUCENT_ENDPOINT_ACCESS_KEY_ID"
SECRET_KEY_VARIABLE = "LUCENT_ENDPOINT_SECRET_ACCESS_KEY"
SERVICE = "sagemaker"  # the runtime API's signing name
MAX_CLOCK_SKEW = timedelta(minutes=15)
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
                            r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*")


class AuthenticationError(Exception):
    """The request is not signed by the endpoint's credentials (the reason is for the log only)."""


@dataclass(frozen=True)
class SigV4Verifier:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    max_clock_skew: timedelta = MAX_CLOCK_SKEW

    @classmethod
    def from_environment(cls) -> SigV4Verifier | None:
        """The verifier for the credentials in the environment; None when neither variable is set."""
        key_id = os.environ.get(ACCESS_KEY_VARIABLE, "").strip()
        secret = os.environ.get(SECRET_KEY_VARIABLE, "").strip()
        if not key_id and not secret:
            return None
        if not key_id or not secret:
            missing = ACCESS_KEY_VARIABLE if not key_id else SECRET_KEY_VARIABLE
            raise UserError(f"{missing} is not set: set both {ACCESS_KEY_VARIABLE} and {SECRET_KEY_VARIABLE} to "
                            "require signed requests, or neither")
        return cls(key_id, secret)

    def verify(self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes,
               now: datetime | None = None) -> None:
        """Raise ``AuthenticationError`` unless the request carries this key's valid signature.

        ``target`` is the request target as received (path and query); ``headers`` the received
        (name, value) pairs in order.
        """
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        received: dict[str, list[str]] = {}
        for name, value in headers:
            received.setdefault(name.lower(), []).append(value)
        authorization = received.get("authorization", [""])
        match = _AUTHORIZATION.fullmatch(authorization[0]) if len(authorization) == 1 else None
        if match is None:
            raise AuthenticationError("no SigV4 Authorization header")
        parts = match["credential"].split("/")
        if len(parts) != 5 or parts[3] != SERVICE or parts[4] != "aws4_request" or not parts[2]:
            raise AuthenticationError("malformed credential scope")
        key_id, scope_date, region = parts[0], parts[1], parts[2]
        if not hmac.compare_digest(key_id.encode(), self.access_key_id.encode()):
            raise AuthenticationError("unknown access key id")
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            raise AuthenticationError("host and x-amz-date must be signed")
        amz_date = received.get("x-amz-date", [""])[0]
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise AuthenticationError("missing or malformed X-Amz-Date") from None
        if abs((now or datetime.now(UTC)) - signed_at) > self.max_clock_skew:
            raise AuthenticationError("X-Amz-Date is outside the allowed clock skew")
        if scope_date != amz_date[:8]:
            raise AuthenticationError("credential scope date differs from X-Amz-Date")
        declared_hash = received.get("x-amz-content-sha256")
        if declared_hash is not None and declared_hash != [hashlib.sha256(body).hexdigest()]:
            raise AuthenticationError("X-Amz-Content-SHA256 is not the hash of the body")
        request = AWSRequest(method=method, url=f"http://{received.get('host', [''])[0]}{target}", data=body)
        for name in signed:
            if name not in received:
                raise AuthenticationError(f"signed header {name} is missing")
            for value in received[name]:
                request.headers[name] = value  # HTTPHeaders: assigning again adds a value
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key_id, self.secret_access_key), SERVICE, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
            raise AuthenticationError("signature mismatch")
