"""A fork on measured negative transfer needs an affinity beyond the measurement's noise.

One training run's TAG estimate scatters by a couple of hundredths, so a high-risk task must
not be forked before any traffic on a value like -0.0106 (within the noise), while a clearly
negative one still forks it.
"""

from __future__ import annotations

import pytest

from policies import PolicyConfig, TaskProfile, decide, init_state
from policies.state import PolicyState

NEG_HIGH = TaskProfile("high", "negative")
POS_LOW = TaskProfile("low", "positive")


def fresh() -> PolicyState:
    """A shared adapter just bootstrapped: no feedback yet, baselines known."""
    return init_state({"shared": ["g", "h"]}, {"g": POS_LOW, "h": NEG_HIGH}, PolicyConfig(),
                      data_sizes={"g": 1000, "h": 1000}, baselines={"g": 0.9, "h": 0.9})


def forks(affinity: dict[tuple[str, str], float], config: PolicyConfig) -> list[str]:
    _, ds = decide(fresh(), {}, now=1e9, config=config, affinity=affinity)
    return [d.reason for d in ds if d.action == "fork"]


@pytest.mark.parametrize("value", [-0.0106, -0.015, -0.0199])
def test_negative_affinity_within_the_noise_forks_nothing(value: float) -> None:
    assert forks({("g", "h"): value, ("h", "g"): 0.01}, PolicyConfig()) == []


def test_negative_affinity_beyond_the_noise_forks_the_harmed_task() -> None:
    reasons = forks({("g", "h"): -0.025, ("h", "g"): 0.01}, PolicyConfig())
    assert len(reasons) == 1 and "negative transfer g->h = -0.025" in reasons[0]


def test_the_noise_floor_is_a_setting() -> None:
    # With no noise assumed the risk level's own limit (-0.01 for high risk) decides alone.
    assert forks({("g", "h"): -0.0106}, PolicyConfig(affinity_noise=0.0))
    assert PolicyConfig(affinity_noise=0.05).max_negative() == {
        "low": -0.05, "medium": -0.05, "high": -0.05}
    assert PolicyConfig.from_dict({"affinity_noise": 0.03}).affinity_noise == 0.03
    with pytest.raises(ValueError, match="affinity_noise must be >= 0"):
        PolicyConfig(affinity_noise=-0.01)
