"""A real serving worker and beat keep a real vLLM whole: promotions are routed once the
replica lists them, an unreachable replica does not hold them back, and after a kill -9 and a
restart the replica holds every routed version again within one sync interval."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from daemon import procs
from daemon.vllm import VLLMServer
from storage.crud import read_counters
from storage.suite import Suite
from tests.serving.support import install_version, listed, promote, routes, wait_for
from workers.serving.backends import Unreachable

# The session's first test builds the base, trains a version and starts vLLM.
pytestmark = pytest.mark.timeout(900)

SYNC_SECONDS = 3.0
# One interval, plus what a sync round and Celery's scheduling take on a loaded 2-core box.
WHOLE_WITHIN = SYNC_SECONDS + 12.0


def _served(engine: Engine) -> set[str]:
    return {r["served_as"] for r in routes(engine).values()}


def test_worker_and_beat_keep_a_restarted_replica_whole(
        serving_db: Engine, artifacts: Path, trained: Path, vllm: VLLMServer, bundle: Any,
        serving_suite: Suite, redis_url: str, prefix: str, tmp_path: Path) -> None:
    tasks = sorted(serving_suite.tasks)
    url = str(serving_db.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTD_")}
    env.update({
        "ADAPTD_REDIS_URL": redis_url, "ADAPTD_DATABASE_URL": url, "ADAPTD_KEY_PREFIX": prefix,
        "ADAPTD_SUITE": "builtin:festive-zh", "ADAPTD_ARTIFACTS_DIR": str(artifacts),
        "ADAPTD_SERVING_REPLICAS": json.dumps([{"url": vllm.url, "backend": "vllm"}]),
        "ADAPTD_SERVING_SYNC_SECONDS": str(SYNC_SECONDS), "ADAPTD_SERVING_GRACE_SECONDS": "0",
        "ADAPTD_DRAIN_INTERVAL_SECONDS": "3600", "ADAPTD_POLICY_INTERVAL_SECONDS": "3600",
        "ADAPTD_LOG_LEVEL": "INFO",
    })
    children = [procs.spawn(["worker", "--queues", "serving"], env, tmp_path / "worker.log"),
                procs.spawn(["beat"], env, tmp_path / "beat.log")]
    # Watch the table: a routed name the replica does not list, while it answers, is a
    # version routed before the replica confirmed it.
    early: list[str] = []
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            names = _served(serving_db)
            try:
                held = listed(vllm.url)
            except Unreachable:
                continue
            if watching.is_set() and names - held:
                early.extend(sorted(names - held))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        watcher.start()
        for version in (1, 2):
            promote(serving_db, install_version(serving_db, artifacts, "rs", version, trained),
                    tasks, bundle.tokenizer)
            wait_for(lambda v=version: _served(serving_db) == {f"rs-v{v}"}, timeout=120)
        watching.clear()
        watcher.join(10)
        assert early == []
        assert {"rs-v1", "rs-v2"} <= listed(vllm.url)

        vllm.kill()  # kill -9: the replica forgets every runtime load
        promote(serving_db, install_version(serving_db, artifacts, "rs", 3, trained), tasks,
                bundle.tokenizer)
        # An unreachable replica is reported, and does not hold the promotion back.
        wait_for(lambda: _served(serving_db) == {"rs-v3"}, timeout=60)
        with Session(serving_db) as session:
            errors = {(labels["replica"], labels["reason"]): value
                      for name, labels, value in read_counters(session)
                      if name == "adaptd_serving_sync_errors_total"}
        assert errors.get((vllm.url, "unreachable"), 0) >= 1

        vllm.start(wait=True)
        took = wait_for(lambda: {"rs-v3", "rs-v2"} <= listed(vllm.url), timeout=120)
        assert took <= WHOLE_WITHIN, f"whole again after {took:.1f}s"
        assert _served(serving_db) == {"rs-v3"}
    finally:
        watching.clear()
        for child in children:
            procs.stop(child)
