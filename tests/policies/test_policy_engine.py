"""The decision engine, table-driven on hand-built states."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace

import pytest

from policies import (
    Decision,
    PolicyConfig,
    PolicyState,
    TaskProfile,
    TaskSignals,
    approve,
    clear_pending,
    decide,
    init_state,
    observe,
    on_promotion,
    override,
    reject,
    summarize,
    sync_state,
)

T0 = 1_000_000.0
HOUR = 3600.0
CFG = PolicyConfig()


def make(
    adapters: Mapping[str, list[str]], profiles: Mapping[str, TaskProfile], baseline: float = 0.9
) -> PolicyState:
    return init_state(
        adapters,
        profiles,
        CFG,
        data_sizes=dict.fromkeys(profiles, 1000),
        baselines=dict.fromkeys(profiles, baseline),
    )


def feed(st: PolicyState, task: str, n: int, rate: float, source: str | None = None) -> None:
    """n events at exactly ``rate`` (deterministic spacing); rejects blame ``source``."""
    for i in range(n):
        ok = int((i + 1) * rate) > int(i * rate)
        observe(st, task, ok, crosstalk_source=None if ok else source, origin="auto")


def roundtrip(st: PolicyState) -> PolicyState:
    """Every state the engine hands out must survive JSON unchanged."""
    text = json.dumps(st.to_dict(), allow_nan=False, sort_keys=True)
    again = PolicyState.from_dict(json.loads(text))
    assert json.dumps(again.to_dict(), sort_keys=True) == text
    return again


def run(
    st: PolicyState,
    now: float,
    signals: Mapping[str, TaskSignals] | None = None,
    config: PolicyConfig = CFG,
    running_jobs: int = 0,
    affinity: Mapping[tuple[str, str], float] | None = None,
) -> tuple[PolicyState, list[Decision]]:
    before = json.dumps(st.to_dict(), sort_keys=True)
    new, ds = decide(st, signals or {}, now=now, config=config, running_jobs=running_jobs, affinity=affinity)
    assert json.dumps(st.to_dict(), sort_keys=True) == before  # input untouched
    for d in ds:
        assert Decision.from_dict(json.loads(json.dumps(d.to_dict(), allow_nan=False))) == d
    return roundtrip(new), ds


def acts(ds: list[Decision]) -> list[tuple[str, str, str]]:
    return [(d.action, d.task, d.status) for d in ds]


POS_LOW = TaskProfile("low", "positive")
POS_MED = TaskProfile("medium", "positive")
NEG_HIGH = TaskProfile("high", "negative")


# -- table: quiet states and gates --------------------------------------------------------


def healthy_pair() -> PolicyState:
    st = make({"shared": ["a", "b"]}, {"a": POS_LOW, "b": POS_MED})
    feed(st, "a", 600, 0.9)
    feed(st, "b", 600, 0.92)
    return st


def pending_retrain() -> PolicyState:
    st = healthy_pair()
    st.adapters["shared"].pending_since = T0 - 60
    return st


def cooling() -> PolicyState:
    st = healthy_pair()
    st.adapters["shared"].cooldown_until = T0 + 600
    return st


MANY = {"a": TaskSignals(new_examples=150), "b": TaskSignals(new_examples=100)}
FEW = {"a": TaskSignals(new_examples=150), "b": TaskSignals(new_examples=10)}
GOOD_AFF = {("a", "b"): 0.03, ("b", "a"): 0.025}  # both beyond affinity_noise (0.02)

CASES: list[tuple[str, Callable[[], PolicyState], dict[str, object], list[tuple[str, str, str]]]] = [
    ("compatible tasks stay shared", healthy_pair, {"affinity": GOOD_AFF}, []),
    ("too few new examples", healthy_pair, {"signals": FEW}, []),
    ("enough new examples", healthy_pair, {"signals": MANY}, [("retrain", "a", "applied")]),
    ("job cap holds", healthy_pair, {"signals": MANY, "running_jobs": 1}, [("hold", "a", "applied")]),
    ("waiting for the last job", pending_retrain, {"signals": MANY}, [("hold", "a", "applied")]),
    ("cool-down holds", cooling, {"signals": MANY}, [("hold", "a", "applied")]),
    (
        "slightly negative affinity tolerated for low/medium risk",
        healthy_pair,
        {"affinity": {("a", "b"): -0.02, ("b", "a"): -0.04}},
        [],
    ),
]


@pytest.mark.parametrize(("name", "setup", "kwargs", "expected"), CASES, ids=[c[0] for c in CASES])
def test_table(
    name: str,
    setup: Callable[[], PolicyState],
    kwargs: dict[str, object],
    expected: list[tuple[str, str, str]],
) -> None:
    st = setup()
    new, ds = run(st, T0, **kwargs)  # type: ignore[arg-type]
    assert acts(ds) == expected
    assert new.tasks["a"].adapter == new.tasks["b"].adapter == "shared"
    if expected and expected[0][0] == "hold":
        assert new.adapters["shared"].ratios == st.adapters["shared"].ratios
        assert not ds[0].train
        # a blocked action is logged once, not on every run
        assert run(new, T0 + 30, **kwargs)[1] == []  # type: ignore[arg-type]


def test_quiet_for_a_day() -> None:
    st = healthy_pair()
    for hour in range(24):
        feed(st, "a", 50, 0.9)
        feed(st, "b", 50, 0.92)
        st, ds = run(st, T0 + hour * HOUR, affinity=GOOD_AFF)
        assert ds == []


# -- escalation ---------------------------------------------------------------------------


def degrading_high_risk(config: PolicyConfig) -> tuple[PolicyState, list[Decision]]:
    """High-risk task degrades, gets a rebalance, and is still degraded after promotion."""
    st = make({"shared": ["h", "l"]}, {"h": NEG_HIGH, "l": POS_LOW})
    feed(st, "l", 500, 0.9)
    feed(st, "h", 300, 0.6)
    assert st.tasks["h"].detector.degraded
    st, ds = run(st, T0, config=config)
    assert acts(ds) == [("rebalance", "h", "applied")]
    rb = ds[0]
    assert rb.train == ("shared",) and rb.signals["targeted"] == ["h"]
    assert rb.ratios is not None and rb.ratios["h"] > 0.5 > rb.ratios["l"]
    assert rb.ratio_version == 2 == st.adapters["shared"].ratios.version
    assert "degraded" in rb.reason and "h" in rb.reason
    # still degraded, but the retrain has not been promoted yet: hold (once), no fork
    st, ds = run(st, T0 + 60, config=config)
    assert [(d.action, d.signals["blocked_by"]) for d in ds] == [("hold", "pending")]
    st, ds = run(st, T0 + 120, config=config)
    assert ds == []
    st = on_promotion(st, "shared", version=2, now=T0 + HOUR, config=config)
    assert not st.tasks["h"].detector.degraded and st.tasks["h"].detector.baseline == 0.9
    feed(st, "l", 300, 0.9)
    feed(st, "h", 300, 0.6)
    return run(st, T0 + 2 * HOUR, config=config)


def test_rebalance_then_fork_for_high_risk_task() -> None:
    st, ds = degrading_high_risk(CFG)
    assert acts(ds) == [("fork", "h", "applied")]
    fork = ds[0]
    assert fork.adapter == "h" and fork.train == ("h",) and fork.signals["from_adapter"] == "shared"
    assert "high-risk task still degraded" in fork.reason and "1 rebalance" in fork.reason
    assert st.tasks["h"].adapter == "h" and st.tasks["h"].forked_from == "shared"
    assert st.adapters["shared"].tasks == ["l"]
    assert st.adapters["shared"].ratios.weights == {"l": 1.0}
    assert st.adapters["h"].ratios.weights == {"h": 1.0}
    # no flapping: nothing more right after the fork
    assert run(st, T0 + 2 * HOUR + 60)[1] == []


def test_propose_only_mode_waits_for_operator() -> None:
    cfg = replace(CFG, propose_only_high_risk=True)
    st, ds = degrading_high_risk(cfg)
    assert acts(ds) == [("fork", "h", "proposed")] and ds[0].train == ()
    assert st.tasks["h"].adapter == "shared" and len(st.pending) == 1
    st, ds = run(st, T0 + 2 * HOUR + 60, config=cfg)
    assert [(d.action, d.signals["blocked_by"]) for d in ds] == [("hold", "proposal")]
    assert run(st, T0 + 2 * HOUR + 120, config=cfg)[1] == []
    seq = int(st.pending[0]["seq"])
    # rejected: not proposed again during the cool-down
    rejected = reject(st, seq, now=T0 + 3 * HOUR, config=cfg)
    assert rejected.pending == [] and rejected.tasks["h"].adapter == "shared"
    assert all(d.action != "fork" for d in run(rejected, T0 + 3 * HOUR + 60, config=cfg)[1])
    # approved: applied
    st2, d = approve(st, seq, now=T0 + 3 * HOUR, config=cfg)
    assert (d.action, d.status, d.adapter) == ("fork", "applied", "h")
    assert st2.pending == [] and st2.tasks["h"].adapter == "h"
    with pytest.raises(KeyError):
        approve(st2, seq, now=T0 + 3 * HOUR, config=cfg)


def test_bad_hour_of_low_risk_task_never_forks() -> None:
    st = make({"shared": ["l", "m"]}, {"l": POS_LOW, "m": POS_MED})
    feed(st, "m", 500, 0.9)
    feed(st, "l", 300, 0.5)  # one bad hour
    st, ds = run(st, T0)
    assert acts(ds) == [("rebalance", "l", "applied")]
    st = on_promotion(st, "shared", version=2, now=T0 + HOUR, config=CFG)
    feed(st, "l", 300, 0.5)  # still bad after the rebalance: low risk is not forked
    seen: list[str] = []
    for hour in range(2, 48):
        feed(st, "l", 40, 0.9 if hour > 3 else 0.5)
        feed(st, "m", 40, 0.9)
        st, ds = run(st, T0 + hour * HOUR)
        seen += [d.action for d in ds]
    assert "fork" not in seen and st.tasks["l"].adapter == "shared"
    assert not st.tasks["l"].detector.degraded  # recovered by itself


def test_crosstalk_rebalance_lowers_the_source() -> None:
    st = make({"shared": ["h", "g"]}, {"h": NEG_HIGH, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 300, 0.95, source="g")  # 5% crosstalk from g, acceptance fine
    assert st.tasks["h"].window.leaking and not st.tasks["h"].detector.degraded
    before = dict(st.adapters["shared"].ratios.weights)
    st, ds = run(st, T0)
    assert acts(ds) == [("rebalance", "h", "applied")]
    after = ds[0].ratios or {}
    assert after["h"] > before["h"] and after["g"] < before["g"]
    assert ds[0].signals["pressure"]["g"] < 0 < ds[0].signals["pressure"]["h"]
    assert "leaking 5.0% crosstalk from g" in ds[0].reason


def test_negative_affinity_forks_the_harmed_task() -> None:
    st = make({"shared": ["h", "g"]}, {"h": NEG_HIGH, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 300, 0.9)
    st, ds = run(st, T0, affinity={("g", "h"): -0.05, ("h", "g"): 0.01})
    assert acts(ds) == [("fork", "h", "applied")]
    assert "negative transfer g->h" in ds[0].reason


def test_rollback_when_promoted_version_is_worse_live() -> None:
    st = make({"shared": ["a", "b"]}, {"a": POS_MED, "b": POS_MED})
    st = on_promotion(st, "shared", version=1, now=T0 - 10 * HOUR, config=CFG)
    feed(st, "a", 500, 0.9)
    feed(st, "b", 500, 0.9)
    st = on_promotion(st, "shared", version=2, now=T0, config=CFG)
    assert st.adapters["shared"].probation is not None
    for i in range(300):  # events still produced by v1 do not count against v2
        observe(st, "a", i % 2 == 0, adapter="shared", version=1)
    prob = st.adapters["shared"].probation
    assert prob is not None and prob.after == {} and prob.before["a"] == [450, 500]
    for i in range(300):
        observe(st, "a", i % 10 < 7, adapter="shared", version=2)  # 70% vs 90%
    st, ds = run(st, T0 + HOUR)
    assert acts(ds) == [("rollback", "a", "applied")]
    assert ds[0].signals["to_version"] == 1 and ds[0].train == ()
    assert st.adapters["shared"].version == 1 and st.adapters["shared"].probation is None


def test_probation_expires_without_rollback() -> None:
    st = make({"shared": ["a", "b"]}, {"a": POS_MED, "b": POS_MED})
    st = on_promotion(st, "shared", version=1, now=T0 - 10 * HOUR, config=CFG)
    feed(st, "a", 500, 0.9)
    st = on_promotion(st, "shared", version=2, now=T0, config=CFG)
    feed(st, "a", 300, 0.9)
    st, ds = run(st, T0 + CFG.probation_s + 1)
    assert ds == [] and st.adapters["shared"].probation is None


def test_merge_after_long_compatibility() -> None:
    st = make({"shared": ["a", "b"]}, {"a": POS_MED, "b": POS_MED})
    st, d = override(st, "b", "fork", now=T0, config=CFG)
    assert (d.action, d.adapter) == ("fork", "b") and st.adapters["b"].tasks == ["b"]
    st = on_promotion(st, "b", version=1, now=T0 + HOUR, config=CFG)
    feed(st, "b", 300, 0.9)
    feed(st, "a", 300, 0.9)
    # negative transfer beyond the measurement's noise (0.02): the clock does not start
    st, ds = run(st, T0 + 2 * HOUR - 1, affinity={("a", "b"): 0.03, ("b", "a"): -0.025})
    assert ds == [] and st.tasks["b"].compatible_since is None
    # within the noise is no evidence of harm: compatible
    st, ds = run(st, T0 + 2 * HOUR, affinity={("a", "b"): -0.019, ("b", "a"): 0.0})
    assert ds == [] and st.tasks["b"].compatible_since == T0 + 2 * HOUR
    # compatibility interrupted (one direction unmeasured): the clock restarts
    st, _ = run(st, T0 + 3 * HOUR, affinity={("a", "b"): 0.03})
    assert st.tasks["b"].compatible_since is None
    start = T0 + 4 * HOUR
    st, _ = run(st, start, affinity=GOOD_AFF)
    st, ds = run(st, start + CFG.merge_after_s - 1, affinity=GOOD_AFF)
    assert ds == []
    st, ds = run(st, start + CFG.merge_after_s, affinity=GOOD_AFF)
    assert acts(ds) == [("merge", "b", "applied")]
    assert ds[0].adapter == "shared" and ds[0].train == ("shared",)
    assert st.tasks["b"].adapter == "shared" and "b" not in st.adapters
    assert sorted(st.adapters["shared"].ratios.weights) == ["a", "b"]


def test_fork_and_merge_of_high_risk_task_are_proposed_in_propose_only_mode() -> None:
    cfg = replace(CFG, propose_only_high_risk=True)
    st = make({"shared": ["h", "g"]}, {"h": TaskProfile("high", "t"), "g": TaskProfile("medium", "t")})
    st, _ = override(st, "h", "fork", now=T0, config=cfg)  # an operator may always act
    feed(st, "h", 400, 0.9)  # no crosstalk in 400 answers: below 1 % with confidence
    aff = {("h", "g"): 0.05, ("g", "h"): 0.05}
    st, _ = run(st, T0 + 2 * HOUR, config=cfg, affinity=aff)
    st, ds = run(st, T0 + 2 * HOUR + cfg.merge_after_s, config=cfg, affinity=aff)
    assert acts(ds) == [("merge", "h", "proposed")] and st.tasks["h"].adapter == "h"


def test_retrain_cooldown_and_job_cap_sequence() -> None:
    st = healthy_pair()
    st, ds = run(st, T0, signals=MANY)
    assert acts(ds) == [("retrain", "a", "applied")] and ds[0].train == ("shared",)
    st, ds = run(st, T0 + 60, signals=MANY)
    assert [d.signals["blocked_by"] for d in ds] == ["pending"]
    st = on_promotion(st, "shared", version=1, now=T0 + 600, config=CFG)
    st, ds = run(st, T0 + 660, signals=MANY)
    assert [d.signals["blocked_by"] for d in ds] == ["cooldown"]
    st, ds = run(st, T0 + 600 + CFG.cooldown_s + 1, signals=MANY, running_jobs=1)
    assert [d.signals["blocked_by"] for d in ds] == ["job-cap"]
    st, ds = run(st, T0 + 600 + CFG.cooldown_s + 2, signals=MANY)
    assert acts(ds) == [("retrain", "a", "applied")]
    # a failed job frees the adapter
    freed = clear_pending(st, "shared")
    assert freed.adapters["shared"].pending_since is None


def test_a_retrain_flags_tasks_seen_leaking_for_its_self_audit() -> None:
    # a: 4 % of its answers in b's style (below low risk's 10 % leak threshold, so no
    # rebalance), b clean. The retrain for new examples flags a, and only a, for the audit.
    st = make({"shared": ["a", "b"]}, {"a": POS_LOW, "b": POS_MED})
    feed(st, "a", 600, 0.96, source="b")
    feed(st, "b", 600, 1.0)
    assert not st.tasks["a"].window.leaking
    _, ds = run(st, T0, signals=MANY)
    assert acts(ds) == [("retrain", "a", "applied")] and ds[0].signals["audit"] == ["a"]
    # 1.5 % stays under the default 2 %; a lower audit_at flags it; None never flags.
    calm = make({"shared": ["a", "b"]}, {"a": POS_LOW, "b": POS_MED})
    feed(calm, "a", 600, 0.985, source="b")
    feed(calm, "b", 600, 1.0)
    assert run(calm, T0, signals=MANY)[1][0].signals["audit"] == []
    for at, want in ((0.01, ["a"]), (None, [])):
        cfg = replace(CFG, risk={r: replace(p, audit_at=at) for r, p in CFG.risk.items()})
        assert run(calm, T0, signals=MANY, config=cfg)[1][0].signals["audit"] == want
    with pytest.raises(ValueError, match="audit_at"):
        replace(CFG.risk["low"], audit_at=0.0)


def test_job_cap_shared_across_adapters() -> None:
    profiles = {"a": POS_MED, "b": POS_MED, "c": POS_MED}
    st = make({"x": ["a"], "y": ["b"], "z": ["c"]}, profiles)
    sig = {t: TaskSignals(new_examples=500) for t in profiles}
    cfg = replace(CFG, max_concurrent_jobs=2)
    st, ds = run(st, T0, signals=sig, config=cfg)
    assert [(d.action, d.adapter) for d in ds] == [
        ("retrain", "x"),
        ("retrain", "y"),
        ("hold", "z"),
    ]


def test_arbitrary_task_names_and_order_independence() -> None:
    names = {"h": "致歉 v2", "l": "x.y:z"}
    a = make({"共享": [names["h"], names["l"]]}, {names["l"]: POS_LOW, names["h"]: NEG_HIGH})
    b = make({"共享": [names["l"], names["h"]]}, {names["h"]: NEG_HIGH, names["l"]: POS_LOW})
    for st in (a, b):
        feed(st, names["l"], 400, 0.9)
        feed(st, names["h"], 300, 0.6)
    ra, da = run(a, T0)
    rb, db = run(b, T0)
    assert acts(da) == acts(db) == [("rebalance", names["h"], "applied")]
    assert ra.to_dict() == rb.to_dict()


def test_override_errors_and_sync() -> None:
    st = healthy_pair()
    with pytest.raises(KeyError):
        override(st, "nope", "retrain", now=T0, config=CFG)
    with pytest.raises(ValueError):
        override(st, "a", "merge", now=T0, config=CFG)
    _, d = override(st, "a", "rebalance", now=T0, config=CFG)
    assert d.action == "rebalance" and d.ratio_version == 2
    forked, _ = override(st, "a", "fork", now=T0, config=CFG)
    with pytest.raises(ValueError):
        override(forked, "a", "fork", now=T0, config=CFG)
    # suite edited: a new task joins, b becomes high-risk; the fork survives
    synced = sync_state(
        forked,
        {"shared": ["a", "b", "n"]},
        {"a": POS_LOW, "b": TaskProfile("high", "positive"), "n": POS_MED},
        CFG,
    )
    assert synced.tasks["a"].adapter == "a"
    assert synced.adapters["shared"].tasks == ["b", "n"]
    assert sum(synced.adapters["shared"].ratios.weights.values()) == pytest.approx(1.0)
    assert synced.tasks["b"].detector.threshold == CFG.risk["high"].detector_threshold
    roundtrip(synced)


def test_config_roundtrip_and_partial_load() -> None:
    cfg = PolicyConfig.from_dict({"cooldown_s": 60, "risk": {"high": {"min_drop": 0.01}}})
    assert cfg.cooldown_s == 60 and cfg.risk["high"].min_drop == 0.01
    assert cfg.risk["high"].crosstalk_on == CFG.risk["high"].crosstalk_on
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        PolicyConfig.from_dict({"cooldown": 1})


@pytest.mark.parametrize("values", [
    {"crosstalk_on": 0.01, "crosstalk_off": 0.5},  # would switch off above where it switches on
    {"crosstalk_on": 0.0, "crosstalk_off": 0.0},
    {"min_drop": 0.0},
    {"fork_after_rebalances": 0},
])
def test_risk_policy_rejects_inconsistent_thresholds(values: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PolicyConfig.from_dict({"risk": {"low": values}})


def test_summarize_for_the_api() -> None:
    st = make({"shared": ["h", "g"]}, {"h": NEG_HIGH, "g": POS_LOW})
    feed(st, "g", 300, 0.9)
    feed(st, "h", 300, 0.95, source="g")
    view = summarize(st)
    assert list(view) == ["g", "h"]
    h = view["h"]
    assert (h["risk"], h["adapter"], h["leaking"], h["crosstalk_source"]) == ("high", "shared", True, "g")
    assert h["quality"] == pytest.approx(0.95) and h["crosstalk_rate"] == pytest.approx(0.05)
    assert h["crosstalk_sources"] == {"g": {"user": 0, "auto": 15}}
    assert view["g"]["ratio"] + h["ratio"] == pytest.approx(1.0)
    json.dumps(view, allow_nan=False)
