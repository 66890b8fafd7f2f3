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
