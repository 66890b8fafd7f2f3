"""How the simulated users give feedback (docs/contracts.md section 9, ``feedback:``).

Production feedback is sparse, noisy, late and mostly silent: a few percent of answers are
rated, some good answers are rejected and some bad ones accepted, few crosstalk rejects say
which task's style leaked, and ratings land long after the answer, out of order. A scenario's
``feedback`` block says how much of each; the default is the perfect user (every answer
rated at once, no noise, every crosstalk reject naming its source).

The model draws the same four uniforms for every answer whatever the judge said, on its own
random stream, so two policies run on one seed rate the very same answers with the very
same delays, and their figures compare answer for answer (see ``daemon/sim/app.py``).
"""

from __future__ import annotations

import heapq
import random
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, field_validator

from daemon.sim.judge import Verdict

__all__ = ["FeedbackModel", "FeedbackSpec", "Pending", "Rating"]


class FeedbackSpec(BaseModel):
    """A scenario's ``feedback:`` block."""

    model_config = ConfigDict(extra="forbid")
    rated: float = 1.0  # share of answers a user rates
    false_reject: float = 0.0  # share of good answers rejected anyway
    false_accept: float = 0.0  # share of bad answers accepted anyway
    names_source: float = 1.0  # share of crosstalk rejects that carry crosstalk_source
    delay: int = 0  # a rating lands up to this many requests after its answer
    post_unrated: bool = False  # the app posts every other served answer as "unrated"

    @field_validator("rated", "false_reject", "false_accept", "names_source")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a share of answers must be between 0 and 1, got {value}")
        return value

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"a delay in requests must be 0 or more, got {value}")
        return value


class Rating(NamedTuple):
    """What a user posted about one answer."""

    accepted: bool
    crosstalk_source: str | None
    delay: int  # requests after the answer that the rating lands


class FeedbackModel:
    """Seeded users: which answers get rated, with what verdict, and when.

    >>> spec = FeedbackSpec(rated=1.0, false_reject=1.0, names_source=0.0, delay=5)
    >>> users = FeedbackModel(spec, seed=1)
    >>> users.rate(Verdict(True, None, "ok")).accepted  # every good answer rejected
    False
    >>> users.rate(Verdict(False, "greeting", "carries the style of greeting")).crosstalk_source
    >>> 0 <= users.rate(Verdict(True, None, "ok")).delay <= 5
    True
    >>> FeedbackModel(FeedbackSpec(rated=0.0), seed=1).rate(Verdict(True, None, "ok"))
    """

    def __init__(self, spec: FeedbackSpec, seed: int):
        self.spec = spec
        self.rng = random.Random(f"{seed}/feedback")

    def rate(self, verdict: Verdict) -> Rating | None:
        """The rating a user gives an answer the judge found ``verdict``; None: unrated."""
        s = self.spec
        u_rated, u_noise, u_name, u_delay = (self.rng.random() for _ in range(4))
        if u_rated >= s.rated:
            return None
        delay = min(s.delay, int(u_delay * (s.delay + 1)))
        if verdict.accepted:
            return Rating(u_noise >= s.false_reject, None, delay)
        if u_noise < s.false_accept:
            return Rating(True, None, delay)
        named = verdict.crosstalk_source if u_name < s.names_source else None
        return Rating(False, named, delay)


class Pending:
    """Ratings on their way: each lands once, in the order of the request it lands at.

    >>> p = Pending()
    >>> p.push(7, {"id": "a"}); p.push(3, {"id": "b"}); p.push(3, {"id": "c"})
    >>> [(at, e["id"]) for at, e in p.due(5)], len(p)
    ([(3, 'b'), (3, 'c')], 1)
    >>> [e["id"] for e in p.flush()], len(p)
    (['a'], 0)
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, dict[str, Any]]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, lands_at: int, event: dict[str, Any]) -> None:
        heapq.heappush(self._heap, (lands_at, self._seq, event))
        self._seq += 1

    def due(self, served: int) -> list[tuple[int, dict[str, Any]]]:
        """Ratings landing at request index ``served`` or before, taken off the queue, with
        the request index each lands at."""
        out = []
        while self._heap and self._heap[0][0] <= served:
            at, _, event = heapq.heappop(self._heap)
            out.append((at, event))
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Every rating still on its way (the run ends: late ratings land now)."""
        out = [e for _, _, e in sorted(self._heap)]
        self._heap.clear()
        return out
