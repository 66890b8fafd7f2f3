"""Drain the feedback stream into SQL.

One call of :func:`drain_once` reads a batch with the consumer group, first reclaiming entries
a dead consumer left pending (XAUTOCLAIM), and then:

1. inserts the events whose ids are not stored yet (``ON CONFLICT DO NOTHING`` on SQLite, COPY
   on PostgreSQL: ``storage/bulk.py``), so a redelivered event changes nothing;
2. derives training examples (accepted outputs, corrections, rejected outputs kept as
   negatives with their crosstalk source) and bumps the exactly-once counters — only for rows
   really inserted, in the same transaction;
3. commits, and only then XACKs (and deletes) the entries.

A kill at any point is safe: before the commit nothing is stored and the entries stay pending;
after it a redelivery finds the rows present and adds nothing. Entries delivered more than
``max_deliveries`` times, or that cannot be decoded, go to the dead-letter stream.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
import redis
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from sqlmodel import Session

from storage import crud
from storage.db import session_scope
from storage.stream import EVENT_FIELD, GROUP, FeedbackStream, Keys

log = logging.getLogger(__name__)

Entry = tuple[str, dict[Any, Any]]


@dataclass
class DrainResult:
    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    tasks: dict[str, int] = field(default_factory=dict)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _prompt(event: dict[str, Any]) -> str:
    """``prompt``, or the last user turn of ``messages`` (validated to end with one)."""
    if "prompt" in event:
        return str(event["prompt"])
    return str(event["messages"][-1]["content"])


def _derive_example(event: dict[str, Any]) -> dict[str, Any] | None:
    """The training example an event yields, keyed by (event_id, kind). An unrated answer
    yields none: nobody said it was good."""
    verdict = event["verdict"]
    base = {"task": event["task"], "prompt": _prompt(event), "messages": event.get("messages"),
            "event_id": event["id"],
            "created_at": time.time(), "crosstalk_source": event.get("crosstalk_source")}
    if verdict == "accept":
        return {**base, "kind": "accepted", "response": event["output"], "negative": None}
    if verdict == "edit":
        return {**base, "kind": "correction", "response": event["correction"],
                "negative": event["output"]}
    if verdict == "reject":
        return {**base, "kind": "negative", "response": "", "negative": event["output"]}
    return None


def _row(event: dict[str, Any], received_at: float) -> dict[str, Any]:
    return {
        "id": event["id"], "task": event["task"], "adapter": event.get("adapter"),
        "prompt": _prompt(event), "messages": event.get("messages"),
        "output": event["output"], "verdict": event["verdict"],
        "rating": event.get("rating"), "correction": event.get("correction"),
        "crosstalk_source": event.get("crosstalk_source"),
        "occurred_at": float(event["occurred_at"]), "received_at": received_at,
        "meta": event.get("meta"), "observed": False,
    }


def store_events(engine: Engine, events: list[dict[str, Any]]) -> tuple[set[str], Tally[str]]:
    """Insert events and their effects in one transaction; return inserted ids and per-task
    counts of inserted events."""
    with session_scope(engine) as session:
        return store_in(session, events)


def store_in(session: Session, events: list[dict[str, Any]]) -> tuple[set[str], Tally[str]]:
    """:func:`store_events` in the caller's transaction."""
    received = time.time()
    # The last copy of an id within one batch wins nothing: the first is kept, like across
    # batches, so a batch never conflicts with itself.
    unique: dict[str, dict[str, Any]] = {}
    for ev in events:
        unique.setdefault(ev["id"], ev)
    inserted = crud.insert_feedback(session, rows=[_row(ev, received) for ev in unique.values()])
    fresh = [unique[i] for i in unique if i in inserted]
    examples = [ex for ev in fresh if (ex := _derive_example(ev)) is not None]
    crud.insert_examples(session, rows=examples)
    verdicts = Tally((ev["task"], ev["verdict"]) for ev in fresh)
    crosstalk = Tally((ev["task"], ev["crosstalk_source"]) for ev in fresh
                      if ev.get("crosstalk_source"))
    increments: dict[crud.CounterKey, float] = {}
    per_task: Tally[str] = Tally()
    for (task, verdict), n in verdicts.items():
        per_task[task] += n
        key = crud.counter_key("adaptd_feedback_events_total", {"task": task, "verdict": verdict})
        increments[key] = float(n)
    for (task, source), n in crosstalk.items():
        key = crud.counter_key("adaptd_crosstalk_events_total",
                               {"task": task, "source_task": source, "origin": "user"})
        increments[key] = float(n)
    crud.add_counters(session, increments=increments)
    return inserted, per_task


def _dead_letter(client: redis.Redis, keys: Keys, entries: list[Entry], why: str) -> None:
    """Move entries to the dead-letter stream and ack them, atomically."""
    if not entries:
        return
    pipe = client.pipeline(transaction=True)
    for entry_id, fields in entries:
        payload: bytes = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD)) or b""
        pipe.xadd(keys.dead_letter, {"e": payload, "entry": entry_id, "why": why})
    pipe.hincrbyfloat(keys.metrics, "adaptd_dead_letter_events_total", len(entries))
    ids = [e for e, _ in entries]
    pipe.xack(keys.stream, GROUP, *ids)
    pipe.xdel(keys.stream, *ids)
    pipe.execute()


def _too_often_delivered(
    client: redis.Redis, keys: Keys, entries: list[Entry], max_deliveries: int
) -> set[str]:
    """Ids among reclaimed entries that were delivered more than ``max_deliveries`` times."""
    if not entries:
        return set()
    ids = [e for e, _ in entries]
    pending: Any = client.xpending_range(keys.stream, GROUP, min=min(ids), max=max(ids),
                                    count=len(ids) * 2)
    return {
        _text(p["message_id"]) for p in pending
        if int(p["times_delivered"]) > max_deliveries and _text(p["message_id"]) in set(ids)
    }


def drain_once(
    *, client: redis.Redis, engine: Engine, prefix: str, consumer: str, batch: int = 1000,
    claim_idle_ms: int = 60_000, max_deliveries: int = 5, block_ms: int | None = None,
    after_commit: Callable[[], None] | None = None,
) -> DrainResult:
    """Drain up to ``batch`` entries (reclaimed ones first). Safe to run concurrently."""
    stream = FeedbackStream(client, prefix, dedupe_ttl=1, replay_ttl=1)
    stream.ensure_group()
    keys = stream.keys
    result = DrainResult()

    # Step 1: take over entries another consumer read but never acknowledged (it died).
    claimed: Any = client.xautoclaim(keys.stream, GROUP, consumer, min_idle_time=claim_idle_ms,
                                start_id="0-0", count=batch)
    entries: list[Entry] = [(_text(e), f) for e, f in claimed[1] if f is not None]
    result.reclaimed = len(entries)
    poisoned = _too_often_delivered(client, keys, entries, max_deliveries)
    if poisoned:
        _dead_letter(client, keys, [e for e in entries if e[0] in poisoned], "max_deliveries")
        result.dead_lettered += len(poisoned)
        entries = [e for e in entries if e[0] not in poisoned]

    # Step 2: new entries for this consumer.
    if len(entries) < batch:
        got: Any = client.xreadgroup(GROUP, consumer, {keys.stream: ">"},
                                count=batch - len(entries), block=block_ms)
        for _stream, items in got or []:
            entries += [(_text(e), f) for e, f in items if f is not None]
    result.read = len(entries)
    if not entries:
        return result

    # Step 3: decode; an undecodable entry is dead-lettered rather than retried forever.
    events: list[dict[str, Any]] = []
    good: list[str] = []
    bad: list[Entry] = []
    field_key = EVENT_FIELD.encode()
    for entry_id, fields in entries:
        raw: Any = fields.get(field_key)
        if raw is None:
            raw = fields.get(EVENT_FIELD)
        try:
            # pydantic-core's parser: the drain's hottest Python step (bench/drain.py --profile)
            event = pydantic_core.from_json(raw)
            if not isinstance(event, dict) or "id" not in event or "task" not in event:
                raise ValueError("not an event object")
            events.append(event)
            good.append(entry_id)
        except (TypeError, ValueError):
            bad.append((entry_id, fields))
    if bad:
        _dead_letter(client, keys, bad, "undecodable")
        result.dead_lettered += len(bad)

    # Step 4: SQL first (idempotent), then acknowledge.
    if events:
        try:
            inserted, per_task = store_events(engine, events)
        except DataError:
            # One event the database cannot take must not hold back the rest of its batch:
            # store them one by one and dead-letter only those that still fail.
            inserted, per_task = set(), Tally()
            unstorable: list[Entry] = []
            by_id = dict(zip(good, events, strict=True))
            for entry_id, fields in [e for e in entries if e[0] in by_id]:
                try:
                    ids, tasks = store_events(engine, [by_id[entry_id]])
                except DataError as exc:
                    log.warning("entry %s cannot be stored: %s", entry_id, exc.orig)
                    unstorable.append((entry_id, fields))
                    continue
                inserted |= ids
                per_task.update(tasks)
            _dead_letter(client, keys, unstorable, "unstorable")
            result.dead_lettered += len(unstorable)
            dead = {e for e, _ in unstorable}
            events = [ev for e, ev in by_id.items() if e not in dead]
            good = [e for e in good if e not in dead]
        result.inserted = len(inserted)
        result.duplicates = len(events) - len(inserted)
        result.tasks = dict(per_task)
        if after_commit is not None:  # fault injection for the crash tests
            after_commit()
        if good:
            pipe = client.pipeline(transaction=True)
            pipe.xack(keys.stream, GROUP, *good)
            pipe.xdel(keys.stream, *good)
            pipe.execute()
    return result
