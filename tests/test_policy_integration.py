"""A degrading high-risk task through the real webhook, drain, policy tick and real training:
rebalance, then fork, then the routing change (tiny builtin model, CPU)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from daemon.settings import Settings
from policies import PolicyConfig
from storage.suite import load_suite
from tests.conftest import LiveServer, share_base_cache
from tests.helpers import event, post
from workers.ingest import drain_once
from workers.policy import policy_tick
from workers.training.config import EvalConfig, TrainConfig
from workers.training.job import run_training_job

CONFIG = PolicyConfig.from_dict({
    "cooldown_s": 0, "structural_cooldown_s": 0, "rebalance_patience_s": 0,
    "min_new_examples": 10**6, "probation_min_events": 10**9, "crosstalk_min_events": 20,
    # This test is the leak path. The bootstrap's affinity probes can also measure negative
    # transfer into some task and fork that first (a path of its own, tested in tests/policies).
    "risk": {level: {"max_negative_affinity": -10.0} for level in ("low", "medium", "high")},
})


@pytest.mark.slow
def test_leak_goes_rebalance_then_fork_then_reroute(settings: Settings, engine: Engine,
                                                    live_api: LiveServer, tmp_path: Path) -> None:
    suite = load_suite(settings.suite)
    share_base_cache(settings.artifacts_dir, tmp_path)  # the loop tests' festive-zh base
    client = redis.Redis.from_url(settings.redis_url)
    sent: list[int] = []
    outcomes: list[str] = []
    reasons: list[dict[str, str]] = []

    def tick(now: float) -> list[str]:
        while drain_once(client=client, engine=engine, prefix=settings.key_prefix,
                         consumer="t").read:
            pass
        result = policy_tick(engine=engine, client=client, prefix=settings.key_prefix,
                             suite=suite, config=CONFIG, now=now, enqueue=sent.append)
        return [f"{d['action']}:{d['task']}" for d in result.decisions]

    def train_all() -> None:
        while sent:
            out = run_training_job(
                sent.pop(0), engine=engine, redis_client=client, key_prefix=settings.key_prefix,
                artifacts_dir=settings.artifacts_dir, suite=suite, worker_id="test",
                # 60 steps, not 20: a 20-step fork beat the shared adapter on apology by a
                # hair, and on this stop's machine the gate rejected it every time (crosstalk
                # +0.062, se 0.038), at f7b7ad5 too: the test is about the loop, not that edge.
                train_config=TrainConfig(steps=60), eval_config=EvalConfig())
            outcomes.append(out.status)
            reasons.append(out.reasons)

    def leak(start: int, n: int) -> None:
        batch = [event(f"leak{start + i}", "apology", "reject", crosstalk_source="greeting",
                       output="王总，新年好！非常抱歉~") for i in range(n)]
        assert post(live_api.url, {"events": batch}).status_code == 202

    assert tick(1000.0) == ["retrain:None"]  # bootstrap
    train_all()
    assert outcomes == ["promoted"], reasons
    first = httpx.get(f"{live_api.url}/v1/routing").json()
    assert first["routes"]["apology"]["adapter"] == "shared"

    leak(0, 60)
    assert "rebalance:apology" in tick(2000.0)
    train_all()  # the rebalanced retrain: promoted or rejected by the gate, both are fine
    leak(60, 60)
    actions = tick(3000.0)
    assert "fork:apology" in actions, actions
    train_all()
    assert outcomes[-1] == "promoted", (outcomes, reasons[-1])
    routing = httpx.get(f"{live_api.url}/v1/routing").json()
    assert routing["revision"] > first["revision"]
    assert routing["routes"]["apology"]["adapter"] != "shared"
    assert routing["routes"]["greeting"]["adapter"] == "shared"
    decisions = httpx.get(f"{live_api.url}/v1/decisions").json()["decisions"]
    assert [d["action"] for d in decisions if d["action"] in ("rebalance", "fork")] == [
        "fork", "rebalance"]  # newest first
    assert all(d["reason"] and d["signals"] for d in decisions if d["action"] != "retrain")
