"""Regression tests for spine bugs found by the reliability work (fuzzing and PostgreSQL runs).
Each test names the contract it checks; the fixes are in the reliability report.

1. Lone UTF-16 surrogates ("\\ud800", legal as a JSON escape) reach places that must encode
   UTF-8: the 422 answer echoing a bad event's id, and the Redis client packing an accepted
   event -> 500 instead of a 4xx (docs/contracts.md section 4: "never a 5xx").
2. An event the API accepted (202) that PostgreSQL cannot store (NUL in a text field,
   NaN/Infinity inside `meta`) makes the drain's whole batch fail, so the valid events that
   share its batch are not stored either, and the batch is retried until it is dead-lettered.
3. Name and id checks use ``re.match`` with ``$``, which also accepts a trailing newline.
"""

from __future__ import annotations

import json
import re

import pytest
import redis

from daemon.api import create_app
from storage.stream import FeedbackStream, InvalidKeyName, Keys
from storage.suite import check_name
from tests.conftest import LiveServer, prepared_engine
from tests.helpers import event, post
from tests.reliability._support import sql_ids
from workers.ingest import drain_once


def _post_raw(url: str, text: str) -> int:
    return post(url, body=text.encode("utf-8")).status_code


@pytest.mark.parametrize("where", ["id_of_invalid_event", "prompt", "output", "meta_value",
                                   "correction"])
def test_lone_surrogates_get_4xx_not_500(live_api: LiveServer, where: str) -> None:
    ev = event(f"sur_{where}", verdict="edit")
    if where == "id_of_invalid_event":
        ev["id"] = "\ud800"
    elif where == "meta_value":
        ev["meta"] = {"k": "\ud800"}
    else:
        ev[where] = "ok \ud800 ok"
    body = json.dumps(ev, ensure_ascii=True)  # "\ud800" as a JSON escape: valid JSON text
    status = _post_raw(live_api.url, body)
    assert 400 <= status < 500, f"{where}: got {status}"


@pytest.mark.parametrize("poison", ["nul_in_prompt", "nul_in_output", "infinity_in_meta",
                                    "nan_in_meta"])
def test_accepted_events_are_all_stored(make_settings, db_url: str, poison: str) -> None:  # type: ignore[no-untyped-def]
    """Whatever the API acknowledges, the drain stores - and one bad event never takes the
    valid events of its batch down with it. Runs on SQLite and PostgreSQL."""
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    good = [event(f"good_{poison}_{i}") for i in range(5)]
    bad = event(f"bad_{poison}")
    if poison == "nul_in_prompt":
        bad["prompt"] = "a\x00b"
    elif poison == "nul_in_output":
        bad["output"] = "a\x00b"
    else:
        bad["meta"] = {"k": float("inf") if poison == "infinity_in_meta" else float("nan")}
    with LiveServer(create_app(settings, engine=engine)) as server:
        r1 = post(server.url, {"events": good})
        r2 = post(server.url, bad)  # a separate request: its own 202 or 4xx
    assert r1.status_code == 202
    acked = {e["id"] for e in good} | ({bad["id"]} if r2.status_code == 202 else set())
    client = redis.Redis.from_url(settings.redis_url)
    # Both requests land in one drain batch, as they would under load.
    drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    assert acked <= sql_ids(engine), f"acknowledged but not stored: {acked - sql_ids(engine)}"
    engine.dispose()


@pytest.mark.parametrize("name", ["greeting\n", "evt_1\n"])
def test_name_checks_refuse_a_trailing_newline(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)
    with pytest.raises(InvalidKeyName):
        Keys("p:").seen(name)
    with pytest.raises(InvalidKeyName):
        Keys("p:").webhook(name)


def test_stream_append_refuses_a_newline_id(settings) -> None:  # type: ignore[no-untyped-def]
    stream = FeedbackStream(redis.Redis.from_url(settings.redis_url), settings.key_prefix,
                            dedupe_ttl=60, replay_ttl=60)
    with pytest.raises(InvalidKeyName):
        stream.append([("evt\n", "{}")])


def test_id_pattern_is_anchored_at_the_very_end() -> None:
    from storage.stream import ID_RE
    from storage.suite import NAME_RE

    for pattern in (ID_RE, NAME_RE):
        assert not pattern.match("abc\n"), f"{pattern.pattern!r} accepts a trailing newline"
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", "abc\n") is None


def test_drain_isolates_an_unstorable_entry(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """Defence in depth for entries already on the stream (written by an older API, or by
    hand): the drain stores the rest of the batch and dead-letters only the bad entry."""
    from storage.events import FeedbackEventV1
    from storage.stream import GROUP

    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    client = redis.Redis.from_url(settings.redis_url)
    good = [event(f"g{i}") for i in range(5)]
    payloads = [(e["id"], json.dumps(FeedbackEventV1.model_validate(e).to_stream()))
                for e in good]
    bad = FeedbackEventV1.model_validate(event("nul")).to_stream()
    bad["prompt"] = "a\x00b"
    bad["meta"] = {"k": float("inf")}
    payloads.insert(2, ("evt_nul", json.dumps(bad)))
    FeedbackStream(client, settings.key_prefix, dedupe_ttl=60, replay_ttl=60).append(payloads)
    drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    keys = Keys(settings.key_prefix)
    stored = sql_ids(engine)
    assert {e["id"] for e in good} <= stored
    assert "evt_nul" in stored or client.xlen(keys.dead_letter) == 1
    assert client.xpending(keys.stream, GROUP)["pending"] == 0
    engine.dispose()
