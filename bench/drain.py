"""Drain benchmark: stream -> SQL (events, training examples, counters) with ``drain_once``.

One run, one private redis-server:

1. drain: N events (default 100,000) appended to the stream the way the API does (accept Lua
   script, 1,000 per call), then ``drain_once(batch=1000)`` in a loop until the stream is empty;
   events/s; verified afterwards (rows == examples == counter sum == N, nothing pending);
2. baseline: one Celery task per event (a real worker, celery.contrib.testing, solo pool, JSON,
   acks late, prefetch 1 - the production Celery config) whose task stores that one event with
   ``workers.ingest.store_events(engine, [event])``; M events (default 5,000) are queued, then
   the worker runs; per-event rate from the rows' ``received_at`` (first to last store).

Both run on each database named by ``--db`` (SQLite file, local PostgreSQL in a fresh
database); on PostgreSQL the drain writes with COPY (storage/bulk.py).

Goals, per database: drain >= 20,000 events/s and >= 20x its baseline.

    python -m bench.drain --quick
    python -m bench.drain                          # full, SQLite file
    python -m bench.drain --db sqlite postgres     # full, both (bench/results/drain.json)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select, text
from sqlmodel import Session, col

from bench import common
from storage import crud
from storage.db import make_engine
from storage.events import FeedbackEventV1
from storage.models import FeedbackEvent, TrainingExample
from storage.stream import GROUP, FeedbackStream, Keys
from tests.support import load, processes
from workers.ingest import drain_once

NAME = "drain"
GOAL_RATE = 20_000
GOAL_FACTOR = 20
PG_URL = os.environ.get("ADAPTD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (< 60 s)")
    ap.add_argument("--events", type=int, help="events drained (default 100,000; quick 20,000)")
    ap.add_argument("--baseline-events", type=int, help="Celery per-event tasks (5,000; quick 1,000)")
    ap.add_argument("--batch", type=int, default=1000, help="drain batch")
    ap.add_argument("--db", choices=["sqlite", "postgres"], nargs="+", default=["sqlite"],
                    help="databases, each drained and baselined in this run (default: sqlite)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="run the drain loop under cProfile and print the hottest functions")
    common.add_out(ap, NAME)
    return ap.parse_args(argv)


@contextlib.contextmanager
def database(kind: str, work: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work / f'{name}.db'}"
        return
    from sqlalchemy.engine import make_url

    admin = make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    db = f"adaptd_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    try:
        yield make_url(PG_URL).set(database=db).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def fill(client: redis.Redis, prefix: str, n: int, run: str) -> float:
    """Append n events as the API would (validated, compact JSON, accept script)."""
    stream = FeedbackStream(client, prefix, dedupe_ttl=3600, replay_ttl=660)
    start = time.perf_counter()
    for lo in range(0, n, 1000):
        batch = [load.bench_event(i, run) for i in range(lo, min(n, lo + 1000))]
        stream.append([(e["id"], json.dumps(FeedbackEventV1.model_validate(e).to_stream(),
                                            ensure_ascii=False)) for e in batch])
    return time.perf_counter() - start


def counts(engine: Any) -> dict[str, int]:
    with Session(engine) as session:
        rows = session.execute(select(func.count()).select_from(FeedbackEvent)).scalar() or 0
        examples = session.execute(select(func.count()).select_from(TrainingExample)
                                   .where(col(TrainingExample.kind) != "seed")).scalar() or 0
        counted = sum(v for n, _, v in crud.read_counters(session)
                      if n == "adaptd_feedback_events_total")
    return {"rows": int(rows), "examples": int(examples), "counter_sum": int(counted)}


def run_drain(redis_url: str, db_url: str, n: int, batch: int, profile: bool = False
              ) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"drain{uuid.uuid4().hex[:6]}:"  # its own seen-keys: one run per database
    processes.prepare_database(db_url)
    engine = make_engine(db_url)
    fill_s = fill(client, prefix, n, "d")
    keys = Keys(prefix)
    loops = 0
    import cProfile

    prof = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    while True:
        res = drain_once(client=client, engine=engine, prefix=prefix, consumer="bench",
                         batch=batch)
        loops += 1
        if res.read == 0:
            break
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - start
    c = counts(engine)
    pending = int(client.xpending(keys.stream, GROUP)["pending"])
    out = {"events": n, "batch": batch, "drain_calls": loops, "seconds": round(elapsed, 3),
           "events_per_s": round(n / elapsed, 1), "fill_seconds": round(fill_s, 3),
           "verified": c | {"pending": pending, "stream_len": int(client.xlen(keys.stream))}}
    if prof:
        out["profile_top"] = top_functions(prof)
    out["ok"] = (c["rows"] == c["examples"] == c["counter_sum"] == n and pending == 0)
    engine.dispose()
    return out


def top_functions(prof: Any, n: int = 25) -> list[tuple[str, float, float]]:
    """(function, self %, cumulative %) of the hottest functions of a cProfile run."""
    import pstats

    st = pstats.Stats(prof)
    total = st.total_tt or 1.0  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = "/".join(Path(file).parts[-2:]) if file != "~" else ""
        rows.append((f"{name} ({short}:{line})", round(100 * tt / total, 1),
                     round(100 * ct / total, 1)))
    return sorted(rows, key=lambda r: -r[1])[:n]


def run_baseline(redis_url: str, db_url: str, n: int) -> dict[str, Any]:
    """One Celery task per event, each storing that event in its own transaction."""
    from celery.contrib.testing.worker import start_worker

    from daemon.celery_app import make_celery
    from daemon.settings import Settings
    from workers.ingest import store_events

    processes.prepare_database(db_url)
    prefix = f"bl{uuid.uuid4().hex[:6]}:"
    settings = Settings(redis_url=redis_url, database_url=db_url, key_prefix=prefix,
                        webhook_secret=load.SECRET, suite=load.SUITE)
    app = make_celery(settings)
    engine = make_engine(db_url)

    @app.task(name=f"bench.store_one.{prefix}", ignore_result=True)  # one per database run
    def store_one(event: dict[str, Any]) -> None:
        store_events(engine, [event])

    events = [FeedbackEventV1.model_validate(load.bench_event(i, "c")).to_stream()
              for i in range(n)]
    t0 = time.perf_counter()
    for ev in events:
        store_one.apply_async(args=[ev], queue="bench")
    publish_s = time.perf_counter() - t0
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      queues=["bench"], loglevel="WARNING"):
        deadline = time.monotonic() + max(120, n / 20)
        while counts(engine)["rows"] < n and time.monotonic() < deadline:
            time.sleep(0.25)
    c = counts(engine)
    with Session(engine) as session:
        first, last = session.execute(
            select(func.min(FeedbackEvent.received_at), func.max(FeedbackEvent.received_at))
        ).one()
    span = max(1e-9, float(last) - float(first))
    rate = (c["rows"] - 1) / span if c["rows"] > 1 else float("nan")
    engine.dispose()
    redis.Redis.from_url(redis_url).delete(
        *(redis.Redis.from_url(redis_url).keys(f"{prefix}*") or [f"{prefix}none"]))
    return {"events": n, "stored": c["rows"], "publish_seconds": round(publish_s, 3),
            "store_span_seconds": round(span, 3), "events_per_s": round(rate, 1),
            "ok": c["rows"] == c["examples"] == c["counter_sum"] == n}


def run_database(kind: str, redis_url: str, work: Path, n: int, m: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    """The drain and its baseline on one database, with their verdicts."""
    out: dict[str, Any] = {}
    print(f"drain: {n} events, batch {args.batch}, {kind} ...", flush=True)
    with database(kind, work, "drain") as db_url:
        out["drain"] = run_drain(redis_url, db_url, n, args.batch, args.profile)
    if not args.skip_baseline:
        print(f"baseline: {m} Celery tasks, one event each, {kind} ...", flush=True)
        with database(kind, work, "baseline") as db_url:
            out["baseline"] = run_baseline(redis_url, db_url, m)
    d = out["drain"]
    verdicts: dict[str, Any] = {"drain_events_per_s": d["events_per_s"],
                                "rate_goal_met": d["events_per_s"] >= GOAL_RATE}
    if "baseline" in out:
        factor = d["events_per_s"] / out["baseline"]["events_per_s"]
        verdicts |= {"factor_over_baseline": round(factor, 1),
                     "factor_goal_met": factor >= GOAL_FACTOR}
    out["verdicts"] = verdicts
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.events or (20_000 if args.quick else 100_000)
    m = args.baseline_events or (1_000 if args.quick else 5_000)
    kinds = list(dict.fromkeys(args.db))
    work = common.workdir("bench-drain")
    report: dict[str, Any] = {
        "bench": "drain", "command": common.command(NAME),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": common.machine(),
        "config": {"events": n, "baseline_events": m, "batch": args.batch, "db": kinds,
                   "quick": args.quick},
        "goals": {"events_per_s": GOAL_RATE, "factor_over_baseline": GOAL_FACTOR},
        "databases": {},
    }
    try:
        with processes.private_redis(work / "redis") as (_proc, redis_url):
            for kind in kinds:
                report["databases"][kind] = run_database(kind, redis_url, work, n, m, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for kind, res in report["databases"].items():
        d = res["drain"]
        rows.append([f"drain_once x{args.batch} ({kind})", d["events"], d["events_per_s"],
                     f"{'>=' if d['events_per_s'] >= GOAL_RATE else '<'} 20,000/s goal",
                     "ok" if d["ok"] else f"MISMATCH {d['verified']}"])
        if "baseline" in res:
            b = res["baseline"]
            rows.append([f"Celery task per event ({kind})", b["events"], b["events_per_s"],
                         f"drain is {res['verdicts']['factor_over_baseline']}x (goal >= 20x)",
                         "ok" if b["ok"] else f"stored {b['stored']}"])
    common.print_table("adaptd drain: stream -> SQL events + training examples + counters",
                       ["path", "events", "events/s", "vs goal", "check"], rows)
    for kind, res in report["databases"].items():
        if res["drain"].get("profile_top"):
            common.print_table(f"drain loop profile (cProfile, {kind}): hottest functions by "
                               "self time", ["function", "self %", "cum %"],
                               res["drain"]["profile_top"])
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = common.write_json(args.out, report)
    print(f"wrote {path}")
    return 0 if all(res["drain"]["ok"] for res in report["databases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
