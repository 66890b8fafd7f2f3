"""Cross-task regressions: a retrain's eval that makes an untargeted task worse, counted
towards a fork only when it is beyond tolerance and beyond the eval's noise."""

from __future__ import annotations

import pytest

from policies import PolicyConfig, record_eval
from tests.policies.test_policy_engine import CFG, POS_MED, T0, acts, make, run


def test_repeated_regressions_fork_but_one_does_not() -> None:
    st = make({"shared": ["a", "b", "c"]}, {"a": POS_MED, "b": POS_MED, "c": POS_MED})
    before = {"a": 0.9, "b": 0.9, "c": 0.9}
    worse_b = {"a": 0.91, "b": 0.85, "c": 0.9}
    st, reg = record_eval(st, "shared", before=before, after=worse_b, config=CFG, targeted=["a"])
    assert reg == {"b": pytest.approx(0.05)} and st.tasks["b"].regressions == 1
    assert run(st, T0)[1] == []
    clean, _ = record_eval(st, "shared", before=before, after=before, config=CFG)
    assert clean.tasks["b"].regressions == 0
    st, _ = record_eval(st, "shared", before=before, after=worse_b, config=CFG, targeted=["a"])
    st, ds = run(st, T0)
    assert acts(ds) == [("fork", "b", "applied")] and "2 consecutive retrains" in ds[0].reason


def test_a_regression_within_eval_noise_does_not_count() -> None:
    """A drop beyond tolerance that the paired standard error calls noise (the gate's test)
    is not a regression: many such retrains never fork the task; a significant one counts."""
    st = make({"shared": ["a", "b", "c"]}, {"a": POS_MED, "b": POS_MED, "c": POS_MED})
    before = {"a": 0.9, "b": 0.9, "c": 0.9}
    worse_b = {"a": 0.91, "b": 0.85, "c": 0.9}
    noisy = {"a": 0.01, "b": 0.04, "c": 0.01}  # b: 0.05 < 1.64 x 0.04
    for _ in range(4):
        st, reg = record_eval(st, "shared", before=before, after=worse_b, config=CFG,
                              targeted=["a"], se=noisy)
        assert reg == {} and st.tasks["b"].regressions == 0
    assert acts(run(st, T0)[1]) == []
    st, reg = record_eval(st, "shared", before=before, after=worse_b, config=CFG, targeted=["a"],
                          se={**noisy, "b": 0.02})  # 0.05 > 1.64 x 0.02
    assert reg == {"b": pytest.approx(0.05)} and st.tasks["b"].regressions == 1
    off = PolicyConfig.from_dict({**CFG.to_dict(), "regression_z": 0.0})
    _, reg = record_eval(st, "shared", before=before, after=worse_b, config=off, targeted=["a"],
                         se=noisy)
    assert reg == {"b": pytest.approx(0.05)}  # z 0: the tolerance alone decides, as before
    with pytest.raises(ValueError, match="regression_z"):
        PolicyConfig(regression_z=-1.0)
