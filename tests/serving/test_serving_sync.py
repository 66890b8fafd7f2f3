"""Two-step promotion against a real vLLM: hot swap, refusal, rollback (docs/contracts.md section 11)."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from daemon.metrics import StoreCollector, build_registry
from daemon.vllm import VLLMServer
from storage.crud import list_decisions
from storage.models import AdapterVersion, ServingRollout
from storage.suite import Suite
from tests.serving.support import (
    complete,
    install_version,
    listed,
    promote,
    routes,
    sync,
)
from workers.policy import _rollback

# The session's first test builds the base, trains a version and starts vLLM.
pytestmark = pytest.mark.timeout(900)


def _metrics(engine: Engine, redis_url: str, prefix: str) -> str:
    collector = StoreCollector(engine=engine, client=redis.Redis.from_url(redis_url),
                               prefix=prefix)
    return generate_latest(build_registry(collector)).decode()


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels`` in an exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def _rollouts(engine: Engine) -> list[ServingRollout]:
    with Session(engine) as session:
        return list(session.execute(select(ServingRollout)).scalars())


def test_hot_swap_routes_only_what_the_replica_lists(
        serving_db: Engine, artifacts: Path, trained: Path, vllm: VLLMServer, bundle: Any,
        serving_suite: Suite, redis_url: str, prefix: str) -> None:
    tasks = sorted(serving_suite.tasks)
    tok = bundle.tokenizer
    v1 = install_version(serving_db, artifacts, "hot", 1, trained)
    promote(serving_db, v1, tasks, tok)
    assert routes(serving_db) == {}  # promoted, not routed: no replica lists it yet
    assert sync(serving_db, vllm.url).routed == ["hot@1"]
    assert "hot-v1" in listed(vllm.url)
    assert {r["served_as"] for r in routes(serving_db).values()} == {"hot-v1"}

    # The app: asks the routing table, sends the routed name, checks every answer.
    task, prompt = tasks[0], serving_suite.prompt_for(tasks[0], random.Random(1))
    stop = threading.Event()
    sent: list[str] = []
    failures: list[str] = []
    unlisted: list[str] = []

    def app() -> None:
        while not stop.is_set():
            route = routes(serving_db)[task]
            name = route["served_as"]
            if name not in listed(vllm.url):
                unlisted.append(name)  # routed before the replica lists it
            try:
                complete(vllm.url, name, route, task, prompt, max_tokens=4)
                sent.append(name)
            except AssertionError as exc:
                failures.append(str(exc))

    thread = threading.Thread(target=app, daemon=True)
    thread.start()
    try:
        while len(sent) < 2 and not failures:  # traffic on v1 before the promotion
            stop.wait(0.1)
        v2 = install_version(serving_db, artifacts, "hot", 2, trained)
        promote(serving_db, v2, tasks, tok)
        assert {r["served_as"] for r in routes(serving_db).values()} == {"hot-v1"}
        n_before = len(sent)
        result = sync(serving_db, vllm.url)
        assert result.routed == ["hot@2"] and result.loaded == {vllm.url: ["hot-v2"]}
        n_switch = len(sent)
        while len(sent) < n_switch + 3 and not failures:
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(60)
    assert failures == [] and unlisted == []
    assert n_before >= 1 and "hot-v1" in sent and sent[-1] == "hot-v2"
    assert {"hot-v1", "hot-v2"} <= listed(vllm.url)  # v1 stays: the instant rollback
    rolled = sorted((r.version, r.status) for r in _rollouts(serving_db))
    assert rolled == [(1, "routed"), (2, "routed")]
    text = _metrics(serving_db, redis_url, prefix)
    assert _sample(text, "adaptd_serving_promotion_seconds_count") == 2.0
    assert _sample(text, "adaptd_serving_loaded", replica=vllm.url, adapter="hot",
                   version="2") == 1.0


def test_a_refused_version_stays_unrouted_with_reason_metric_and_decision(
        serving_db: Engine, artifacts: Path, trained: Path, wide: Path, vllm: VLLMServer,
        bundle: Any, serving_suite: Suite, redis_url: str, prefix: str) -> None:
    tasks = sorted(serving_suite.tasks)
    promote(serving_db, install_version(serving_db, artifacts, "ref", 1, trained), tasks,
            bundle.tokenizer)
    assert sync(serving_db, vllm.url).routed == ["ref@1"]
    promote(serving_db, install_version(serving_db, artifacts, "ref", 2, wide), tasks,
            bundle.tokenizer)
    result = sync(serving_db, vllm.url)
    assert result.refused == ["ref@2"] and result.routed == []
    assert [(e[0], e[1]) for e in result.errors] == [(vllm.url, "refused")]
    assert {r["served_as"] for r in routes(serving_db).values()} == {"ref-v1"}
    (rollout,) = [r for r in _rollouts(serving_db) if r.version == 2]
    assert rollout.status == "refused" and "max_lora_rank" in rollout.reason
    with Session(serving_db) as session:
        v2 = session.execute(select(AdapterVersion).where(AdapterVersion.version == 2)).scalar_one()
        assert "not served" in v2.reason and "max_lora_rank" in v2.reason
        (decision,) = [d for d in list_decisions(session) if d.origin == "serving"]
    assert decision.adapter == "ref" and decision.signals["version"] == 2
    assert "serving refused ref@2" in decision.reason
    text = _metrics(serving_db, redis_url, prefix)
    assert _sample(text, "adaptd_serving_sync_errors_total", replica=vllm.url,
                   reason="refused") == 1.0
    again = sync(serving_db, vllm.url)  # refused once, never retried
    assert again.errors == [] and again.loaded == {} and "ref-v2" not in listed(vllm.url)


def test_rollback_routes_the_loaded_previous_version_at_once(
        serving_db: Engine, artifacts: Path, trained: Path, vllm: VLLMServer, bundle: Any,
        serving_suite: Suite) -> None:
    tasks = sorted(serving_suite.tasks)
    for version in (1, 2):
        promote(serving_db, install_version(serving_db, artifacts, "roll", version, trained),
                tasks, bundle.tokenizer)
        assert sync(serving_db, vllm.url).routed == [f"roll@{version}"]
    assert {"roll-v1", "roll-v2"} <= listed(vllm.url)  # v1 held for the rollback
    promote(serving_db, install_version(serving_db, artifacts, "roll", 3, trained), tasks,
            bundle.tokenizer)  # pending, not yet synced
    with Session(serving_db) as session:
        _rollback(session, "roll", 1)
        session.commit()
    table = routes(serving_db)
    assert {r["served_as"] for r in table.values()} == {"roll-v1"}
    # Served right away, before any sync: nothing had to load.
    task = tasks[0]
    body = complete(vllm.url, "roll-v1", table[task], task, "你好", max_tokens=4)
    assert body["model"] == "roll-v1"
    assert {r.version: r.status for r in _rollouts(serving_db)}[3] == "superseded"
    kept = sync(serving_db, vllm.url, grace_s=3600)  # in-flight requests: v2 stays a while
    assert kept.routed == [] and kept.loaded == {} and "roll-v2" in listed(vllm.url)
    gone = sync(serving_db, vllm.url, grace_s=0)
    assert gone.unloaded == {vllm.url: ["roll-v2"]} and "roll-v2" not in listed(vllm.url)
    assert "roll-v3" not in listed(vllm.url)
