"""Standard Webhooks v1 verification on the raw request bytes.

The reference ``standardwebhooks`` package decodes the body to text before signing, which
turns a body with invalid UTF-8 into an exception instead of a clean 401, and its tolerance is
fixed. This module signs and verifies the exact bytes received, compares in constant time,
accepts several secrets (key rotation) and several signatures per header; the tests check it
against the reference package's signatures.

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> sig = sign(secret, "msg_1", 1700000000, b'{"a":1}')
>>> verify([secret], {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
...        "webhook-signature": sig}, b'{"a":1}', now=1700000100)
'msg_1'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)


class SignatureError(Exception):
    """The request is not signed by a configured secret (or its timestamp is off)."""


def decode_secret(secret: str) -> bytes:
    """Bytes of a ``whsec_<base64>`` secret."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret must be whsec_<base64>") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = 300,
) -> str:
    """Return the webhook id if any signature matches any secret; else raise SignatureError."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer (seconds since epoch)") from None
    if timestamp < now - tolerance:
        raise SignatureError("webhook-timestamp is too old (more than the tolerance)")
    if timestamp > now + tolerance:
        raise SignatureError("webhook-timestamp is too far in the future")
    expected = [
        base64.b64decode(sign(secret, msg_id, timestamp, body).split(",", 1)[1])
        for secret in secrets
    ]
    for candidate in signatures.split(" "):
        version, _, encoded = candidate.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Compare against every secret without stopping early on a match's position.
        if any(hmac.compare_digest(given, want) for want in expected):
            return msg_id
    raise SignatureError("no valid signature for the configured secret(s)")


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers an app sends (used by ``adaptd send``, the simulator and tests)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }
