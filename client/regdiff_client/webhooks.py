"""Check that a webhook delivery came from your regdiff server (Standard Webhooks signatures).

    from regdiff_client import webhooks
    event = webhooks.verify(secret, request.headers, request.body)   # raises WebhookVerificationError

`secret` is the `whsec_...` value the server showed once when the endpoint (or the run's webhook)
was created. Pass the body exactly as received (bytes): the signature covers those bytes, so a
body parsed and serialised again would not match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from ._errors import RegdiffError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300  # seconds a delivery's timestamp may differ from this machine's clock


class WebhookVerificationError(RegdiffError):
    """The delivery is not proven to be from the server: a header missing, an old or future
    timestamp (a replay), or no signature that matches."""


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name!r}")


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_<base64> value") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`, what the server sends."""
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, *,
           tolerance: float = DEFAULT_TOLERANCE, now: float | None = None) -> dict[str, Any]:
    """The delivery's JSON (`{"type", "timestamp", "data"}`) once its signature checks out.

    Reads `webhook-id`, `webhook-timestamp` and `webhook-signature` (any case); the timestamp
    must be within `tolerance` seconds of `now` (default: this machine's clock), and one of the
    space-separated `v1,...` signatures must match, compared in constant time. Deduplicate on
    `webhook-id`: a delivery can arrive more than once (at-least-once)."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp[:40]!r} is not unix seconds") from None
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {clock - timestamp:+.0f} s from now; at most {tolerance:g} s (a replay, or a clock off)")
    expected = sign(secret, msg_id, timestamp, raw).encode()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()):
        raise WebhookVerificationError("no webhook-signature matches this secret and body")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
