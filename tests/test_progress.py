"""The training progress channel on a real Redis, and what the live view draws from it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from rich.console import Console

from daemon import procs
from daemon.live import JobWatcher, LiveView, describe
from storage.progress import JobProgress, index_key, job_key, read_job, read_jobs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_a_job_state_is_written_typed_and_listed(client: Any, prefix: str) -> None:
    heard: list[dict[str, Any]] = []
    p = JobProgress(client, prefix, 7, listener=heard.append)
    p.update(phase="prepare", adapter="shared", version=3, base="builtin:tiny")
    p.update(phase="train", step=80, total=300, loss=1.23456)
    state = read_job(client, prefix, 7)
    assert state is not None
    assert {k: state[k] for k in ("job", "adapter", "version", "phase", "step", "total",
                                  "base")} == {"job": 7, "adapter": "shared", "version": 3,
                                               "phase": "train", "step": 80, "total": 300,
                                               "base": "builtin:tiny"}
    assert state["loss"] == pytest.approx(1.23456)
    assert [s["phase"] for s in heard] == ["prepare", "train"]
    assert [s["job"] for s in read_jobs(client, prefix)] == [7]
    assert read_job(client, prefix, 8) is None
    # A new phase starts without the last one's steps; a new audit round without its steps.
    p.update(phase="audit", round=1, rounds=2, step=4, total=8)
    p.update(round=2)
    state = read_job(client, prefix, 7)
    assert state is not None and (state["round"], state["rounds"]) == (2, 2)
    assert "step" not in state and "loss" not in state


def test_writes_are_throttled_but_phase_changes_and_the_end_always_land(
        client: Any, prefix: str) -> None:
    clock, heard = Clock(), list[dict[str, Any]]()
    p = JobProgress(client, prefix, 1, listener=heard.append, min_interval=0.25, clock=clock)
    p.update(phase="train", step=1, total=100)
    for step in range(2, 50):
        clock.now += 0.001
        p.update(step=step)
    assert p.writes == 1 and len(heard) == 49  # the listener hears every step
    assert read_job(client, prefix, 1)["step"] == 1  # type: ignore[index]
    clock.now += 0.25
    p.update(step=50)
    assert p.writes == 2 and read_job(client, prefix, 1)["step"] == 50  # type: ignore[index]
    clock.now += 0.01
    p.update(phase="eval", step=0, total=6)  # a new phase is written at once
    clock.now += 0.01
    p.update(phase="done", status="promoted")  # and so is the end
    state = read_job(client, prefix, 1)
    assert p.writes == 4 and state is not None and state["status"] == "promoted"
    # Real time: a tight loop of updates costs a handful of writes.
    q = JobProgress(client, prefix, 2)
    t0 = time.monotonic()
    for step in range(1, 3001):
        q.update(phase="train", step=step, total=3000)
    elapsed = time.monotonic() - t0
    assert q.writes <= 2 + elapsed / 0.25, (q.writes, elapsed)


def test_states_expire_and_leave_the_index(client: Any, prefix: str) -> None:
    p = JobProgress(client, prefix, 5, ttl=1, done_ttl=1)
    p.update(phase="train", adapter="shared", step=1, total=2)
    assert 0 < client.ttl(job_key(prefix, 5)) <= 1
    time.sleep(1.6)
    assert read_job(client, prefix, 5) is None
    assert read_jobs(client, prefix, since=time.time() - 10) == []
    done = JobProgress(client, prefix, 6, ttl=3600, done_ttl=30)
    done.update(phase="train", step=1, total=2)
    assert client.ttl(job_key(prefix, 6)) > 30
    done.update(phase="done", status="rejected")
    assert 0 < client.ttl(job_key(prefix, 6)) <= 30


@pytest.mark.parametrize("bad", [
    {"prefix": "bad prefix:"}, {"prefix": "x" * 40}, {"job_id": 0}, {"job_id": -3},
    {"job_id": "4"}, {"job_id": True},
])
def test_bad_key_names_are_refused(client: Any, prefix: str, bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"prefix": prefix, "job_id": 1, **bad}
    with pytest.raises(ValueError):
        JobProgress(client, args["prefix"], args["job_id"])
    with pytest.raises(ValueError):
        job_key(args["prefix"], args["job_id"])


@pytest.mark.parametrize("fields", [
    {"adapter": "../etc"}, {"adapter": "Shared"}, {"phase": "sleeping"}, {"colour": "red"},
])
def test_bad_fields_are_refused_and_nothing_is_written(client: Any, prefix: str,
                                                       fields: dict[str, Any]) -> None:
    p = JobProgress(client, prefix, 1)
    with pytest.raises(ValueError):
        p.update(**fields)
    assert client.exists(job_key(prefix, 1)) == 0 and client.exists(index_key(prefix)) == 0


def test_a_dead_redis_never_stops_the_job() -> None:
    dead = redis.Redis(host="127.0.0.1", port=procs.free_port(), socket_connect_timeout=0.2)
    heard: list[dict[str, Any]] = []
    p = JobProgress(dead, "x:", 1, listener=heard.append)
    p.update(phase="train", step=1, total=3)
    p.update(phase="done", status="promoted")
    assert p.writes == 0 and [s["phase"] for s in heard] == ["train", "done"]


def test_describe_says_what_each_phase_is_doing() -> None:
    job = {"job": 3, "adapter": "shared", "version": 1}
    assert describe({**job, "phase": "base", "base": "builtin:tiny", "step": 120,
                     "total": 400}) == "building base builtin:tiny  step 120/400"
    assert describe({**job, "phase": "train", "step": 80, "total": 300, "loss": 2.3141}) == \
        "shared v1  training  step 80/300  loss 2.314"
    assert describe({**job, "phase": "audit", "round": 2, "rounds": 3}) == \
        "shared v1  self-audit round 2/3  answering fresh requests"
    assert describe({**job, "phase": "audit", "round": 2, "rounds": 3, "step": 4,
                     "total": 30}) == "shared v1  self-audit round 2/3  step 4/30"
    assert describe({**job, "phase": "eval", "step": 3, "total": 6}) == \
        "shared v1  evaluating 3/6 tasks"
    assert describe({**job, "phase": "prepare"}) == "shared v1  preparing data and base model"
    assert describe({**job, "phase": "done", "status": "promoted", "started_at": 10.0,
                     "updated_at": 105.4}) == "shared v1  promoted in 95s"
    assert describe({"job": 9, "phase": "done", "status": "failed", "error": "OSError: disk"}) \
        == "job 9  failed: OSError: disk"


def test_the_live_view_draws_what_the_channel_holds(client: Any, prefix: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=110, record=True, color_system=None)
    said = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    view = LiveView(console, enabled=False, out=said)
    events = view.bar("[adaptive] events 150/2000", total=2000)
    view.status(events, "[adaptive] events 150/2000", completed=150)
    watcher = JobWatcher(client, prefix, view)
    base = JobProgress(client, prefix, 1)
    base.update(phase="base", adapter="shared", version=1, base="builtin:tiny", step=120,
                total=400)
    other = JobProgress(client, prefix, 2)
    other.update(phase="eval", adapter="fork-a", version=2, step=3, total=6)
    watcher.poll()
    console.print(view.progress.get_renderable())
    text = console.export_text()
    assert "[adaptive] events 150/2000" in text
    assert "building base builtin:tiny  step 120/400" in text
    assert "fork-a v2  evaluating 3/6 tasks" in text
    assert view.jobs_shown == 2 and said.export_text(clear=False) == ""
    # A finished job leaves the live area for one line above it, once.
    base.update(phase="done", status="promoted")
    watcher.poll()
    watcher.poll()
    lines = said.export_text().splitlines()
    assert view.jobs_shown == 1 and len(lines) == 1 and lines[0].startswith("shared v1  promoted")
    # A job whose progress expired without an end is dropped from the live area.
    client.delete(job_key(prefix, 2))
    watcher.poll()
    assert view.jobs_shown == 0
    # While the live area is drawn, lines go through its console (on stderr), not around it.
    live_console = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    beside = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    LiveView(live_console, enabled=True, out=beside).print("  retrain shared: drift")
    assert "retrain shared: drift" in live_console.export_text()
    assert beside.export_text() == ""


def test_follow_without_queue_is_a_clear_cli_error(tmp_path: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "train", "--adapter", "shared",
                          "--follow"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 2 and out.stdout == ""
    assert "--follow goes with --queue" in out.stderr and "Traceback" not in out.stderr
