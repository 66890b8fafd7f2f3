"""``adaptd demo``: the whole service on embedded defaults, on one machine.

Starts a private Redis when none answers, uses a SQLite file under the work directory, runs
the API, an ingest+policy worker and beat as child processes, sends signed sample feedback
generated from the suite and prints the per-task status once the drain has caught up.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from daemon import procs
from daemon.settings import Settings
from storage.suite import Suite, load_suite


def sample_events(suite: Suite, n: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """Feedback an app would send: mostly accepted outputs, some edits, some crosstalk."""
    rng = random.Random(seed)
    tasks = list(suite.tasks)
    seeds = {t: suite.seed_examples(t) for t in tasks}
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        task = rng.choice(tasks)
        ex = rng.choice(seeds[task])
        event: dict[str, Any] = {"id": f"demo_{seed}_{i}", "task": task, "prompt": ex.prompt,
                                 "occurred_at": now, "adapter": f"{suite.adapter_of(task)}@0"}
        roll = rng.random()
        if roll < 0.8:
            event |= {"output": ex.response, "verdict": "accept", "rating": 1.0}
        elif roll < 0.9 and len(tasks) > 1:
            other = rng.choice([t for t in tasks if t != task])
            event |= {"output": rng.choice(seeds[other]).response, "verdict": "reject",
                      "crosstalk_source": other, "rating": 0.0}
        else:
            event |= {"output": ex.response[: len(ex.response) // 2], "verdict": "edit",
                      "correction": ex.response, "rating": 0.5}
        out.append(event)
    return out


def run_demo(settings: Settings, *, events: int, workdir: Path, console: Console) -> None:
    from daemon.cli import send_events, task_table

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    suite = load_suite(settings.suite)
    started: list[Any] = []
    with procs.stopping(started):
        redis_url = settings.redis_url
        if not procs.redis_answers(redis_url):
            port = procs.free_port()
            console.print(f"no Redis at {redis_url}; starting a private one on port {port}")
            started.append(procs.start_redis(port, workdir / "redis"))
            redis_url = f"redis://127.0.0.1:{port}/0"
        port = procs.free_port()
        run_id = f"{int(time.time())}"
        env = {
            **os.environ,
            "ADAPTD_REDIS_URL": redis_url,
            "ADAPTD_DATABASE_URL": f"sqlite:///{workdir / 'adaptd.db'}",
            "ADAPTD_ARTIFACTS_DIR": str(workdir / "artifacts"),
            "ADAPTD_KEY_PREFIX": f"adaptd-demo-{run_id}:",
            "ADAPTD_SUITE": settings.suite,
            "ADAPTD_API_PORT": str(port),
            "ADAPTD_DRAIN_INTERVAL_SECONDS": "0.5",
        }
        child = Settings(redis_url=redis_url, database_url=env["ADAPTD_DATABASE_URL"],
                         key_prefix=env["ADAPTD_KEY_PREFIX"], api_port=port,
                         webhook_secret=settings.webhook_secret, suite=settings.suite)
        logs = workdir / "logs"
        console.print(f"state and logs in {workdir}")
        init = procs.spawn(["init"], env, logs / "init.log")
        if init.wait(120) != 0:
            raise RuntimeError(f"adaptd init failed; see {logs / 'init.log'}")
        api = procs.spawn(["serve", "--port", str(port)], env, logs / "api.log")
        started.append(api)
        started.append(procs.spawn(["worker", "--queues", "ingest,policy"], env,
                                   logs / "worker.log"))
        started.append(procs.spawn(["beat"], env, logs / "beat.log"))
        url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{url}/healthz", proc=api)
        console.print(f"API at {url}; sending {events} signed feedback events")
        t0 = time.monotonic()
        totals = send_events(sample_events(suite, events), settings=child, url=url)
        console.print(f"accepted {totals['accepted']}, duplicates {totals['duplicates']} "
                      f"in {time.monotonic() - t0:.1f}s; waiting for the drain")
        wait_drained(url, expected=totals["accepted"], timeout=120)
        tasks = httpx.get(f"{url}/v1/tasks", timeout=10).json()["tasks"]
        console.print(task_table(tasks))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        shown = [ln for ln in metrics.splitlines()
                 if ln.startswith(("adaptd_feedback_events_total", "adaptd_ingest_lag_events",
                                   "adaptd_crosstalk_events_total"))]
        console.print("\n".join(shown[:24]))
        console.print(f"[green]demo done[/] in {time.monotonic() - t0:.1f}s")


def wait_drained(url: str, *, expected: int, timeout: float) -> int:
    """Wait until the metrics show ``expected`` stored events and no lag; return the count."""
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        stored = int(sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                         if ln.startswith("adaptd_feedback_events_total{")))
        lag = [ln for ln in text.splitlines() if ln.startswith("adaptd_ingest_lag_events ")]
        if stored >= expected and lag and float(lag[0].split()[1]) == 0:
            return stored
        time.sleep(0.5)
    raise RuntimeError(f"drain did not catch up in {timeout:.0f}s ({stored}/{expected} stored)")
