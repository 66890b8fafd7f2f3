"""The HTTP API over real HTTP, real Redis and a real database."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.settings import Settings
from storage.crud import set_routes
from storage.db import session_scope
from storage.stream import Keys
from tests.conftest import LiveServer
from tests.helpers import SECRET, event, post

OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LW5vdC1jb25maWd1cmVk"


def stream_len(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    return int(client.xlen(Keys(settings.key_prefix).stream))


def rejected(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'adaptd_feedback_rejected_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no rejected series for {reason}")


def test_single_and_batch_are_accepted(live_api: LiveServer, settings: Settings) -> None:
    r = post(live_api.url, event(1))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}
    r = post(live_api.url, {"events": [event(2), event(3, "apology", "reject",
                                                       crosstalk_source="greeting")]})
    assert r.json() == {"accepted": 2, "duplicates": 0}
    assert stream_len(settings) == 3


def test_duplicates_within_and_across_batches(live_api: LiveServer, settings: Settings) -> None:
    r = post(live_api.url, {"events": [event("a"), event("a"), event("b")]})
    assert r.json() == {"accepted": 2, "duplicates": 1}
    r = post(live_api.url, {"events": [event("b"), event("c")]})
    assert r.json() == {"accepted": 1, "duplicates": 1}
    assert stream_len(settings) == 3


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "old", "future", "missing",
                                  "garbage_sig", "bad_timestamp"])
def test_bad_signatures_get_401(live_api: LiveServer, settings: Settings, case: str) -> None:
    body = json.dumps(event(1)).encode()
    now = int(time.time())
    if case == "tampered":
        from daemon.webhooks import signed_headers

        headers = signed_headers(SECRET, "msg_x", now, body)
        r = httpx.post(f"{live_api.url}/v1/feedback", content=body.replace(b"accept", b"reject"),
                       headers=headers)
    elif case == "wrong_secret":
        r = post(live_api.url, body=body, secret=OTHER_SECRET)
    elif case == "old":
        r = post(live_api.url, body=body, timestamp=now - 301)
    elif case == "future":
        r = post(live_api.url, body=body, timestamp=now + 302)  # +1: the server clock may tick a second
    elif case == "missing":
        r = httpx.post(f"{live_api.url}/v1/feedback", content=body)
    elif case == "garbage_sig":
        r = post(live_api.url, body=body, headers={"webhook-signature": "v1,!!!notbase64 v2,x ,"})
    else:
        r = post(live_api.url, body=body, headers={"webhook-timestamp": "12e9"})
    assert r.status_code == 401, r.text
    assert r.json()["detail"]
    assert stream_len(settings) == 0
    assert rejected(live_api.url, "signature") >= 1


def test_timestamp_at_the_edge_and_rotation(live_api: LiveServer, settings: Settings) -> None:
    body = json.dumps(event(1)).encode()
    assert post(live_api.url, body=body, timestamp=int(time.time()) - 295).status_code == 202
    # Several signatures, one valid: accepted (key rotation on the sender's side).
    from daemon.webhooks import sign

    now = int(time.time())
    body2 = json.dumps(event(2)).encode()
    sigs = f"{sign(OTHER_SECRET, 'msg_r', now, body2)} {sign(SECRET, 'msg_r', now, body2)}"
    r = post(live_api.url, body=body2, msg_id="msg_r", timestamp=now,
             headers={"webhook-signature": sigs})
    assert r.status_code == 202


def test_server_side_key_rotation(make_settings, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(webhook_secret=f"{OTHER_SECRET} {SECRET}")
    with LiveServer(create_app(settings, engine=engine)) as server:
        assert post(server.url, event(1), secret=SECRET).status_code == 202
        assert post(server.url, event(2), secret=OTHER_SECRET).status_code == 202


def test_replayed_webhook_id_is_a_noop(live_api: LiveServer, settings: Settings) -> None:
    body = json.dumps({"events": [event(1), event(2)]}).encode()
    first = post(live_api.url, body=body, msg_id="msg_same")
    again = post(live_api.url, body=body, msg_id="msg_same")
    assert first.json() == {"accepted": 2, "duplicates": 0}
    assert again.status_code == 202
    assert again.json()["accepted"] == 0
    assert stream_len(settings) == 2
    assert rejected(live_api.url, "replay") == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe{\"id\": 1}", 400),                       # invalid UTF-8
        (b"[" * 100_000 + b"]" * 100_000, 400),              # deeply nested
        (b"[1, 2]", 422),
        (b'{"events": "nope"}', 422),
        (b'{"events": []}', 422),
        (b'{"events": [], "extra": 1}', 422),
        (b"123456789" * 10, 422),
    ],
)
def test_bad_bodies_get_4xx(live_api: LiveServer, settings: Settings, body: bytes,
                            status: int) -> None:
    r = post(live_api.url, body=body)
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    assert stream_len(settings) == 0


def test_schema_errors_list_each_bad_event_and_store_nothing(live_api: LiveServer,
                                                            settings: Settings) -> None:
    batch = [event(1), event(2, verdict="edit", correction=None), event(3, rating=7),
             event(4, task="nope"), {**event(5), "surprise": True}, event("bad id!")]
    r = post(live_api.url, {"events": batch})
    assert r.status_code == 422
    bad = {e["index"]: e for e in r.json()["errors"]}
    assert sorted(bad) == [1, 2, 3, 4, 5]
    assert bad[3]["errors"][0]["type"] == "unknown_task"
    assert stream_len(settings) == 0
    assert rejected(live_api.url, "unknown_task") == 1
    assert rejected(live_api.url, "schema") == 4


def test_size_limits(make_settings, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_body_bytes=4096, max_batch_events=3)
    with LiveServer(create_app(settings, engine=engine)) as server:
        big = {"events": [event(1, prompt="x" * 5000)]}
        assert post(server.url, big).status_code == 413
        many = {"events": [event(i) for i in range(4)]}
        assert post(server.url, many).status_code == 413
        long_prompt = event(9, prompt="字" * 3000)  # 9000 bytes > 8 KiB, but body within limit?
        r = post(server.url, long_prompt)
        assert r.status_code == 413  # body is 9 KB > 4 KiB cap: size is checked first
    assert stream_len(settings) == 0


def test_oversized_fields_get_422(live_api: LiveServer, settings: Settings) -> None:
    r = post(live_api.url, event(1, prompt="字" * 3000))  # 9000 bytes > 8 KiB
    assert r.status_code == 422
    assert "8192" in r.text
    assert stream_len(settings) == 0


def test_redis_down_gives_503_and_stores_nothing(make_settings, engine: Engine,  # type: ignore[no-untyped-def]
                                                 tmp_path) -> None:
    from daemon import procs

    port = procs.free_port()
    proc = procs.start_redis(port, tmp_path / "r")
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    with LiveServer(create_app(settings, engine=engine)) as server:
        assert post(server.url, event(1)).status_code == 202
        procs.stop(proc)
        r = post(server.url, event(2))
        assert r.status_code == 503
        assert "nothing was stored" in r.json()["detail"]
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        metrics = httpx.get(f"{server.url}/metrics")
        assert metrics.status_code == 200
        assert 'adaptd_feedback_rejected_total{reason="unavailable"} 1.0' in metrics.text
        # Redis back (empty: it kept nothing): the retry of the same event is accepted.
        proc = procs.start_redis(port, tmp_path / "r")
        try:
            r = post(server.url, event(2))
            assert r.status_code == 202 and r.json()["accepted"] == 1
            assert httpx.get(f"{server.url}/readyz").status_code == 200
        finally:
            procs.stop(proc)


def test_redis_timeout_gives_503_and_the_retry_is_stored_once(make_settings, engine: Engine,  # type: ignore[no-untyped-def]
                                                             tmp_path) -> None:
    """Redis stalls past the API's socket timeout with the append already sent: the answer
    cannot say whether it was stored, and a retry with the same webhook-id stores it once."""
    import os
    import signal

    from daemon import procs

    port = procs.free_port()
    proc = procs.start_redis(port, tmp_path / "r")
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        with LiveServer(create_app(settings, engine=engine)) as server:
            assert post(server.url, event(1)).status_code == 202
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                r = post(server.url, event(2), msg_id="msg_stalled")
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            assert r.status_code == 503
            assert "may or may not be stored" in r.json()["detail"]
            r = post(server.url, event(2), msg_id="msg_stalled")
            assert r.status_code == 202
            assert r.json()["accepted"] + r.json().get("replay", 0) == 1
            client = redis.Redis.from_url(settings.redis_url)
            stored = [json.loads(f[b"e"])["id"] for _, f in
                      client.xrange(Keys(settings.key_prefix).stream)]
            assert sorted(stored) == ["evt_1", "evt_2"], stored
    finally:
        procs.stop(proc)


def test_routing_etag_and_304(live_api: LiveServer, engine: Engine) -> None:
    r = httpx.get(f"{live_api.url}/v1/routing")
    assert r.json() == {"revision": 0, "routes": {}}
    with session_scope(engine) as session:
        set_routes(session, reason="test", routes={"greeting": {
            "adapter": "shared", "version": 1, "path": "/a/shared/v1", "sha256": "0" * 64}})
    r = httpx.get(f"{live_api.url}/v1/routing")
    assert r.json()["revision"] == 1
    assert r.json()["routes"]["greeting"]["version"] == 1
    etag = r.headers["etag"]
    again = httpx.get(f"{live_api.url}/v1/routing", headers={"If-None-Match": etag})
    assert again.status_code == 304
    with session_scope(engine) as session:
        set_routes(session, reason="test", routes={"greeting": {
            "adapter": "shared", "version": 2, "path": "/a/shared/v2", "sha256": "1" * 64}})
    changed = httpx.get(f"{live_api.url}/v1/routing", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["revision"] == 2


def test_tasks_and_health(live_api: LiveServer) -> None:
    tasks = httpx.get(f"{live_api.url}/v1/tasks").json()["tasks"]
    assert len(tasks) >= 6
    assert {"risk", "adapter", "ratio", "quality", "crosstalk_rate", "degraded",
            "buffered_examples"} <= set(next(iter(tasks.values())))
    assert httpx.get(f"{live_api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live_api.url}/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"


def test_admin_override_auth(live_api: LiveServer, make_settings, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    url = f"{live_api.url}/v1/tasks/apology/fork"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = httpx.post(url, headers={"Authorization": "Bearer admin-token-for-tests"})
    assert ok.status_code == 202, ok.text
    auth = {"Authorization": "Bearer admin-token-for-tests"}
    assert httpx.post(f"{live_api.url}/v1/tasks/nope/fork", headers=auth).status_code == 404
    assert httpx.post(f"{live_api.url}/v1/tasks/apology/explode", headers=auth).status_code == 404
    decisions = httpx.get(f"{live_api.url}/v1/decisions?limit=5").json()["decisions"]
    assert decisions[0]["action"] == "fork" and decisions[0]["origin"] == "operator"
    off = make_settings(admin_token=None)
    with LiveServer(create_app(off, engine=engine)) as server:
        r = httpx.post(f"{server.url}/v1/tasks/apology/fork",
                       headers={"Authorization": "Bearer admin-token-for-tests"})
        assert r.status_code == 403 and "off" in r.json()["detail"]


def test_api_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from daemon.api import create_app; import daemon.cli; "
            "print('torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


CHAT = [{"role": "system", "content": "你是客服。"},
        {"role": "user", "content": "订单晚到了"},
        {"role": "assistant", "content": "请问订单号是多少？"},
        {"role": "user", "content": "帮我给王总写一句道歉"}]


def test_messages_and_unrated_events_are_accepted(live_api: LiveServer,
                                                 settings: Settings) -> None:
    chat = {k: v for k, v in event(1, "apology").items() if k != "prompt"}
    r = post(live_api.url, {"events": [{**chat, "messages": CHAT},
                                       event(2, verdict="unrated")]})
    assert r.status_code == 202, r.text
    assert stream_len(settings) == 2


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"messages": CHAT}, "exactly one of `prompt` and `messages`"),        # both
        ({"prompt": None}, "exactly one of `prompt` and `messages`"),         # neither
        ({"prompt": None, "messages": []}, "no turns"),
        ({"prompt": None, "messages": CHAT[:3]}, "end with a user turn"),
        ({"prompt": None, "messages": [CHAT[1], CHAT[0], CHAT[3]]}, "only come first"),
        ({"prompt": None, "messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"prompt": None, "messages": [{"role": "user"}]}, "content"),
        ({"prompt": None, "messages": [{**CHAT[3], "name": "x"}]}, "Extra inputs"),
        ({"prompt": None, "messages": [CHAT[3]] * 65}, "more than 64 turns"),
        ({"prompt": None, "messages": [{"role": "user", "content": "字" * 1000}] * 3},
         "8192 bytes together"),
        ({"verdict": "unrated", "rating": 0.5}, "carries no"),
        ({"verdict": "unrated", "crosstalk_source": "apology"}, "carries no"),
    ],
)
def test_bad_messages_and_unrated_get_422(live_api: LiveServer, settings: Settings,
                                          change: dict[str, object], says: str) -> None:
    ev = {k: v for k, v in {**event(1), **change}.items() if v is not None}
    r = post(live_api.url, ev)
    assert r.status_code == 422, r.text
    assert says in r.text
    assert stream_len(settings) == 0
