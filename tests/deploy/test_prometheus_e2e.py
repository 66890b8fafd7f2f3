"""End to end: a real Prometheus scrapes a running adaptd and answers every dashboard query.

The API runs for real (uvicorn on a free port, real Redis, real SQLite). Signed feedback is
posted over HTTP and drained into SQL with ``drain_once``; bad requests are posted too, so the
rejection counters move. What feedback alone does not produce here (policy decisions,
training runs, adapter versions, the policy engine's per-task gauges, eval scores) is written
through the storage layer the way the policy engine and the trainer write it.

Then ``prometheus`` (Debian's package; required: the test fails without it) scrapes the API
every second with the repo's alert rules loaded. A second round of feedback and storage
writes lands while it scrapes, so every rate()/increase() window sees an increase. Finally
each query of the Grafana dashboard is sent to /api/v1/query and must return data (finite
values; for rate()/increase() queries at least one value above zero). The only queries
exempt are those on celery-exporter's metrics (``celery_*``), which need the exporter.
Every alert rule's expression must evaluate too (its result may be empty), and every rule
must be healthy in Prometheus' own evaluation.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import math
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session

from daemon import procs
from daemon.api import create_app
from daemon.settings import Settings
from storage import crud
from storage.db import session_scope
from storage.models import Adapter, AdapterVersion, now
from storage.stream import EVENT_FIELD, Keys
from tests.conftest import LiveServer
from tests.helpers import event, post
from workers.ingest import drain_once

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "adaptd.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

_spec = importlib.util.spec_from_file_location(
    "e2e_dashboard_queries", Path(__file__).with_name("dashboard_queries.py")
)
assert _spec and _spec.loader
dq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dq)

WINDOW = "1m"  # $__rate_interval and $__range: 60 scrapes at 1 s, far more than rate() needs

# Panels on celery-exporter's metrics: no exporter runs here, so these cannot return data.
# Exactly these are exempt (after substitution); any other query must answer.
CELERY_QUERIES = {
    "max by (queue_name) (celery_queue_length)",
    "sum(celery_worker_up)",
    f"sum by (name) (rate(celery_task_succeeded_total[{WINDOW}]))",
    f"sum by (name) (rate(celery_task_failed_total[{WINDOW}]))",
}

ADAPTER = "shared"  # the festive-zh suite (conftest's SUITE) puts every task on one adapter
WRONG_SECRET = "whsec_" + base64.b64encode(b"not-the-secret-adaptd-was-given!").decode()


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus not found on PATH: install it (Debian: apt-get install -y prometheus)")
    return path


# ----------------------------------------------------------------------------- Prometheus


class Prometheus:
    """A prometheus server process with its own config and TSDB under ``workdir``."""

    def __init__(self, workdir: Path, target: str):
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / "prometheus.log"
        self.config_path = workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "adaptd-api", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}],
        }
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [prometheus_binary(), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        return ""

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if check():
                    return
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}\nprometheus log:\n{self.log_tail()}")

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def query(self, expr: str) -> dict[str, Any]:
        """The whole JSON answer of an instant query at the server's now."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = resp.json()
        return body

    def scalar(self, expr: str) -> float | None:
        """The value of a one-element vector query, or None if it is empty or failed."""
        body = self.query(expr)
        if body.get("status") != "success" or not body["data"]["result"]:
            return None
        return float(body["data"]["result"][0]["value"][1])

    def rules(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=5).json()
        return [r for g in body["data"]["groups"] for r in g["rules"]]


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def make(target: str) -> Prometheus:
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        prom = Prometheus(workdir, target)
        started.append(prom)
        prom.start()
        return prom

    try:
        yield make
    finally:
        for prom in started:
            prom.stop()


# ------------------------------------------------------------------ feedback and storage


def feedback_round(url: str, tasks: list[str], tag: str) -> list[str]:
    """Post one round of signed feedback for every task: accepts, an edit, a rejected
    output carrying another task's style, a plain reject. Returns the ids posted."""
    ids: list[str] = []
    for n, task in enumerate(tasks):
        other = tasks[(n + 1) % len(tasks)]
        batch = [
            event(f"{tag}-{task}-a1", task, "accept"),
            event(f"{tag}-{task}-a2", task, "accept", rating=0.9),
            event(f"{tag}-{task}-a3", task, "accept"),
            event(f"{tag}-{task}-e1", task, "edit"),
            event(f"{tag}-{task}-x1", task, "reject", crosstalk_source=other),
            event(f"{tag}-{task}-r1", task, "reject"),
        ]
        resp = post(url, {"events": batch})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"accepted": len(batch), "duplicates": 0}
        ids += [e["id"] for e in batch]
    return ids


def bad_requests(url: str, tag: str) -> None:
    """Requests the API refuses, one per reason: signature, schema (bad JSON and a bad
    event), unknown_task, and a replayed webhook id."""
    resp = post(url, event(f"{tag}-badsig"), secret=WRONG_SECRET)
    assert resp.status_code == 401, resp.text
    resp = post(url, body=b'{"id": "broken", ')
    assert resp.status_code == 400, resp.text
    no_output = event(f"{tag}-noout")
    del no_output["output"]
    resp = post(url, no_output)
    assert resp.status_code == 422, resp.text
    resp = post(url, event(f"{tag}-unknown", "no_such_task"))
    assert resp.status_code == 422, resp.text
    msg_id = f"msg_{uuid.uuid4().hex}"
    assert post(url, event(f"{tag}-once"), msg_id=msg_id).status_code == 202
    resp = post(url, event(f"{tag}-once"), msg_id=msg_id)
    assert resp.status_code == 202 and resp.json().get("replay") == 1, resp.text


def drain_all(client: redis.Redis, engine: Engine, prefix: str) -> None:
    for _ in range(20):
        if drain_once(client=client, engine=engine, prefix=prefix, consumer="e2e").read == 0:
            return
    raise AssertionError("the stream did not drain")


# What follows is written the way the policy engine and the trainer write it (they do not
# run in this test): a decision row plus its counter in one transaction; a finished training
# job, its adapter version (eval stored as workers/training/job.py stores it: the
# side-by-side result, per-task scores under candidate.tasks) and its run counter; and the
# policy engine's view of each task on the Task rows.


def record_decision(engine: Engine, *, action: str, task: str, reason: str) -> None:
    with session_scope(engine) as session:
        crud.record_decision(session, action=action, task=task, adapter=ADAPTER, reason=reason,
                             signals={"crosstalk_rate": 0.12, "quality": 0.61})
        crud.add_counters(session, increments={
            crud.counter_key("adaptd_policy_decisions_total", {"action": action, "task": task}): 1,
        })


def record_training_run(engine: Engine, *, outcome: str, seconds: float, version: int | None,
                        tasks: list[str], quality: float) -> None:
    with session_scope(engine) as session:
        job = crud.create_job(session, adapter=ADAPTER, kind="retrain")
        finished = now()
        job.started_at, job.finished_at, job.attempts = finished - seconds, finished, 1
        job.status = {"promoted": "succeeded", "rejected": "rejected", "failed": "failed"}[outcome]
        if outcome == "failed":
            job.error = "CUDA out of memory"
        else:
            assert version is not None
            per_task: dict[str, Any] = {
                t: {"n": 8, "quality": round(quality - 0.01 * i, 3),
                    "crosstalk_rate": round(0.01 * i, 3), "crosstalk_source": None}
                for i, t in enumerate(tasks)
            }
            # A task without held-out examples is scored None (workers/training/evaluate.py).
            per_task[tasks[-1]] = {"n": 0, "quality": None, "crosstalk_rate": None,
                                   "crosstalk_source": None, "loss": None}
            row = AdapterVersion(
                adapter=ADAPTER, version=version, path=f"/artifacts/{ADAPTER}/v{version}",
                sha256=f"{version:064x}", status="promoted" if outcome == "promoted" else "rejected",
                parent_version=version - 1 or None, job_id=job.id,
                ratios={t: round(1 / len(tasks), 4) for t in tasks},
                eval={"candidate": {"tasks": per_task, "general_loss": 2.5},
                      "production": {"tasks": {}, "general_loss": 2.6}, "compare": {},
                      "gate": {"promote": outcome == "promoted", "reasons": []}},
                reason="e2e", promoted_at=finished if outcome == "promoted" else None,
            )
            session.add(row)
            job.result_version = version
            if outcome == "promoted":
                crud.set_routes(session, reason=f"promote {ADAPTER}@{version}", routes={
                    t: {"adapter": ADAPTER, "version": version, "path": row.path,
                        "sha256": row.sha256} for t in tasks})
        session.add(job)
        crud.add_counters(session, increments={
            crud.counter_key("adaptd_training_runs_total", {"adapter": ADAPTER, "outcome": outcome}): 1,
        })


def update_task_state(engine: Engine, ratios: dict[str, float], *, degraded: str) -> None:
    with session_scope(engine) as session:
        for i, task in enumerate(crud.list_tasks(session)):
            task.quality = round(0.8 - 0.02 * i, 3)
            task.crosstalk_rate = round(0.01 * (i + 1), 3)
            task.crosstalk_source = None
            task.degraded = task.name == degraded
            task.ratio = ratios[task.name]
            task.updated_at = now()
            session.add(task)
        adapter = session.get(Adapter, ADAPTER)
        assert adapter is not None
        adapter.ratios, adapter.ratios_version = dict(ratios), adapter.ratios_version + 1
        session.add(adapter)


# -------------------------------------------------------------------------------- the test


@pytest.mark.slow  # a real Prometheus scraping a real API
@pytest.mark.timeout(90)
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    settings: Settings, engine: Engine, prometheus_factory: Callable[[str], Prometheus],
) -> None:
    started = time.monotonic()
    prometheus_binary()  # fail first thing, not after the setup, if it is missing
    client = redis.Redis.from_url(settings.redis_url)
    prefix = settings.key_prefix
    with Session(engine) as session:
        rows = crud.list_tasks(session)
    tasks = [t.name for t in rows]
    assert len(tasks) >= 2 and {t.adapter for t in rows} == {ADAPTER}
    even = {t: round(1 / len(tasks), 4) for t in tasks}

    with LiveServer(create_app(settings, engine=engine)) as api:
        # ---- round 1: before Prometheus starts, so every series exists at its first scrape.
        ids = feedback_round(api.url, tasks, "r1")
        bad_requests(api.url, "r1")
        drain_all(client, engine, prefix)
        record_decision(engine, action="rebalance", task=tasks[-2], reason="crosstalk above limit")
        record_training_run(engine, outcome="promoted", seconds=42.0, version=1, tasks=tasks,
                            quality=0.82)
        record_training_run(engine, outcome="failed", seconds=7.0, version=None, tasks=tasks,
                            quality=0.0)
        update_task_state(engine, even, degraded=tasks[-2])

        prom = prometheus_factory(f"127.0.0.1:{api.port}")
        prom.wait_for("prometheus /-/ready", prom.ready)
        prom.wait_for("3 successful scrapes of the API",
                      lambda: (prom.scalar('sum_over_time(up{job="adaptd-api"}[1m])') or 0) >= 3)

        # ---- round 2: while Prometheus scrapes, so rate() and increase() see increases.
        feedback_round(api.url, tasks, "r2")
        resp = post(api.url, event("again", tasks[0], id=ids[0]))  # re-sent by the app: a duplicate
        assert resp.status_code == 202 and resp.json()["duplicates"] == 1, resp.text
        bad_requests(api.url, "r2")
        # A corrupt stream entry (not an event): the drain dead-letters it.
        client.xadd(Keys(prefix).stream, {EVENT_FIELD: b"\xff not json"})
        drain_all(client, engine, prefix)
        assert client.xlen(Keys(prefix).dead_letter) == 1
        record_decision(engine, action="rebalance", task=tasks[-2], reason="crosstalk still high")
        record_training_run(engine, outcome="promoted", seconds=200.0, version=2, tasks=tasks,
                            quality=0.86)
        shifted = {**even, tasks[0]: round(even[tasks[0]] / 2, 4)}
        update_task_state(engine, shifted, degraded=tasks[-2])
        written = time.time()

        # Until a scrape that began after every write above is stored (sample timestamps are
        # the scrape's start).
        prom.wait_for("a scrape after round 2", lambda: (
            prom.scalar('timestamp(adaptd_ingest_lag_events{job="adaptd-api"})') or 0) > written)

        up = prom.scalar('min_over_time(up{job="adaptd-api"}[1m])')
        assert up == 1, f"a scrape of the API failed (up={up}): {prom.query('up')}"

        # ---- every dashboard query
        variables = {"task": "(" + "|".join(tasks) + ")", "adapter": f"({ADAPTER})",
                     "__rate_interval": WINDOW, "__range": WINDOW}
        queries = dq.dashboard_queries(DASHBOARD, variables=variables)
        assert len(queries) == len(dq.dashboard_targets(DASHBOARD)) and queries
        on_celery = {q for q in queries if any(m.startswith("celery_") for m in dq.metric_names(q))}
        assert on_celery == CELERY_QUERIES, f"celery-exporter queries changed: {sorted(on_celery)}"

        failures: list[str] = []
        for expr in queries:
            if expr in CELERY_QUERIES:
                continue
            body = prom.query(expr)
            if body.get("status") != "success":
                failures.append(f"{expr}\n    -> {body.get('errorType')}: {body.get('error')}")
                continue
            result = body["data"]["result"]
            values = [float(s["value"][1]) for s in result]
            finite = [v for v in values if math.isfinite(v)]
            if not result:
                failures.append(f"{expr}\n    -> no data")
            elif not finite:
                failures.append(f"{expr}\n    -> no finite value: {values}")
            elif ("rate(" in expr or "increase(" in expr) and not any(v > 0 for v in finite):
                failures.append(f"{expr}\n    -> no increase seen: {values}")
        assert not failures, "dashboard queries without data:\n" + "\n".join(failures)

        # ---- every alert rule: its expression evaluates, and Prometheus' own evaluation of
        # the rule reports no error.
        rules = [r for g in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
                 for r in g["rules"]]
        assert rules
        for rule in rules:
            body = prom.query(rule["expr"])
            assert body.get("status") == "success", (rule["alert"], body)
        loaded = {r["name"]: r for r in prom.rules()}
        assert set(loaded) == {r["alert"] for r in rules}
        unhealthy = {n: (r.get("health"), r.get("lastError")) for n, r in loaded.items()
                     if r.get("health") != "ok"}
        assert not unhealthy, unhealthy

    assert time.monotonic() - started < 60, "the end-to-end test must stay under a minute"
