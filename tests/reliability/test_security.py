"""Security properties: Standard Webhooks conformance, replay, key rotation, admin auth, key
and path names, no pickle, and secrets never leaking into logs or answers."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from daemon.api import create_app
from daemon.celery_app import make_celery
from daemon.webhooks import SignatureError, sign, signed_headers, verify
from storage.stream import FeedbackStream, InvalidKeyName, Keys
from storage.suite import check_name
from tests.conftest import LiveServer, prepared_engine
from tests.helpers import SECRET, event, post
from tests.reliability._support import api_process

SECRETS = [SECRET, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
           "whsec_" + base64.b64encode(bytes(range(32))).decode()]
IDS = ["msg_1", "msg_p5jXN8AQM9LWM0D4loKWxJek", "a.b:c-d_e", "x" * 128]
STAMPS = [1_614_265_330, 1_700_000_000, 2_000_000_000]
BODIES = [b'{"test": 2432232314}', b"", "新年快乐~ 🎉".encode(),
          json.dumps({"events": [event(1), event(2)]}, ensure_ascii=False).encode()]


def test_sign_matches_the_standardwebhooks_package() -> None:
    for secret in SECRETS:
        ref = Webhook(secret)
        for msg_id in IDS:
            for ts in STAMPS:
                for body in BODIES:
                    when = datetime.fromtimestamp(ts, tz=UTC)
                    assert sign(secret, msg_id, ts, body) == ref.sign(msg_id, when, body.decode())


def test_known_vector() -> None:
    """The example of the Standard Webhooks spec repository (secret, id, timestamp, body)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_package_verifies_our_signatures_and_we_verify_its() -> None:
    now = int(time.time())
    for secret in SECRETS:
        ref = Webhook(secret)
        for body in BODIES:
            msg_id = f"msg_{uuid.uuid4().hex}"
            ours = signed_headers(secret, msg_id, now, body)
            ref.verify(body, ours, json_parse=False)  # raises if it does not verify
            theirs = {"webhook-id": msg_id, "webhook-timestamp": str(now),
                      "webhook-signature": ref.sign(msg_id, datetime.fromtimestamp(
                          now, tz=UTC), body.decode())}
            assert verify([secret], theirs, body, now=now) == msg_id
            # A different secret is refused by both.
            other = SECRETS[(SECRETS.index(secret) + 1) % len(SECRETS)]
            with pytest.raises(SignatureError):
                verify([other], theirs, body, now=now)
            with pytest.raises(WebhookVerificationError):
                Webhook(other).verify(body, ours)


def test_tampering_is_refused() -> None:
    now = int(time.time())
    body = b'{"a": 1}'
    h = signed_headers(SECRET, "msg_1", now, body)
    for changed in ({"webhook-id": "msg_2"}, {"webhook-timestamp": str(now + 1)}):
        with pytest.raises(SignatureError):
            verify([SECRET], {**h, **changed}, body, now=now)
    with pytest.raises(SignatureError):
        verify([SECRET], h, b'{"a": 2}', now=now)
    with pytest.raises(SignatureError):
        verify([SECRET], h, body, now=now + 301)  # outside the 5-minute window
    with pytest.raises(SignatureError):
        verify([SECRET], h, body, now=now - 301)  # too far in the future


def test_replay_is_a_noop(live_api: LiveServer, settings) -> None:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(settings.redis_url)
    stream = Keys(settings.key_prefix).stream
    body = json.dumps({"events": [event("r1"), event("r2")]}).encode()
    headers = signed_headers(SECRET, "msg_replay_1", int(time.time()), body)
    first = httpx.post(f"{live_api.url}/v1/feedback", content=body, headers=headers)
    assert first.status_code == 202 and first.json()["accepted"] == 2
    for _ in range(3):  # the very same request again
        again = httpx.post(f"{live_api.url}/v1/feedback", content=body, headers=headers)
        assert again.status_code == 202 and again.json()["accepted"] == 0
    # Same webhook id, new events, freshly signed: still a replay, nothing stored.
    body2 = json.dumps(event("r3")).encode()
    h2 = signed_headers(SECRET, "msg_replay_1", int(time.time()), body2)
    assert httpx.post(f"{live_api.url}/v1/feedback", content=body2, headers=h2).json()[
        "accepted"] == 0
    assert client.xlen(stream) == 2
    # An old captured request is refused outright once outside the window.
    old = signed_headers(SECRET, "msg_old", int(time.time()) - 3600, body)
    assert httpx.post(f"{live_api.url}/v1/feedback", content=body, headers=old).status_code == 401


def test_key_rotation(make_settings, engine) -> None:  # type: ignore[no-untyped-def]
    new, old, retired = SECRETS[1], SECRET, SECRETS[2]
    settings = make_settings(webhook_secret=f"{new} {old}")
    with LiveServer(create_app(settings, engine=engine)) as server:
        assert post(server.url, event("k1"), secret=new).status_code == 202
        assert post(server.url, event("k2"), secret=old).status_code == 202
        assert post(server.url, event("k3"), secret=retired).status_code == 401
        # A sender mid-rotation sends both signatures; either may be first.
        body = json.dumps(event("k4")).encode()
        now = int(time.time())
        both = (f"{sign(retired, 'msg_k4', now, body)} {sign(new, 'msg_k4', now, body)}")
        h = signed_headers(new, "msg_k4", now, body) | {"webhook-signature": both}
        assert httpx.post(f"{server.url}/v1/feedback", content=body, headers=h).status_code == 202


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", "Bearer  admin-token-for-tests",
                                    "bearer admin-token-for-tests", "Basic YWRtaW46YWRtaW4=",
                                    "Bearer admin-token-for-tests x", "Bearer admin-token-for-testsX",
                                    "Bearer ADMIN-TOKEN-FOR-TESTS", "Token admin-token-for-tests"])
def test_admin_refuses_missing_and_wrong_tokens(live_api: LiveServer, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = httpx.post(f"{live_api.url}/v1/tasks/greeting/retrain", headers=headers)
    assert r.status_code in (401, 403), (header, r.status_code)
    assert "admin-token-for-tests" not in r.text


def test_admin_right_token_and_off_without_token(live_api: LiveServer, make_settings,  # type: ignore[no-untyped-def]
                                                 engine) -> None:
    ok = httpx.post(f"{live_api.url}/v1/tasks/greeting/retrain",
                    headers={"Authorization": "Bearer admin-token-for-tests"})
    assert ok.status_code == 202
    settings = make_settings(admin_token=None)
    with LiveServer(create_app(settings, engine=engine)) as server:
        r = httpx.post(f"{server.url}/v1/tasks/greeting/retrain",
                       headers={"Authorization": "Bearer admin-token-for-tests"})
        assert r.status_code == 403


HOSTILE_NAMES = ["../x", "..", "a/b", "a:b", "*", "greeting*", "a b", "A", "x" * 300, "",
                 "greeting\x00", "%2e%2e", "adaptd:events", "\u202egreeting", "ｇreeting"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_task_and_adapter_names_are_refused(live_api: LiveServer, settings,  # type: ignore[no-untyped-def]
                                                    name: str) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    before = set(client.scan_iter(f"{settings.key_prefix}*"))
    for field in ("task", "crosstalk_source"):
        r = post(live_api.url, event(f"h_{uuid.uuid4().hex[:8]}", **{field: name}))
        assert r.status_code == 422, (field, name, r.status_code)
    adapter = name + "/x" if "/" not in name and ":" in name else name
    if adapter not in ("..", "a:b", "adaptd:events", "A"):  # legal adapter *labels*; never paths
        r = post(live_api.url, event(f"h_{uuid.uuid4().hex[:8]}", adapter=adapter))
        assert r.status_code == 422, ("adapter", adapter, r.status_code)
    with pytest.raises(ValueError):
        check_name(name)
    # Admin endpoints: an unknown task is a 404 (and no path is ever built from it).
    r = httpx.post(f"{live_api.url}/v1/tasks/{quote(name, safe='')}/retrain",
                   headers={"Authorization": "Bearer admin-token-for-tests"})
    assert r.status_code in (404, 405, 422), (name, r.status_code)
    # Nothing new was written under the prefix except counters of refusals.
    after = set(client.scan_iter(f"{settings.key_prefix}*"))
    assert {k.decode() for k in after - before} <= {f"{settings.key_prefix}metrics"}


@pytest.mark.parametrize("name", ["../x", "*", "a b", "x" * 129, "", "a/b", "a?b", "[ab]",
                                  "é", "a\x00b", "a\r\nb"])
def test_redis_keys_refuse_bad_ids(name: str) -> None:
    keys = Keys("adaptd:")
    with pytest.raises(InvalidKeyName):
        keys.seen(name)
    with pytest.raises(InvalidKeyName):
        keys.webhook(name)


def test_ids_with_colons_stay_in_their_namespace() -> None:
    """':' is legal in ids (docs/contracts.md section 3); the key still lives under <prefix>seen:."""
    keys = Keys("adaptd:")
    assert keys.seen("a:b") == "adaptd:seen:a:b"
    assert keys.seen("events") == "adaptd:seen:events" != keys.stream
    with pytest.raises(InvalidKeyName):
        FeedbackStream(redis.Redis(), "adaptd:", dedupe_ttl=1, replay_ttl=1).append(
            [("*", "{}")])


def test_celery_is_json_only(settings) -> None:  # type: ignore[no-untyped-def]
    conf = make_celery(settings).conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.event_serializer == "json"
    assert "pickle" not in (conf.result_accept_content or ["json"])


@pytest.mark.slow
def test_secrets_never_leak(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Run the real `adaptd serve` at DEBUG, send bad requests of every kind, then look for the
    webhook secret (and its key bytes) and the admin token in the logs and every answer."""
    token = "s3cr3t-admin-" + uuid.uuid4().hex
    secret = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()
    settings = make_settings(webhook_secret=f"{secret} {SECRET}", admin_token=token)
    prepared_engine(settings).dispose()
    needles = [token, secret, secret.removeprefix("whsec_"), SECRET.removeprefix("whsec_")]
    answers: list[str] = []
    with api_process(settings, tmp_path, log_level="DEBUG") as (_proc, url, log):
        with httpx.Client(timeout=10) as http:
            # Bad signatures, wrong secrets, replays, schema errors, too large, bad admin.
            answers.append(post(url, event("l1"), secret=SECRETS[2]).text)
            answers.append(post(url, event("l2"), timestamp=1).text)
            answers.append(post(url, body=b"{not json").text)
            answers.append(post(url, event("l3", prompt=token)).text)  # stored, fine
            answers.append(http.post(f"{url}/v1/feedback", content=b"{}",
                                     headers={"webhook-signature": f"v1,{secret}"}).text)
            for auth in ("Bearer nope", f"Bearer {token[:-1]}", f"Basic {token}"):
                answers.append(http.post(f"{url}/v1/tasks/greeting/retrain",
                                         headers={"Authorization": auth}).text)
            answers.append(http.post(f"{url}/v1/tasks/greeting/retrain",
                                     headers={"Authorization": f"Bearer {token}"}).text)
            for path in ("/v1/routing", "/v1/tasks", "/v1/decisions", "/metrics", "/healthz",
                         "/readyz", "/openapi.json", "/docs"):
                answers.append(http.get(f"{url}{path}").text)
        time.sleep(0.3)
        logs = log.read_text(errors="replace")
    # The event whose prompt is the token is echoed nowhere (its 202 says only counts).
    for needle in needles:
        for i, text in enumerate(answers):
            if needle == token and i == 3:
                continue
            assert needle not in text, f"secret in answer {i}"
        assert needle not in logs, "secret in the API's log"
    assert logs.strip(), "expected DEBUG logs to search"
