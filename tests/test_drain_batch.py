"""The drain's batch writes (COPY on PostgreSQL, one INSERT on SQLite) keep the drain's
guarantees on both databases: one row per event id whatever the batch holds, the conversation
and meta stored as sent, and a batch with an unstorable event stored one event at a time."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
from sqlalchemy import func, select
from sqlmodel import Session, col

from daemon.settings import Settings
from storage import crud
from storage.db import session_scope
from storage.events import FeedbackEventV1
from storage.models import FeedbackEvent, TrainingExample
from storage.stream import EVENT_FIELD, GROUP, FeedbackStream, Keys
from tests.conftest import prepared_engine
from tests.helpers import event
from workers.ingest import drain_once, store_events, store_in


def _payload(ev: dict[str, Any]) -> dict[str, Any]:
    """The stream form of an event the API accepts."""
    return FeedbackEventV1.model_validate(ev).to_stream()


def _xadd_raw(settings: Settings, events: list[dict[str, Any]]) -> redis.Redis:
    """Put events on the stream as they are, repeats included (no seen-key check)."""
    client = redis.Redis.from_url(settings.redis_url)
    FeedbackStream(client, settings.key_prefix, dedupe_ttl=60, replay_ttl=60).ensure_group()
    stream = Keys(settings.key_prefix).stream
    for ev in events:
        client.xadd(stream, {EVENT_FIELD: json.dumps(ev, ensure_ascii=False)})
    return client


def _stored(engine: Any) -> tuple[dict[str, FeedbackEvent], list[TrainingExample], float]:
    with Session(engine) as session:
        events = {e.id: e for e in session.exec(select(FeedbackEvent)).scalars()}  # type: ignore[call-overload]
        examples = list(session.exec(  # type: ignore[call-overload]
            select(TrainingExample).order_by(col(TrainingExample.event_id))).scalars())
        counted = sum(v for n, _, v in crud.read_counters(session)
                      if n == "adaptd_feedback_events_total")
    return events, examples, counted


def _drained(client: redis.Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix)
    assert client.xpending(keys.stream, GROUP)["pending"] == 0
    assert client.xlen(keys.stream) == 0


def test_repeated_ids_within_one_batch_are_stored_once(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    batch = [event(1), event(1, verdict="reject"), event(2, "thanks", "edit"), event(1),
             event(2, "thanks", "accept")]
    client = _xadd_raw(settings, [_payload(ev) for ev in batch])
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    assert (result.read, result.inserted, result.duplicates) == (5, 2, 3)
    events, examples, counted = _stored(engine)
    # The first copy of an id is the one stored, with its example and its count.
    assert {i: e.verdict for i, e in events.items()} == {"evt_1": "accept", "evt_2": "edit"}
    assert [(x.event_id, x.kind) for x in examples] == [("evt_1", "accepted"),
                                                        ("evt_2", "correction")]
    assert counted == 2
    _drained(client, settings)
    # The same batch again, in a later batch: nothing changes.
    client = _xadd_raw(settings, [_payload(ev) for ev in batch])
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    assert (result.read, result.inserted, result.duplicates) == (5, 0, 5)
    assert (len(_stored(engine)[0]), len(_stored(engine)[1]), _stored(engine)[2]) == (2, 2, 2)
    _drained(client, settings)
    engine.dispose()


def test_insert_feedback_returns_only_rows_it_inserted(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)

    def row(i: str, verdict: str = "accept") -> dict[str, Any]:
        return {"id": i, "task": "greeting", "adapter": None, "prompt": "p", "messages": None,
                "output": "o", "verdict": verdict, "rating": None, "correction": None,
                "crosstalk_source": None, "occurred_at": 1.0, "received_at": time.time(),
                "meta": None, "observed": False}

    with session_scope(engine) as session:
        assert crud.insert_feedback(session, rows=[row("a"), row("b")]) == {"a", "b"}
    with session_scope(engine) as session:
        rows = [row("b", "reject"), row("c"), row("c", "reject"), row("d"), row("a")]
        assert crud.insert_feedback(session, rows=rows) == {"c", "d"}
    with Session(engine) as session:
        stored = session.execute(select(col(FeedbackEvent.id), col(FeedbackEvent.verdict))
                                 .order_by(col(FeedbackEvent.id))).all()
    assert [(i, v) for i, v in stored if i != "c"] == [("a", "accept"), ("b", "accept"),
                                                       ("d", "accept")]
    assert [i for i, _ in stored].count("c") == 1
    engine.dispose()


def test_conversation_meta_and_text_are_stored_as_sent(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    # Characters COPY's text format escapes (tab, newline, backslash) and ones JSON escapes.
    tricky = 'tab\there\nnew line \\N back\\slash "quoted" 王总 \\t'
    chat = [{"role": "system", "content": tricky},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello\r\n"},
            {"role": "user", "content": f"greet {tricky}"}]
    meta = {"locale": "zh-CN", "note": tricky, "n": 3, "x": 2.5, "flag": True}
    with_chat = {k: v for k, v in event(1, verdict="edit").items() if k != "prompt"} | {
        "messages": chat, "meta": meta, "correction": tricky, "output": f"out {tricky}"}
    plain = event(2, "apology", "reject", crosstalk_source="greeting", rating=0.25)
    client = _xadd_raw(settings, [_payload(with_chat), _payload(plain)])
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    assert (result.read, result.inserted) == (2, 2)
    events, examples, counted = _stored(engine)
    first, second = events["evt_1"], events["evt_2"]
    assert (first.messages, first.meta, first.prompt) == (chat, meta, f"greet {tricky}")
    assert (first.output, first.correction) == (f"out {tricky}", tricky)
    assert (second.messages, second.meta, second.rating) == (None, None, 0.25)
    assert second.crosstalk_source == "greeting" and second.observed is False
    assert [(x.event_id, x.kind, x.messages, x.prompt, x.response, x.negative)
            for x in examples] == [
        ("evt_1", "correction", chat, f"greet {tricky}", tricky, f"out {tricky}"),
        ("evt_2", "negative", None, "给王总写一句新年祝福", "", plain["output"])]
    assert examples[1].crosstalk_source == "greeting" and counted == 2
    engine.dispose()


def test_an_unstorable_event_does_not_hold_back_its_batch(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL refuses a NUL in text (an entry the API would refuse, already on the stream):
    that batch is stored one event at a time and only the unstorable event is dead-lettered.
    SQLite stores it."""
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    batch = [_payload(event(i, verdict=("accept", "reject", "edit")[i % 3])) for i in range(6)]
    batch.insert(3, _payload(event("nul")) | {"output": "a\x00b"})
    batch.append(_payload(event(0)))  # a repeat inside the poisoned batch
    client = _xadd_raw(settings, batch)
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    on_pg = engine.dialect.name == "postgresql"
    events, examples, counted = _stored(engine)
    good = {f"evt_{i}" for i in range(6)}
    assert set(events) == (good if on_pg else good | {"evt_nul"})
    assert len(examples) == counted == len(events)
    assert result.inserted == len(events) and result.duplicates == 1
    keys = Keys(settings.key_prefix)
    dead: Any = client.xrange(keys.dead_letter)
    if on_pg:
        assert result.dead_lettered == 1 and len(dead) == 1
        assert dead[0][1][b"why"] == b"unstorable"
        assert json.loads(dead[0][1][b"e"])["id"] == "evt_nul"
    else:
        assert result.dead_lettered == 0 and dead == []
    _drained(client, settings)
    # The next batch on the same pooled connection is stored in one piece again.
    client = _xadd_raw(settings, [_payload(event(i)) for i in range(10, 15)])
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    assert (result.inserted, result.dead_lettered) == (5, 0)
    with Session(engine) as session:
        n = session.execute(select(func.count()).select_from(FeedbackEvent)).scalar()
    assert n == len(events) + 5
    engine.dispose()


def test_an_id_a_concurrent_drain_commits_first_is_stored_once(make_settings, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL the drain copies the ids it did not find; an id another transaction is
    inserting at that moment makes the copy wait, and once that transaction commits the batch
    is inserted with ON CONFLICT instead: the id is stored once, counted once."""
    settings = make_settings(database_url=pg_url)
    engine = prepared_engine(settings)
    race = _payload(event("race", verdict="reject"))
    other = _payload(event("other", "thanks"))
    outcome: dict[str, Any] = {}

    def drain_batch() -> None:
        outcome["stored"] = store_events(engine, [race | {"verdict": "accept"}, other])

    with session_scope(engine) as rival:
        ids, _ = store_in(rival, [race])
        assert ids == {"evt_race"}
        worker = threading.Thread(target=drain_batch)
        worker.start()
        worker.join(1.0)
        assert worker.is_alive(), "the copy did not wait for the rival transaction"
    worker.join(30)
    inserted, per_task = outcome["stored"]
    assert inserted == {"evt_other"} and per_task == {"thanks": 1}
    events, examples, counted = _stored(engine)
    assert {i: e.verdict for i, e in events.items()} == {"evt_race": "reject",
                                                          "evt_other": "accept"}
    assert [(x.event_id, x.kind) for x in examples] == [("evt_other", "accepted"),
                                                        ("evt_race", "negative")]
    assert counted == 2
    engine.dispose()
