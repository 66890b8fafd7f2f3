"""Degradation detector and crosstalk window: exact behaviour on seeded streams."""

from __future__ import annotations

import json
import random

import pytest

from policies.detectors import DEFAULT_THRESHOLD, DegradationDetector
from policies.windows import DEFAULT_FALSE_FLAGS, DEFAULT_LATCH_Z, CrosstalkWindow


def stream(seed: int, n0: int, p0: float, n1: int, p1: float) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < p0 for _ in range(n0)] + [rng.random() < p1 for _ in range(n1)]


def roundtrip(obj: DegradationDetector) -> DegradationDetector:
    return DegradationDetector.from_dict(json.loads(json.dumps(obj.to_dict(), allow_nan=False)))


# (drop, first alarm index, bound on the delay): the change is at index 5000.  Indices were
# computed once; the bounds say what they must mean (no alarm before the change, an alarm
# within a few times the expected delay after it).
@pytest.mark.parametrize(
    ("drop", "first_alarm", "max_delay"),
    [(0.03, 5864, 3000), (0.05, 5214, 1500), (0.10, 5190, 500)],
)
def test_detects_drop_after_change_point(drop: float, first_alarm: int, max_delay: int) -> None:
    xs = stream(11, 5000, 0.9, 6000, 0.9 - drop)
    det = DegradationDetector(baseline=0.9)
    alarms = det.update_many(xs)
    assert alarms[0] == first_alarm
    assert 5000 <= alarms[0] < 5000 + max_delay
    assert det.degraded


def test_null_stream_false_alarms_are_rare() -> None:
    # 100k events at the baseline: the long-run rate (<= 1 per 100k) is measured by
    # bench/detect.py; this pins the seeded behaviour.
    rng = random.Random(3)
    xs = [rng.random() < 0.9 for _ in range(100_000)]
    assert DegradationDetector(baseline=0.9).update_many(xs) == [9314, 10771]


def test_river_shape_and_read_only_flags() -> None:
    det = DegradationDetector(baseline=0.8, min_drop=0.05)
    assert det.update(True) is det
    assert det.drift_detected is False
    with pytest.raises(AttributeError):
        det.drift_detected = True  # type: ignore[misc]
    assert det.min_drop == 0.05 and det.threshold == DEFAULT_THRESHOLD
    assert det.alternatives[0] == pytest.approx(0.75)
    # drift_detected only describes the update that alarmed; degraded stays latched
    for _ in range(200):
        det.update(False)
        if det.drift_detected:
            break
    assert det.drift_detected and det.degraded
    det.update(False)
    assert not det.drift_detected and det.degraded


def test_warmup_estimates_a_conservative_baseline() -> None:
    xs = stream(5, 3000, 0.9, 3000, 0.8)
    det = DegradationDetector(warmup=500)
    assert det.warming_up and det.baseline is None
    alarms = det.update_many(xs)
    assert det.baseline is not None and 0.85 < det.baseline < 0.9  # one s.e. below the estimate
    assert alarms[0] == 3176 and alarms[0] >= 3000


def test_recovery_clears_degraded_with_hysteresis() -> None:
    xs = stream(8, 0, 0.9, 1500, 0.8) + stream(9, 0, 0.0, 6000, 0.9)
    det = DegradationDetector(baseline=0.9)
    first, cleared = None, None
    for i, x in enumerate(xs):
        det.update(x)
        if det.drift_detected and first is None:
            first = i
        if first is not None and i >= 1500 and cleared is None and not det.degraded:
            cleared = i
    assert first == 184
    # cleared only once there is evidence (log-odds 4.6) that the rate is nearer the
    # baseline than baseline - min_drop: about 1,900 events at the baseline here
    assert cleared == 3413
    assert not det.degraded and det.estimated_rate is None


def test_reset_sets_new_baseline_and_clears() -> None:
    det = DegradationDetector(baseline=0.9)
    det.update_many([False] * 100)
    assert det.degraded and det.alarms >= 1
    det.reset(baseline=0.7)
    assert det.baseline == 0.7 and not det.degraded and det.alarms == 0 and det.n_samples == 0
    det.reset()
    assert det.warming_up


def test_json_roundtrip_mid_stream_continues_identically() -> None:
    xs = stream(21, 3000, 0.85, 3000, 0.78)
    a = DegradationDetector(baseline=0.85, min_drop=0.03)
    a.update_many(xs[:2500])
    b = roundtrip(a)
    assert b.to_dict() == a.to_dict()
    assert a.update_many(xs[2500:]) == b.update_many(xs[2500:])
    assert b.to_dict() == a.to_dict()
    warm = DegradationDetector()
    warm.update_many([True, False, True])
    assert roundtrip(warm).to_dict() == warm.to_dict()


def test_invalid_parameters_and_state() -> None:
    with pytest.raises(ValueError):
        DegradationDetector(min_drop=0.5, max_drop=0.1)
    with pytest.raises(ValueError):
        DegradationDetector(grid_ratio=1.0)
    with pytest.raises(ValueError):
        DegradationDetector.from_dict({"kind": "other"})
    # a baseline of exactly 1 is clipped: log-likelihood ratios stay finite
    det = DegradationDetector(baseline=1.0)
    det.update(False)
    json.dumps(det.to_dict(), allow_nan=False)


# -- crosstalk window ---------------------------------------------------------------------


def test_window_rolls_bucketwise() -> None:
    w = CrosstalkWindow(size=100, buckets=4)  # 4 buckets of 25
    for _ in range(100):
        w.update(False)
    assert (w.n, w.acceptance) == (100, 0.0)
    for _ in range(50):
        w.update(True)
    # two oldest buckets of rejects dropped; window = 50 rejects + 50 accepts
    assert (w.n, w.accepted) == (100, 50)
    w.update(True)
    assert w.n == 76  # a new bucket evicts the oldest whole


def test_window_counts_sources_per_origin_and_hysteresis() -> None:
    w = CrosstalkWindow(size=200, buckets=4, high=0.10, low=0.04, min_events=40)
    flips = []
    for i in range(200):
        src = ("b" if i % 3 else "c") if i % 5 == 0 else None
        w.update(src is None, src, "user" if i % 2 else "auto")
        if w.drift_detected:
            flips.append(i)
    assert w.source_counts() == {"b": {"user": 13, "auto": 13}, "c": {"user": 7, "auto": 7}}
    assert w.dominant_source == "b"
    assert w.crosstalk_rate == pytest.approx(0.2)
    # Latched once: not when min_events was reached (8 flags in 40, 20 %, could still be a
    # rate of 10 % or less), but at the next flag, when the lower bound passed 10 %.
    assert w.leaking and flips == [40]
    for _ in range(100):
        w.update(True)
    assert w.crosstalk_rate == pytest.approx(0.1) and w.leaking  # upper bound > low: still on
    assert w.leak_upper > 0.04
    for _ in range(60):
        w.update(True)
    assert w.crosstalk == 0 and w.leak_upper < 0.04 and not w.leaking


def test_window_latch_needs_evidence_beyond_false_flags() -> None:
    # A high-risk window (2 %): one flag at min_events is 5 %, but proves nothing.
    w = CrosstalkWindow(size=200, buckets=10, high=0.02, low=0.01, min_events=20,
                        false_flags=0.005)
    for i in range(20):
        w.update(True, "g" if i == 0 else None, "auto")
    assert w.crosstalk_rate == pytest.approx(0.05) and not w.leaking and w.evidence_short
    # The same flags at a higher assumed false-flag rate read as less of a leak.
    lo = CrosstalkWindow(size=200, buckets=10, high=0.02, min_events=20, false_flags=0.0)
    hi = CrosstalkWindow(size=200, buckets=10, high=0.02, min_events=20, false_flags=0.01)
    for i in range(100):
        for x in (lo, hi):
            x.update(True, "g" if i % 10 == 0 else None, "auto")
    assert lo.leak_lower > hi.leak_lower > 0.02 and lo.leaking and hi.leaking
    # A clean stream flagged at the assumed false-flag rate never shows a leak.
    clean = CrosstalkWindow(size=200, buckets=10, high=0.02, min_events=20, false_flags=0.02)
    for i in range(400):
        clean.update(True, "g" if i % 50 == 0 else None, "auto")
    assert clean.leak_lower == 0.0 and not clean.leaking and not clean.evidence_short
    # A state stored without the test's parameters loads with the defaults.
    data = json.loads(json.dumps(w.to_dict()))
    del data["params"]["z"], data["params"]["false_flags"]
    old = CrosstalkWindow.from_dict(data)
    assert (old.z, old.false_flags) == (DEFAULT_LATCH_Z, DEFAULT_FALSE_FLAGS)
    assert old.crosstalk == w.crosstalk and old.evidence_short


def test_window_roundtrip_and_validation() -> None:
    w = CrosstalkWindow(size=50, buckets=5)
    for i in range(37):
        w.update(i % 4 != 0, "x" if i % 4 == 0 else None, "auto")
    w2 = CrosstalkWindow.from_dict(json.loads(json.dumps(w.to_dict())))
    assert w2.to_dict() == w.to_dict()
    w.update(True)
    w2.update(True)
    assert w2.to_dict() == w.to_dict()
    with pytest.raises(ValueError):
        w.update(True, "x", "robot")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CrosstalkWindow(high=0.1, low=0.2)
