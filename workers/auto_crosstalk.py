"""The automatic half of the live crosstalk signal (user flags plus an automatic style
detector).

Users rarely say *which* task's style leaked, and often accept a slightly odd answer. So
every output nobody flagged is checked by the same detector the training eval uses
(``workers/training/style.py``, pure Python): the suite's explicit markers first, then a
character n-gram naive Bayes that must prefer another task by ``margin`` nats. A hit enters
the task's window as crosstalk of origin ``auto`` and is counted in
``adaptd_crosstalk_events_total{origin="auto"}``.

The detector is fitted on the suite's seed responses plus the newest accepted outputs. A fit
takes a tenth of a second or two, too much for every tick of a 1 s interval, so a worker
process keeps it per database and suite and refits once the accepted data grew by a tenth
or the fit is ``REFIT_AFTER_S`` old.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from storage.suite import Suite
from workers.training.data import accepted_texts
from workers.training.style import (
    StyleDetector,
    build_detector,
    crosstalk_source,
    suite_markers,
)

REFIT_AFTER_S = 600.0
REFIT_GROWTH = 0.1

AutoSource = Callable[[str, str], str | None]  # (task, output) -> source task or None


@dataclass(frozen=True)
class _Fit:
    detector: StyleDetector
    accepted: int  # accepted outputs in SQL when it was fitted
    at: float


_fits: dict[tuple[str, str], _Fit] = {}


def style_detector(session: Session, suite: Suite, *, accepted: int,
                   now: float | None = None) -> StyleDetector:
    """The fitted detector for this database and suite (refitted when stale, see above).
    ``accepted``: accepted outputs and corrections in SQL now (the tick counts them anyway)."""
    now = time.monotonic() if now is None else now
    key = (str(session.get_bind().engine.url), suite.name)
    fit = _fits.get(key)
    # abs(): a clock that went back (a database moved between wall and event clock) refits.
    if fit is None or accepted > fit.accepted * (1 + REFIT_GROWTH) or abs(now - fit.at) > REFIT_AFTER_S:
        detector = build_detector(suite, accepted_texts(session, list(suite.tasks)))
        fit = _fits[key] = _Fit(detector, accepted, now)
    return fit.detector


def auto_source(session: Session, suite: Suite, *, margin: float, accepted: int,
                now: float | None = None) -> AutoSource:
    """A function telling which other task's style an output of ``task`` carries, if any.
    ``now``: the policy's clock, which decides when the fit is too old (default: monotonic)."""
    detector = style_detector(session, suite, accepted=accepted, now=now)
    markers = suite_markers(suite)

    def source(task: str, output: str) -> str | None:
        if task not in suite.tasks:
            return None
        return crosstalk_source(output, task, detector=detector, markers=markers, margin=margin)

    return source
