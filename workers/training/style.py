"""Automatic style detector for crosstalk: which task's style does an output have?

A multinomial naive Bayes over character 1-3-grams, trained on each task's accepted outputs
(seed responses, accepted outputs, corrections). Pure Python, no torch: it is small, fast for
a few hundred outputs, works for any script, and round-trips through JSON.

An output of task T is crosstalk from task S when it carries one of S's explicit ``markers``
(from the suite) that is not also a marker of T, or when the detector prefers S over T by at
least ``margin`` nats (log-likelihood ratio).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from storage.suite import Suite

NGRAMS = (1, 2, 3)


def char_ngrams(text: str, sizes: Sequence[int] = NGRAMS) -> Counter[str]:
    padded = f"\x02{text}\x03"  # boundaries make openings/endings distinctive
    grams: Counter[str] = Counter()
    for n in sizes:
        for i in range(len(padded) - n + 1):
            grams[padded[i : i + n]] += 1
    return grams


class StyleDetector:
    """Naive Bayes over character n-grams with Laplace smoothing ``alpha``."""

    def __init__(self, counts: Mapping[str, Mapping[str, int]], alpha: float = 0.5) -> None:
        self.alpha = alpha
        self.counts = {t: dict(c) for t, c in counts.items()}
        self.totals = {t: sum(c.values()) for t, c in self.counts.items()}
        self.vocab = len({g for c in self.counts.values() for g in c}) + 1

    @classmethod
    def fit(cls, texts_by_task: Mapping[str, Sequence[str]], alpha: float = 0.5) -> StyleDetector:
        counts: dict[str, Counter[str]] = {}
        for task, texts in texts_by_task.items():
            c: Counter[str] = Counter()
            for text in texts:
                c.update(char_ngrams(text))
            counts[task] = c
        return cls(counts, alpha)

    def log_scores(self, text: str) -> dict[str, float]:
        """Log-likelihood of ``text`` under each task's n-gram model (uniform prior)."""
        grams = char_ngrams(text)
        out: dict[str, float] = {}
        for task, c in self.counts.items():
            denom = math.log(self.totals[task] + self.alpha * self.vocab)
            out[task] = sum(
                k * (math.log(c.get(g, 0) + self.alpha) - denom) for g, k in grams.items()
            )
        return out

    def predict(self, text: str) -> str | None:
        scores = self.log_scores(text)
        return max(sorted(scores), key=lambda t: scores[t]) if scores else None

    def leak_source(self, text: str, task: str, *, margin: float) -> str | None:
        """The other task whose style ``text`` has, by at least ``margin`` nats, else None."""
        scores = self.log_scores(text)
        if task not in scores or not text.strip():
            return None
        best = max(sorted(scores), key=lambda t: scores[t])
        if best != task and scores[best] - scores[task] >= margin:
            return best
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleDetector:
        return cls(data["counts"], float(data.get("alpha", 0.5)))


def build_detector(suite: Suite, extra: Mapping[str, Sequence[str]] | None = None) -> StyleDetector:
    """Style detector over every suite task: seed responses + ``extra`` accepted outputs."""
    texts = {t: [e.response for e in suite.seed_examples(t)] for t in suite.tasks}
    for task, more in (extra or {}).items():
        if task in texts:
            texts[task] = texts[task] + list(more)
    return StyleDetector.fit(texts)


def suite_markers(suite: Suite) -> dict[str, list[str]]:
    """Every task's explicit style ``markers``, the mapping ``crosstalk_source`` takes."""
    return {t: list(s.markers) for t, s in suite.tasks.items()}


def marker_source(
    text: str, task: str, markers: Mapping[str, Sequence[str]]
) -> str | None:
    """The first other task (by name) one of whose own markers appears in ``text``."""
    own = set(markers.get(task, ()))
    for other in sorted(markers):
        if other == task:
            continue
        if any(m and m not in own and m in text for m in markers[other]):
            return other
    return None


def crosstalk_source(
    text: str, task: str, *, detector: StyleDetector | None,
    markers: Mapping[str, Sequence[str]], margin: float,
) -> str | None:
    """Explicit markers first (they are the suite's ground truth), then the detector."""
    source = marker_source(text, task, markers)
    if source is None and detector is not None:
        source = detector.leak_source(text, task, margin=margin)
    return source
