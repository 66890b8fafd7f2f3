"""Standard Webhooks vectors for daemon.webhooks, checked against the reference package."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from daemon.webhooks import SignatureError, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_b3RoZXItc2VjcmV0LW5vdC1jb25maWd1cmVk"
NOW = 1_700_000_000
BODY = '{"id":"evt_1","task":"greeting","note":"新年好"}'.encode()


def headers(ts: int = NOW, body: bytes = BODY, secret: str = SECRET, msg_id: str = "msg_1") -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body)}


def test_matches_reference_implementation() -> None:
    ref = Webhook(SECRET)
    for msg_id, ts, body in [("msg_1", NOW, BODY), ("m.2:x", NOW + 7, b"{}"), ("a", 1, b"x" * 999)]:
        ours = sign(SECRET, msg_id, ts, body)
        theirs = ref.sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
        assert ours == theirs


def test_reference_verifies_our_signature() -> None:
    import time

    now = int(time.time())
    assert Webhook(SECRET).verify(BODY, headers(now)) is not None


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (-300, True), (300, True),
                                            (-301, False), (301, False)])
def test_tolerance_edges(offset: int, ok: bool) -> None:
    h = headers(NOW + offset)
    if ok:
        assert verify([SECRET], h, BODY, now=NOW) == "msg_1"
    else:
        with pytest.raises(SignatureError):
            verify([SECRET], h, BODY, now=NOW)


def test_tampered_body_and_wrong_secret() -> None:
    with pytest.raises(SignatureError):
        verify([SECRET], headers(), BODY + b" ", now=NOW)
    with pytest.raises(SignatureError):
        verify([OTHER], headers(), BODY, now=NOW)
    with pytest.raises(SignatureError):  # the id is part of what is signed
        verify([SECRET], {**headers(), "webhook-id": "msg_2"}, BODY, now=NOW)


def test_several_signatures_and_rotation() -> None:
    h = headers()
    h["webhook-signature"] = f"v1,AAAA {sign(OTHER, 'msg_1', NOW, BODY)} v2,zz {h['webhook-signature']}"
    assert verify([SECRET], h, BODY, now=NOW) == "msg_1"
    assert verify([OTHER, SECRET], headers(secret=OTHER), BODY, now=NOW) == "msg_1"


def test_invalid_utf8_body_is_a_signature_question_not_a_crash() -> None:
    body = b"\xff\xfe not utf-8"
    assert verify([SECRET], headers(body=body), body, now=NOW) == "msg_1"
    with pytest.raises(SignatureError):
        verify([SECRET], headers(body=body), body + b"!", now=NOW)


@pytest.mark.parametrize("bad", [{}, {"webhook-id": "x"}, {"webhook-timestamp": "abc"},
                                 {"webhook-signature": "v1"}, {"webhook-signature": "garbage"}])
def test_malformed_headers(bad: dict[str, str]) -> None:
    with pytest.raises(SignatureError):
        verify([SECRET], {**headers(), **bad} if bad else {}, BODY, now=NOW)
