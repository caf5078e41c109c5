"""SigV4 request authentication, checked with botocore's own signer.

With ``LUCENT_ENDPOINT_ACCESS_KEY_ID`` and ``LUCENT_ENDPOINT_SECRET_ACCESS_KEY`` set, every request
must carry the signature boto3 computes from those credentials. The verifier rebuilds the request as
the client signed it (method, path and query as received, the headers named in ``SignedHeaders``,
the SHA-256 of the body actually received), lets ``botocore.auth.SigV4Auth`` compute the signature,
and compares the two in constant time. Why botocore: any difference between two implementations of
the canonical request would be a request boto3 signs and Lucent refuses (or the reverse).

Also checked: the key id, the credential scope (date, service ``sagemaker``, ``aws4_request``, and the
region when ``LUCENT_ENDPOINT_REGION`` names the endpoint's: a self-hosted endpoint has no region of its
own, so without it any region the client signed for is accepted),
``X-Amz-Date`` within 15 minutes of now (as AWS allows), and that ``host`` and ``x-amz-date`` are
signed. A declared ``X-Amz-Content-SHA256`` must be the body's hash: botocore trusts that header over
the body, so an attacker could otherwise sign a body and send another. Every ``X-Amzn-SageMaker-*``
header in the request must be signed (boto3 signs each one it sends): otherwise a captured request could
be sent again with an inference id, custom attributes or an explanation expression added, which reach
data capture and the monitor's ground-truth join.

Not checked: that a request is new. A captured request can be sent again, unchanged, until its
``X-Amz-Date`` is 15 minutes old (as with AWS); TLS in front of the endpoint keeps requests from being
captured (docs/endpoint.md).
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
REGION_VARIABLE = "LUCENT_ENDPOINT_REGION"
SERVICE = "sagemaker"  # the runtime API's signing name
MAX_CLOCK_SKEW = timedelta(minutes=15)
SAGEMAKER_HEADER_PREFIX = "x-amzn-sagemaker-"  # InferenceId, CustomAttributes, EnableExplanations, ...
MAX_REASON_LENGTH = 300  # a reason quotes client-sent names: cut, for the endpoint's log
_AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
                            r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*")


MISSING_TOKEN = "MissingAuthenticationTokenException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"
INCOMPLETE_SIGNATURE = "IncompleteSignatureException"
INVALID_SIGNATURE = "InvalidSignatureException"
_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS "
             "Secret Access Key and signing method. Consult the service documentation for details.")


class AuthenticationError(Exception):
    """The request is not signed by the endpoint's credentials. ``code`` and ``message`` are what AWS
    answers in that case (boto3 raises the exception class named by ``code``); ``reason``, the detail
    for the endpoint's log. Neither holds the secret or the signature."""

    def __init__(self, reason: str, code: str = INVALID_SIGNATURE, message: str = _MISMATCH):
        from container.launcher import printable

        # The reason quotes header names the client chose: no terminal escapes or line breaks in the
        # log, and no 6,000-character name.
        reason = printable(reason)
        if len(reason) > MAX_REASON_LENGTH:
            reason = reason[:MAX_REASON_LENGTH - 3] + "..."
        super().__init__(reason)
        self.code, self.message = code, message


def _amz_time(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class SigV4Verifier:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    max_clock_skew: timedelta = MAX_CLOCK_SKEW
    region: str | None = None  # the only region a signature may be scoped to (None: any)

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
        return cls(key_id, secret, region=os.environ.get(REGION_VARIABLE, "").strip() or None)

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
        authorization = received.get("authorization", [])
        if not authorization:
            raise AuthenticationError("no Authorization header", MISSING_TOKEN, "Missing Authentication Token")
        match = _AUTHORIZATION.fullmatch(authorization[0]) if len(authorization) == 1 else None
        if match is None:
            raise AuthenticationError("the Authorization header is not one AWS4-HMAC-SHA256 signature",
                                      INCOMPLETE_SIGNATURE, "Authorization header requires 'Credential', "
                                      "'SignedHeaders' and 'Signature' parameters (AWS4-HMAC-SHA256).")
        parts = match["credential"].split("/")
        if len(parts) != 5 or parts[3] != SERVICE or parts[4] != "aws4_request" or not parts[2]:
            raise AuthenticationError("malformed credential scope", INCOMPLETE_SIGNATURE,
                                      f"Credential should be scoped to a valid region and to the service "
                                      f"'{SERVICE}' (KEY_ID/DATE/REGION/{SERVICE}/aws4_request).")
        key_id, scope_date, region = parts[0], parts[1], parts[2]
        if self.region is not None and region != self.region:  # AWS's answer to a request signed for another region
            raise AuthenticationError(f"signed for region {region[:40]!r}, not {self.region!r}", INVALID_SIGNATURE,
                                      f"Credential should be scoped to a valid region, not '{region[:40]}'.")
        if not hmac.compare_digest(key_id.encode(), self.access_key_id.encode()):
            raise AuthenticationError("unknown access key id", UNRECOGNIZED_CLIENT,
                                      "The security token included in the request is invalid.")
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            raise AuthenticationError("host and x-amz-date must be signed", INCOMPLETE_SIGNATURE,
                                      "The headers host and x-amz-date must be signed (SignedHeaders).")
        unsigned = sorted(name for name in received if name.startswith(SAGEMAKER_HEADER_PREFIX) and name not in signed)
        if unsigned:
            shown = ", ".join(name[:80] for name in unsigned[:3]) + (", ..." if len(unsigned) > 3 else "")
            raise AuthenticationError(f"unsigned SageMaker header(s): {shown}", INVALID_SIGNATURE,
                                      "Every X-Amzn-SageMaker-* header must be signed (SignedHeaders); "
                                      f"not signed: {shown[:200]}.")
        amz_date = received.get("x-amz-date", [""])[0]
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise AuthenticationError("missing or malformed X-Amz-Date", INCOMPLETE_SIGNATURE,
                                      "X-Amz-Date must be a date as YYYYMMDDTHHMMSSZ.") from None
        current = now or datetime.now(UTC)
        minutes = f"{self.max_clock_skew.total_seconds() / 60:g} min."
        if signed_at < current - self.max_clock_skew:  # AWS's wording, for the caller to see its clock's error
            raise AuthenticationError("X-Amz-Date is outside the allowed clock skew", INVALID_SIGNATURE,
                                      f"Signature expired: {amz_date} is now earlier than "
                                      f"{_amz_time(current - self.max_clock_skew)} ({_amz_time(current)} - {minutes})")
        if signed_at > current + self.max_clock_skew:
            raise AuthenticationError("X-Amz-Date is outside the allowed clock skew", INVALID_SIGNATURE,
                                      f"Signature not yet current: {amz_date} is still later than "
                                      f"{_amz_time(current + self.max_clock_skew)} ({_amz_time(current)} + {minutes})")
        if scope_date != amz_date[:8]:
            raise AuthenticationError("credential scope date differs from X-Amz-Date")
        declared_hash = received.get("x-amz-content-sha256")
        if declared_hash is not None and declared_hash != [hashlib.sha256(body).hexdigest()]:
            raise AuthenticationError("X-Amz-Content-SHA256 is not the hash of the body", INVALID_SIGNATURE,
                                      "The provided 'x-amz-content-sha256' header does not match what was computed.")
        request = AWSRequest(method=method, url=f"http://{received.get('host', [''])[0]}{target}", data=body)
        for name in signed:
            if name not in received:
                raise AuthenticationError(f"signed header {name} is missing", INCOMPLETE_SIGNATURE,
                                          f"The header {name[:60]} is in SignedHeaders but not in the request.")
            for value in received[name]:
                request.headers[name] = value  # HTTPHeaders: assigning again adds a value
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key_id, self.secret_access_key), SERVICE, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
            raise AuthenticationError("signature mismatch")
