"""Crash safety of the drain: SIGKILL the drain worker process again and again while events
flow in through the real HTTP API. Afterwards SQL holds exactly the distinct acknowledged ids,
nothing is counted twice and every pending entry of a dead consumer was reclaimed. On SQLite
and on PostgreSQL.

N = 5,000 events by default, 100,000 with ADAPTD_RELIABILITY_SCALE=full.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from storage.stream import GROUP, FeedbackStream, Keys
from tests.conftest import LiveServer, prepared_engine
from tests.helpers import event, post
from tests.reliability._support import FULL, scaled, sql_ids, sql_summary, wait_until
from tests.support.processes import ROOT
from workers.ingest import drain_once

N_EVENTS = int(os.environ.get("ADAPTD_RELIABILITY_CRASH_EVENTS", scaled(5_000, 100_000)))
PRODUCE_SECONDS = scaled(14.0, 150.0)
CLAIM_IDLE_MS = 300

# The drain worker: drain_once in a loop, as the Celery `ingest` task does, with a small batch
# so kills land inside batches. With probability P it kills itself right after the SQL commit
# and before the XACK (the narrowest window), on top of the SIGKILLs from outside.
DRAINER = r"""
import os, random, signal, sys
import redis
from storage.db import make_engine
from workers.ingest import drain_once

url, db, prefix, p_after_commit = sys.argv[1:5]
client = redis.Redis.from_url(url)
engine = make_engine(db)
rng = random.Random(os.getpid())

def after_commit():
    if rng.random() < float(p_after_commit):
        print("suicide", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

print("ready", flush=True)
while True:
    r = drain_once(client=client, engine=engine, prefix=prefix, consumer=f"c{os.getpid()}",
                   batch=200, claim_idle_ms=CLAIM_IDLE_MS, max_deliveries=10000, block_ms=50,
                   after_commit=after_commit)
    if r.read:
        print(f"batch {r.read} {r.inserted} {r.duplicates} {r.reclaimed}", flush=True)
""".replace("CLAIM_IDLE_MS", str(CLAIM_IDLE_MS))


def _start_drainer(settings: Any, p_after_commit: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", DRAINER, settings.redis_url, settings.database_url,
         settings.key_prefix, str(p_after_commit)],
        env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _read_lines(proc: subprocess.Popen[bytes], until: float, stats: dict[str, int],
                stop_at_ready: bool = False) -> None:
    """Consume the drainer's output until ``until`` (or 'ready'), counting what it did."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            return
        line = proc.stdout.readline().decode(errors="replace").strip()
        if not line:  # EOF: the process died
            return
        if line == "ready" and stop_at_ready:
            return
        if line.startswith("batch"):
            _, _read, inserted, dups, reclaimed = line.split()
            stats["batches"] += 1
            stats["inserted"] += int(inserted)
            stats["duplicates"] += int(dups)
            stats["reclaimed"] += int(reclaimed)
        elif line == "suicide":
            stats["after_commit_kills"] += 1
        elif "Error" in line or "Traceback" in line:
            stats["errors"] += 1
            stats.setdefault("first_error", line)  # type: ignore[arg-type]


class Producer(threading.Thread):
    """Posts N events in signed batches at a steady pace; ~10 % of the requests re-send ids
    already sent (duplicates must be acknowledged and stored once)."""

    def __init__(self, url: str, n: int, seconds: float, run: str):
        super().__init__(daemon=True)
        self.url, self.n, self.seconds, self.run_id = url, n, seconds, run
        self.acked: set[str] = set()
        self.crosstalk_acked: set[str] = set()
        self.posted: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        rng = random.Random(7)
        batch = 50 if self.n <= 20_000 else 100
        requests = (self.n + batch - 1) // batch
        start = time.monotonic()
        sent: list[dict[str, Any]] = []
        with httpx.Client(timeout=30) as client:
            for r in range(requests):
                lo = r * batch
                evs = []
                for i in range(lo, min(self.n, lo + batch)):
                    task = ("greeting", "thanks", "apology")[i % 3]
                    extra = {"crosstalk_source": "greeting"} if task == "apology" and i % 2 else {}
                    evs.append(event(f"{self.run_id}_{i}", task,
                                     ("accept", "reject", "edit")[i % 3], **extra))
                if sent and rng.random() < 0.1:  # re-send some earlier ids
                    evs += rng.sample(sent, min(len(sent), 10))
                try:
                    resp = post(self.url, {"events": evs}, client=client)
                    status = resp.status_code
                except httpx.HTTPError as exc:
                    status = -1
                    self.failures.append(repr(exc))
                self.statuses[status] = self.statuses.get(status, 0) + 1
                ids = {e["id"] for e in evs}
                self.posted |= ids
                if status == 202:
                    self.acked |= ids
                    self.crosstalk_acked |= {e["id"] for e in evs if e.get("crosstalk_source")}
                sent += evs[:batch]
                pace = start + (r + 1) * self.seconds / requests - time.monotonic()
                if pace > 0:
                    time.sleep(pace)


@pytest.mark.slow
@pytest.mark.timeout(scaled(120, 1800))
def test_sigkill_drain_worker_repeatedly(make_settings, db_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database_url=db_url)
    engine = prepared_engine(settings)
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    FeedbackStream(client, settings.key_prefix, dedupe_ttl=60, replay_ttl=60).ensure_group()
    from daemon.api import create_app

    stats = {"kills": 0, "after_commit_kills": 0, "batches": 0, "inserted": 0,
             "duplicates": 0, "reclaimed": 0, "errors": 0}
    rng = random.Random(11)
    with LiveServer(create_app(settings, engine=engine)) as server:
        producer = Producer(server.url, N_EVENTS, PRODUCE_SECONDS, uuid.uuid4().hex[:6])
        producer.start()
        # Kill the drain worker at random moments while the producer runs.
        while producer.is_alive():
            proc = _start_drainer(settings, p_after_commit=0.15)
            _read_lines(proc, time.monotonic() + 30, stats, stop_at_ready=True)
            _read_lines(proc, time.monotonic() + rng.uniform(0.05, scaled(1.0, 2.0)), stats)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                stats["kills"] += 1
            proc.wait(10)
            _read_lines(proc, time.monotonic() + 0.2, stats)
            if proc.stdout:
                proc.stdout.close()
        producer.join()

    # A last healthy consumer reclaims what the dead ones left pending and drains the rest.
    time.sleep(CLAIM_IDLE_MS / 1000 + 0.1)
    final_reclaimed = 0

    def drained() -> bool:
        nonlocal final_reclaimed
        r = drain_once(client=client, engine=engine, prefix=settings.key_prefix,
                       consumer="final", batch=1000, claim_idle_ms=CLAIM_IDLE_MS,
                       max_deliveries=10000)
        final_reclaimed += r.reclaimed
        return (r.read == 0 and client.xlen(keys.stream) == 0
                and client.xpending(keys.stream, GROUP)["pending"] == 0)

    assert wait_until(drained, timeout=scaled(60, 600), interval=0.05)
    summary = sql_summary(engine)
    ids = sql_ids(engine)
    print(f"\ncrash test: {N_EVENTS} events, {json.dumps(stats)}, producer statuses "
          f"{producer.statuses}, final reclaimed {final_reclaimed}, sql {summary}")

    assert producer.statuses == {202: sum(producer.statuses.values())}, producer.failures[:3]
    assert stats["kills"] + stats["after_commit_kills"] >= scaled(5, 50)
    assert stats["after_commit_kills"] >= 1, "the commit-then-die window was never exercised"
    assert stats["reclaimed"] + final_reclaimed > 0, "no dead consumer's entry was reclaimed"
    # Exactly the distinct acknowledged ids, each once.
    assert ids == producer.acked
    assert summary["rows"] == len(producer.acked) == N_EVENTS
    assert summary["events_counter"] == summary["rows"]
    assert summary["examples"] == summary["rows"]
    assert summary["crosstalk_counter"] == len(producer.crosstalk_acked)
    # Nothing left behind, nothing dead-lettered.
    assert client.xpending(keys.stream, GROUP)["pending"] == 0
    assert client.xlen(keys.stream) == 0
    assert client.xlen(keys.dead_letter) == 0
    engine.dispose()


def test_scale_is_ci_by_default() -> None:
    """CI runs the reduced sizes unless ADAPTD_RELIABILITY_SCALE=full is set."""
    assert (os.environ.get("ADAPTD_RELIABILITY_SCALE", "").lower() == "full") == FULL
    assert N_EVENTS >= 1000
