"""Settings check the policy/train/eval/data/gate overrides when they are read, not a worker
later."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from daemon.settings import Settings
from tests.helpers import SECRET


@pytest.mark.parametrize(("overrides", "field"), [
    ({"policy": {"risk": {"low": {"crosstalk_on": 0.01, "crosstalk_off": 0.5}}}}, "policy"),
    ({"policy": {"cooldown": 60}}, "policy"),
    ({"policy": {"cooldown_s": "soon"}}, "cooldown_s"),
    ({"policy": {"risk": {"high": {"fork_after_rebalances": "two"}}}}, "fork_after_rebalances"),
    ({"train": {"stepz": 100}}, "train.stepz"),
    ({"eval": {"prompts_per_task": 0}}, "eval.prompts_per_task"),
    ({"data": {"heldout_fraction": 1.5}}, "data.heldout_fraction"),
    ({"gate": {"tolerances": {}}}, "gate.tolerances"),
])
def test_bad_overrides_are_refused_with_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(webhook_secret=SECRET, **overrides)  # type: ignore[arg-type]
    assert field in str(err.value)


def test_good_overrides_pass_through_unchanged() -> None:
    policy = {"cooldown_s": 60, "risk": {"high": {"crosstalk_on": 0.03}}}
    s = Settings(webhook_secret=SECRET, policy=policy, train={"steps": 20})
    assert s.policy == policy and s.train == {"steps": 20}


def test_every_training_group_is_set_the_same_way_and_reaches_the_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.celery_app import worker_context

    monkeypatch.setenv("ADAPTD_DATA", '{"heldout_min": 2}')
    monkeypatch.setenv("ADAPTD_GATE", '{"z": 2.5}')
    ctx = worker_context(Settings(webhook_secret=SECRET))
    assert (ctx.data, ctx.gate) == ({"heldout_min": 2}, {"z": 2.5})


def test_nested_environment_values_reach_the_engine_as_numbers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.celery_app import worker_context
    from policies.config import PolicyConfig

    monkeypatch.setenv("ADAPTD_POLICY__COOLDOWN_S", "600")
    monkeypatch.setenv("ADAPTD_POLICY__RISK__HIGH__FORK_AFTER_REBALANCES", "3")
    config = PolicyConfig.from_dict(worker_context(Settings(webhook_secret=SECRET)).policy)
    assert config.cooldown_s == 600.0 and isinstance(config.cooldown_s, float)
    assert config.risk["high"].fork_after_rebalances == 3
    assert config.risk["high"].crosstalk_on == PolicyConfig().risk["high"].crosstalk_on


def test_cli_names_the_bad_setting_without_a_traceback() -> None:
    env = {**os.environ, "ADAPTD_WEBHOOK_SECRET": SECRET,
           "ADAPTD_POLICY": '{"risk": {"low": {"crosstalk_on": 0.01}}}'}
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "status"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    text = " ".join((out.stdout + out.stderr).split())  # rich wraps at the terminal width
    assert "ADAPTD_POLICY" in text and "crosstalk_off <= crosstalk_on" in text
    assert "Traceback" not in text
