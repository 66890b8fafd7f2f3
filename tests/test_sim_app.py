"""The app simulator's random streams: one seed serves the same requests whatever is judged.

Two policies are compared on one seed (``bench/loop.py``). If the judge's verdicts fed back
into which task or prompt comes next, the two runs would serve different requests after the
first answer they judge differently, and a per-task difference would mix the policies' effect
with a different sample. Here two simulators with the same seed post to a real API, one whose
answers are all accepted and one whose answers are all rejected (so only the second draws
users' edits): they must still ask the same tasks with the same prompts and sampling seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from daemon.sim.app import AppSimulator, Tally
from storage.suite import load_suite
from tests.conftest import LiveServer
from tests.helpers import SECRET


class Scripted:
    """Answers every request with the task's first seed response, or with nothing; records
    the sampling seed of every call (the model server's edge, not what is under test)."""

    def __init__(self, suite: Any, *, good: bool):
        self.suite, self.good = suite, good
        self.seeds: list[int] = []

    def generate(self, task: str, prompts: Sequence[str], *, adapter: str | None = None,
                 version: int | None = None, path: Path | None = None,
                 sha256: str | None = None, **kwargs: Any) -> list[str]:
        self.seeds.append(kwargs["seed"])
        answer = self.suite.seed_examples(task, seed=0)[0].response if self.good else ""
        return [answer] * len(prompts)


def test_same_seed_same_requests_whatever_the_verdicts(live_api: LiveServer) -> None:
    suite = load_suite("builtin:festive-zh")
    traffic = {t: 1.0 for t in suite.tasks}
    runs = []
    for good in (True, False):
        gen = Scripted(suite, good=good)
        with httpx.Client(timeout=30) as http:
            app = AppSimulator(suite=suite, url=live_api.url, secret=SECRET, generator=gen,
                               seed=5, edit_share=0.5, http=http)
            tallies: dict[str, Tally] = {}
            events = app.step(traffic, 40, tallies) + app.step(traffic, 40, tallies)
        runs.append((events, gen.seeds, tallies))
    (good_events, good_seeds, good_tally), (bad_events, bad_seeds, bad_tally) = runs
    # The verdicts really differed, and the rejected run drew edits from its users' stream.
    assert all(t.accepted == t.events for t in good_tally.values())
    assert all(t.accepted == 0 for t in bad_tally.values())
    assert not any("correction" in e for e in good_events)
    assert any("correction" in e for e in bad_events)
    # Yet both served the very same requests with the very same sampling seeds.
    assert [(e["task"], e["prompt"]) for e in good_events] == \
        [(e["task"], e["prompt"]) for e in bad_events]
    assert len(good_seeds) >= 2 and good_seeds == bad_seeds
    assert len({e["task"] for e in good_events}) == len(suite.tasks)
