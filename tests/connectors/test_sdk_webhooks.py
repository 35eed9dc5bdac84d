"""Standard Webhooks signing and strict verification."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from connectors.sdk import WebhookVerificationError, sign_webhook, verify_webhook

# The example of the Standard Webhooks specification's reference test suite.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-key-of-32-bytes!!").decode()
BODY = b'{"event_type":"deal.created","payload":{"id":"d1"}}'


def headers(signature: str, timestamp: int | str = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def test_matches_the_specification_example() -> None:
    assert sign_webhook(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    verify_webhook(SPEC_SECRET, headers(SPEC_SIGNATURE, SPEC_TIMESTAMP, SPEC_ID), SPEC_BODY, now=SPEC_TIMESTAMP)


def test_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"msg_1.%d." % NOW + BODY, hashlib.sha256).digest()).decode()
    assert sign_webhook(SECRET, "msg_1", NOW, BODY) == f"v1,{expected}"
    assert sign_webhook(SECRET, "msg_1", NOW, BODY.decode()) == f"v1,{expected}"


def test_verifies_with_any_header_case_and_str_body() -> None:
    signature = sign_webhook(SECRET, "msg_1", NOW, BODY)
    verify_webhook(SECRET, {k.title(): v for k, v in headers(signature).items()}, BODY.decode(), now=NOW)


def test_one_of_several_signatures_and_rotated_secrets() -> None:
    old = sign_webhook(OTHER, "msg_1", NOW, BODY)
    new = sign_webhook(SECRET, "msg_1", NOW, BODY)
    verify_webhook([SECRET], headers(f"v1a,ignored {old} {new}"), BODY, now=NOW)
    verify_webhook([SECRET, OTHER], headers(old), BODY, now=NOW)


@pytest.mark.parametrize("drift", [-300, 300])
def test_within_tolerance(drift: int) -> None:
    signature = sign_webhook(SECRET, "msg_1", NOW, BODY)
    verify_webhook(SECRET, headers(signature), BODY, now=NOW + drift)


@pytest.mark.parametrize("drift", [-301, 301, 3600])
def test_outside_tolerance_is_refused(drift: int) -> None:
    signature = sign_webhook(SECRET, "msg_1", NOW, BODY)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(SECRET, headers(signature), BODY, now=NOW + drift)


@pytest.mark.parametrize("stamp", [f"{NOW}.0", f"{NOW}.5", f" {NOW}", "-5", "1e9", "", "abc"])
def test_only_integer_timestamps(stamp: str) -> None:
    signature = sign_webhook(SECRET, "msg_1", NOW, BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers(signature, stamp), BODY, now=NOW)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "msg_2"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(NOW + 1)}, b),
        lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}, b),
        lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b),
        lambda h, b: ({**h, "webhook-signature": "v1,é"}, b),
    ],
)
def test_tampering_is_detected(tamper) -> None:
    good = headers(sign_webhook(SECRET, "msg_1", NOW, BODY))
    bad_headers, bad_body = tamper(good, BODY)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, bad_headers, bad_body, now=NOW)


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(OTHER, headers(sign_webhook(SECRET, "msg_1", NOW, BODY)), BODY, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_refused(missing: str) -> None:
    good = headers(sign_webhook(SECRET, "msg_1", NOW, BODY))
    del good[missing]
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(SECRET, good, BODY, now=NOW)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", "whsec_@@@@"])
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        sign_webhook(secret, "msg_1", NOW, BODY)
