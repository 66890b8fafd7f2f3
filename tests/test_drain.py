"""The drain: stream -> SQL with real Redis, SQLite and PostgreSQL, and a real Celery worker."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from typing import Any

import httpx
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from sqlalchemy import func, select
from sqlmodel import Session

from daemon.celery_app import make_celery
from daemon.settings import Settings
from storage import crud
from storage.events import FeedbackEventV1
from storage.models import FeedbackEvent, TrainingExample
from storage.stream import GROUP, FeedbackStream, Keys
from tests.conftest import LiveServer, prepared_engine
from tests.helpers import event, post
from workers.ingest import drain_once


def append(settings: Settings, events: list[dict[str, Any]]) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    stream = FeedbackStream(client, settings.key_prefix, dedupe_ttl=600, replay_ttl=600)
    payloads = [(e["id"], json.dumps(FeedbackEventV1.model_validate(e).to_stream()))
                for e in events]
    stream.append(payloads)


def counters(engine: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with Session(engine) as session:
        return {(n, tuple(sorted(lb.items()))): v for n, lb, v in crud.read_counters(session)}


def n_events(engine: Any) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(FeedbackEvent)).scalar() or 0)


def test_drain_inserts_examples_and_counters(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    append(settings, [event(1), event(2, "apology", "reject", crosstalk_source="greeting"),
                      event(3, "thanks", "edit")])
    client = redis.Redis.from_url(settings.redis_url)
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c1")
    assert (result.read, result.inserted) == (3, 3)
    with Session(engine) as session:
        kinds = {(e.task, e.kind) for e in session.exec(select(TrainingExample)).scalars()}  # type: ignore[call-overload]
        assert kinds == {("greeting", "accepted"), ("apology", "negative"), ("thanks", "correction")}
        assert crud.buffered_counts(session) == {"greeting": 1, "apology": 1, "thanks": 1}
    c = counters(engine)
    assert c[("adaptd_feedback_events_total", (("task", "apology"), ("verdict", "reject")))] == 1
    key = ("adaptd_crosstalk_events_total",
           (("origin", "user"), ("source_task", "greeting"), ("task", "apology")))
    assert c[key] == 1
    # Everything acknowledged and removed from the stream.
    assert client.xlen(Keys(settings.key_prefix).stream) == 0
    assert client.xpending(Keys(settings.key_prefix).stream, GROUP)["pending"] == 0
    engine.dispose()


def test_redelivered_events_change_nothing(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    append(settings, [event(i) for i in range(5)])
    client = redis.Redis.from_url(settings.redis_url)
    drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c1")
    # The same ids again, as if the seen-keys had expired: SQL keeps them out.
    client.delete(*client.keys(f"{settings.key_prefix}seen:*"))
    append(settings, [event(i) for i in range(3, 8)])
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c1")
    assert (result.read, result.inserted, result.duplicates) == (5, 3, 2)
    assert n_events(engine) == 8
    total = sum(v for (n, _), v in counters(engine).items()
                if n == "adaptd_feedback_events_total")
    assert total == 8
    engine.dispose()


def _doomed_drain(settings: Settings) -> None:
    """Child process: drain, commit to SQL, then die by SIGKILL before acknowledging."""
    engine = prepared_engine(settings)
    client = redis.Redis.from_url(settings.redis_url)
    drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="doomed",
               after_commit=lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_kill_between_insert_and_ack_counts_once(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    append(settings, [event(i, verdict="accept" if i % 2 else "reject") for i in range(50)])
    child = multiprocessing.get_context("spawn").Process(target=_doomed_drain, args=(settings,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    assert client.xpending(keys.stream, GROUP)["pending"] == 50  # stored but never acked
    assert n_events(engine) == 50
    # A live consumer reclaims the dead one's entries; nothing is inserted or counted twice.
    time.sleep(0.2)  # let the dead consumer's entries go idle
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix,
                        consumer="alive", claim_idle_ms=100)
    assert (result.reclaimed, result.inserted, result.duplicates) == (50, 0, 50)
    assert client.xpending(keys.stream, GROUP)["pending"] == 0
    total = sum(v for (n, _), v in counters(engine).items() if n == "adaptd_feedback_events_total")
    assert total == 50
    engine.dispose()


def test_poison_entries_go_to_dead_letter(make_settings, engine) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    FeedbackStream(client, settings.key_prefix, dedupe_ttl=60, replay_ttl=60).ensure_group()
    client.xadd(keys.stream, {"e": b"\xff not json"})
    append(settings, [event(1)])
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c")
    assert (result.inserted, result.dead_lettered) == (1, 1)
    assert client.xlen(keys.dead_letter) == 1
    # An entry that keeps failing (read, never acked) is dead-lettered after max deliveries.
    append(settings, [event(2)])
    client.xreadgroup(GROUP, "flaky", {keys.stream: ">"}, count=10)
    for _ in range(3):
        time.sleep(0.06)
        client.xautoclaim(keys.stream, GROUP, "flaky", min_idle_time=50, start_id="0-0")
    time.sleep(0.06)
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c",
                        claim_idle_ms=50, max_deliveries=3)
    assert result.dead_lettered == 1 and result.inserted == 0
    assert client.xlen(keys.dead_letter) == 2
    assert float(client.hget(keys.metrics, "adaptd_dead_letter_events_total") or 0) == 2


def test_celery_worker_drains_posted_events(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    """Real HTTP -> Redis stream -> real Celery worker (JSON, acks late) -> SQL -> /metrics."""
    from daemon.api import create_app

    celery = make_celery(settings)
    assert celery.conf.task_serializer == "json" and celery.conf.accept_content == ["json"]
    assert celery.conf.task_acks_late and celery.conf.worker_prefetch_multiplier == 1
    with LiveServer(create_app(settings, engine=engine)) as server:
        batch = [event(i, "apology" if i % 3 == 0 else "greeting") for i in range(30)]
        assert post(server.url, {"events": batch}).json()["accepted"] == 30
        with start_worker(celery, pool="solo", concurrency=1, perform_ping_check=False,
                          queues=["ingest"], loglevel="WARNING"):
            celery.send_task("adaptd.ingest.drain", queue="ingest")
            deadline = time.monotonic() + 30
            while n_events(engine) < 30 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert n_events(engine) == 30
        text = httpx.get(f"{server.url}/metrics").text
        assert 'adaptd_feedback_events_total{task="apology",verdict="accept"} 10.0' in text
        assert "adaptd_ingest_lag_events 0.0" in text
        tasks = httpx.get(f"{server.url}/v1/tasks").json()["tasks"]
        assert tasks["greeting"]["buffered_examples"] == 20


@pytest.mark.parametrize("url_fixture", ["sqlite_url", "pg_url"])
def test_migrations_run_twice(request: pytest.FixtureRequest, url_fixture: str) -> None:
    from storage.db import make_engine, migrate

    url = request.getfixturevalue(url_fixture)
    migrate(url)
    migrate(url)  # idempotent
    eng = make_engine(url)
    with Session(eng) as session:
        assert crud.count_feedback(session) == 0
    eng.dispose()


@pytest.mark.parametrize("url_fixture", ["sqlite_url", "pg_url"])
def test_migrations_build_the_models_schema(request: pytest.FixtureRequest, url_fixture: str) -> None:
    """The migrated schema is the models' schema (alembic's autogenerate finds nothing to do),
    and the policy tick's read of unobserved events is served by the partial index."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from storage import tick
    from storage.db import make_engine, migrate

    url = request.getfixturevalue(url_fixture)
    migrate(url)
    eng = make_engine(url)
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        stmt = tick.unobserved_events_query(limit=10).compile(
            dialect=eng.dialect, compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN QUERY PLAN " if eng.dialect.name == "sqlite" else "EXPLAIN "
        if eng.dialect.name == "postgresql":  # an empty table is scanned whatever its indexes
            conn.exec_driver_sql("SET enable_seqscan = off")
        plan = " ".join(str(row) for row in conn.exec_driver_sql(prefix + str(stmt)))
        assert "ix_feedback_event_unobserved" in plan, plan
    eng.dispose()


def test_messages_reach_the_example_and_unrated_yields_none(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "greet 王总"}]
    with_chat = {k: v for k, v in event(1).items() if k != "prompt"} | {"messages": chat}
    append(settings, [with_chat, event(2, verdict="unrated")])
    client = redis.Redis.from_url(settings.redis_url)
    result = drain_once(client=client, engine=engine, prefix=settings.key_prefix, consumer="c1")
    assert (result.read, result.inserted) == (2, 2)
    with Session(engine) as session:
        examples = list(session.exec(select(TrainingExample)).scalars())  # type: ignore[call-overload]
        assert [(e.event_id, e.prompt, e.messages) for e in examples] == [
            ("evt_1", "greet 王总", chat)]
        stored = session.get(FeedbackEvent, "evt_2")
        assert stored is not None and stored.verdict == "unrated"
    c = counters(engine)
    assert c[("adaptd_feedback_events_total", (("task", "greeting"), ("verdict", "unrated")))] == 1
    engine.dispose()
