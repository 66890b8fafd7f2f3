"""``python -m bench.detect --calibrate``: false alarms of the degradation detector against
threshold and baseline, on a vectorised twin of ``policies.DegradationDetector`` (checked to
alarm at the same indices as the class)."""

from __future__ import annotations

import argparse
import math

import numpy as np
from numpy.typing import NDArray

from policies.detectors import DegradationDetector

SEGMENT = 100_000
Bools = NDArray[np.bool_]


def adaptd_alarms(x: Bools, p0: float) -> list[int]:
    det = DegradationDetector(baseline=p0)
    return [i for i, v in enumerate(x.tolist()) if det.update(v).drift_detected]


def check_twin(x: Bools, p0: float) -> None:
    """The vectorised twin used by --calibrate must alarm exactly where the class does."""
    det = DegradationDetector(baseline=p0)
    got = twin_alarms(x[None, :], det.components, det.threshold)[0]
    want = adaptd_alarms(x, p0)
    if got != want:
        raise SystemExit(f"vectorised twin diverges from the class: {got[:5]} vs {want[:5]}")


def twin_alarms(x: Bools, comps: list[tuple[float, float, float]], threshold: float) -> list[list[int]]:
    """``DegradationDetector.update`` vectorised over the rows of ``x`` (same arithmetic)."""
    acc = np.array([c[1] for c in comps])
    rej = np.array([c[2] for c in comps])
    limit = len(comps) * math.exp(threshold)
    r = np.zeros((x.shape[0], len(comps)))
    out: list[list[int]] = [[] for _ in range(x.shape[0])]
    for t in range(x.shape[1]):
        r = (1.0 + r) * np.where(x[:, t, None], acc, rej)
        hit = r.sum(axis=1) >= limit
        if hit.any():
            for i in np.flatnonzero(hit):
                out[i].append(t)
            r[hit] = 0.0
    return out


def calibrate(args: argparse.Namespace) -> None:
    """False alarms per 100k of the default grid for several baselines and thresholds.

    Vectorised twin of the class (checked to alarm at the same indices), rows x 30,000
    events per cell, alarms in the first 5,000 events of a row not counted (steady state).
    """
    rng = np.random.default_rng(args.seed)
    check_twin(rng.random(20_000) < 0.9, 0.9)
    rows, length, burn = args.calibrate_rows, 30_000, 5_000
    print(f"{'p0':>5} " + " ".join(f"h={h:<6.3g}" for h in args.thresholds))
    for p0 in args.baselines:
        x = rng.random((rows, length)) < p0
        cells = []
        for h in args.thresholds:
            comps = DegradationDetector(baseline=p0, threshold=h).components
            n = sum(sum(1 for t in a if t >= burn) for a in twin_alarms(x, comps, h))
            cells.append(f"{n / (rows * (length - burn)) * SEGMENT:<8.2f}")
        print(f"{p0:>5} " + " ".join(cells), flush=True)


# -- the crosstalk latch (policies.windows.CrosstalkWindow) --------------------------------

# (label, window size, buckets, min_events): production's defaults and the simulation's.
LATCH_WINDOWS = (("production", 500, 10, 50), ("simulation", 200, 10, 20))
LATCH_Z = (1.64, 1.96, 2.33, 2.58, 3.09)


def latch_kmin(size: int, high: float, z: float, false_flags: float) -> NDArray[np.int64]:
    """Per window count n (index), the fewest flags whose leak lower bound exceeds ``high``
    (``size + 1``: none does)."""
    from policies.signals import leak_bounds

    out = np.full(size + 1, size + 1, dtype=np.int64)
    for n in range(1, size + 1):
        for k in range(n + 1):
            if leak_bounds(k, n, z, false_flags)[0] > high:
                out[n] = k
                break
    return out


def latch_hits(x: Bools, size: int, buckets: int, min_events: int,
               kmin: NDArray[np.int64]) -> list[int]:
    """Where ``CrosstalkWindow`` (reset after each latch, as a promotion resets it) latches
    on flags ``x``: the window's bucket arithmetic, vectorised between latches."""
    bs = max(1, size // buckets)
    out: list[int] = []
    start = 0
    span = 2048  # look this far past a reset first, further only when nothing latched
    while start < len(x):
        seg = x[start:start + span].astype(np.int64)
        t = np.arange(1, len(seg) + 1)
        first = np.maximum(0, (t - 1) // bs - buckets + 1) * bs  # oldest bucket kept
        cs = np.concatenate(([0], np.cumsum(seg)))
        n = t - first
        k = cs[t] - cs[first]
        hit = np.flatnonzero((n >= min_events) & (k >= kmin[n]))
        if not len(hit):
            if start + span >= len(x):
                break
            span *= 8
            continue
        out.append(start + int(hit[0]))
        start += int(hit[0]) + 1
        span = 2048
    return out


def fresh_latch_probability(size: int, min_events: int, kmin: NDArray[np.int64],
                            q: float) -> float:
    """Exact probability that a fresh window (after a promotion) latches within its first
    ``size`` checked answers when each is flagged with probability ``q``: until then the
    window holds every answer since the reset, so its flag count is a binomial walk."""
    dist = np.zeros(size + 2)
    dist[0] = 1.0
    latched = 0.0
    for t in range(1, size + 1):
        dist[1:] = dist[1:] * (1 - q) + dist[:-1] * q
        dist[0] *= 1 - q
        if t >= min_events and kmin[t] <= size:
            latched += float(dist[kmin[t]:].sum())
            dist[kmin[t]:] = 0.0
    return latched


def class_hits(x: Bools, size: int, buckets: int, min_events: int, high: float, z: float,
               false_flags: float) -> list[int]:
    from policies.windows import CrosstalkWindow

    w = CrosstalkWindow(size=size, buckets=buckets, high=high, min_events=min_events, z=z,
                        false_flags=false_flags)
    out = []
    for i, v in enumerate(x.tolist()):
        if w.update(True, "src" if v else None, "auto").drift_detected:
            out.append(i)
            w.reset()
    return out


def calibrate_latch(args: argparse.Namespace) -> None:
    """False latches of the crosstalk window on clean streams, and its delay on leaks.

    A clean stream flags each answer with probability ``q`` (the evidence's false flags: the
    window assumes ``DEFAULT_FALSE_FLAGS``, the stream may flag more); after each latch the
    window restarts, as the promotion of a retrain would restart it. Rows of 100,000
    checked answers; a leak row flags ``f + (1 - f) * leak`` of its answers from the start.
    """
    from policies.config import DEFAULT_RISK
    from policies.windows import DEFAULT_FALSE_FLAGS

    rng = np.random.default_rng(args.seed)
    f = DEFAULT_FALSE_FLAGS
    high = DEFAULT_RISK["high"].crosstalk_on
    probe = rng.random(30_000) < 0.02
    for _, size, buckets, mn in LATCH_WINDOWS:
        km = latch_kmin(size, high, 1.64, f)
        if latch_hits(probe, size, buckets, mn, km) != class_hits(probe, size, buckets, mn,
                                                                  high, 1.64, f):
            raise SystemExit("vectorised latch twin diverges from CrosstalkWindow")
    rows, length = args.calibrate_rows // 10 or 1, 100_000
    flag_rates = (0.0, f, 2 * f, 4 * f)
    print(f"high-risk latch (crosstalk_on {high:.0%}, false_flags {f:.1%}): false latches per "
          f"100k checked answers at flag rate q, in steady state and (exact) per fresh window "
          f"in its first `size` answers; median answers to latch on a 5 % / 10 % leak")
    print(f"{'window':>11} {'z':>5} " + " ".join(f"q={q:<6.3%}" for q in flag_rates)
          + " " + " ".join(f"fresh q={q:<6.3%}" for q in flag_rates[1:]) + "  leak 5%  leak 10%")
    for label, size, buckets, mn in LATCH_WINDOWS:
        for z in LATCH_Z:
            km = latch_kmin(size, high, z, f)
            cells = []
            for q in flag_rates:
                hits = sum(len(latch_hits(rng.random(length) < q, size, buckets, mn, km))
                           for _ in range(rows))
                cells.append(f"{hits / (rows * length) * SEGMENT:<8.2f}")
            cells += [f"{fresh_latch_probability(size, mn, km, q):<14.2e}" for q in flag_rates[1:]]
            delays = []
            for leak in (0.05, 0.10):
                q = f + (1 - f) * leak
                d = [next(iter(latch_hits(rng.random(5_000) < q, size, buckets, mn, km)), 5_000)
                     for _ in range(200)]
                delays.append(f"{np.median(d) + 1:>7.0f}")
            print(f"{label:>11} {z:>5} " + " ".join(cells) + "  " + "  ".join(delays),
                  flush=True)
