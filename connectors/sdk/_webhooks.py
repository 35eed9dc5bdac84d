"""Standard Webhooks (standardwebhooks.com) signing and strict verification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence

_PREFIX = "whsec_"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_SIGNATURES = 32


class WebhookVerificationError(Exception):
    """A webhook failed verification (missing header, stale timestamp, bad signature)."""


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``.

    :param secret: ``whsec_`` followed by the base64 key.
    :param msg_id: the ``webhook-id``.
    :param timestamp: the ``webhook-timestamp``, integer epoch seconds.
    :param body: the exact bytes sent.
    """
    if isinstance(body, str):
        body = body.encode()
    return f"v1,{_signature(_key(secret), msg_id, int(timestamp), body)}"


def verify_webhook(
    secrets: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> None:
    """Verify a Standard Webhooks delivery; return quietly or raise.

    :param secrets: the endpoint's secret, or several during a rotation overlap.
    :param headers: the request headers (any case).
    :param body: the exact raw body received.
    :param tolerance: seconds the timestamp may differ from now (either way).
    :param now: current epoch seconds, for tests.
    :raises WebhookVerificationError: missing headers, a non-integer or out-of-tolerance
        timestamp, or no ``v1`` signature matching any secret.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    header = lowered.get("webhook-signature")
    if not msg_id or not stamp or not header:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not _TIMESTAMP.fullmatch(stamp):
        raise WebhookVerificationError("webhook-timestamp must be integer seconds")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    candidates = [token[3:] for token in header.split()[:_MAX_SIGNATURES] if token.startswith("v1,")]
    if not candidates:
        raise WebhookVerificationError("no v1 signature in webhook-signature")
    payload = body.encode() if isinstance(body, str) else body
    for secret in [secrets] if isinstance(secrets, str) else secrets:
        expected = _signature(_key(secret), msg_id, timestamp, payload)
        if any(hmac.compare_digest(expected.encode(), candidate.encode()) for candidate in candidates):
            return
    raise WebhookVerificationError("no signature matches")
