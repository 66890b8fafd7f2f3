"""The one-pass body validation of POST /v1/feedback accepts exactly what event-by-event
validation accepts, with the same events and the same stream payloads; every other body gets
the event-by-event answer (the error list naming each bad event)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from daemon.api import create_app
from daemon.api.deps import ApiError, Deps
from daemon.api.feedback import _explain, _parse_events
from daemon.settings import Settings
from storage.events import FeedbackEventV1
from tests.helpers import event
from tests.reliability.test_fuzz import FUZZ, dumps, mutated_events, nasty_valid_events, raw_bodies


@pytest.fixture
def deps(make_settings: Any, engine: Engine) -> Deps:
    settings: Settings = make_settings(max_batch_events=4)
    app_deps: Deps = create_app(settings, engine=engine).state.deps
    return app_deps


def outcome(parse: Any, body: bytes, deps: Deps) -> tuple[Any, ...]:
    try:
        events: list[FeedbackEventV1] = parse(body, deps)
    except ApiError as exc:
        return ("refused", exc.status, exc.detail, exc.rejections, exc.errors)
    return ("accepted", [(e.model_dump(), e.stream_json()) for e in events])


def reference(body: bytes, deps: Deps) -> list[FeedbackEventV1]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _parse_events(body, deps)  # refused before any parsing, by the same code
    return _explain(text, deps)


def check(body: bytes, deps: Deps) -> tuple[Any, ...]:
    got = outcome(_parse_events, body, deps)
    assert got == outcome(reference, body, deps)
    if got[0] == "accepted":
        assert [json.loads(p) for _, p in got[1]] == [
            FeedbackEventV1.model_validate(e).to_stream() for e, _ in got[1]]
    return got


def test_valid_bodies_take_the_one_pass_path_with_the_same_result(deps: Deps) -> None:
    chat = [{"role": "system", "content": "礼貌"}, {"role": "user", "content": "写一句祝福"}]
    messages = {k: v for k, v in event("m", "thanks").items() if k != "prompt"}
    for payload in (event(1), {"events": [event(2), event(3, "apology", "reject",
                                                         crosstalk_source="greeting")]},
                    {"events": [{**messages, "messages": chat}, event(4, verdict="unrated")]}):
        assert check(json.dumps(payload, ensure_ascii=False).encode(), deps)[0] == "accepted"


@pytest.mark.parametrize("payload", [
    {"events": [event(1), event(2, task="nope")]},                 # unknown task
    {"events": [event(1), event(2, crosstalk_source="nope")]},
    {"events": [event(i) for i in range(5)]},                      # more than the batch limit
    {"events": []},
    {"events": [event(1), {**event(2), "surprise": True}, event(3, rating=7)]},
])
def test_refusals_are_the_event_by_event_answer(deps: Deps, payload: dict[str, Any]) -> None:
    got = check(json.dumps(payload).encode(), deps)
    assert got[0] == "refused" and got[1] in (413, 422)


@settings(FUZZ, max_examples=300)
@example(events=[event("x", id="\ud800")], batch=False, ascii_only=True)
@example(events=[event("x", prompt="a\x00b")], batch=True, ascii_only=False)
@example(events=[event("x", meta={"k": float("nan")})], batch=False, ascii_only=True)
@example(events=[event("x", rating=True)], batch=False, ascii_only=True)
@example(events=[event("x", meta={"k": 10**400})], batch=True, ascii_only=True)
@given(events=st.lists(mutated_events() | nasty_valid_events(), min_size=1, max_size=5),
       batch=st.booleans(), ascii_only=st.booleans())
def test_fuzzed_events_get_the_same_answer(deps: Deps, events: list[dict[str, Any]],
                                           batch: bool, ascii_only: bool) -> None:
    check(dumps({"events": events} if batch or len(events) > 1 else events[0], ascii_only), deps)


@settings(FUZZ, max_examples=200)
@example(body=b'{"events": [], "events": [{"id": "x"}]}')
@example(body=b'{"id": "a", "id": "b"}')
@given(body=raw_bodies())
def test_fuzzed_raw_bodies_get_the_same_answer(deps: Deps, body: bytes) -> None:
    check(body, deps)
