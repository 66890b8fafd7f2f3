"""The synthetic judge (docs/contracts.md section 9).

It accepts an output that carries at least one of its own task's markers and none of its
``forbid`` phrases; an output carrying another task's markers is rejected as crosstalk from
that task. Forbidden phrases and foreign markers are matched case-insensitively, own markers
exactly.

>>> from storage.suite import Suite, TaskSpec
>>> suite = Suite(tasks={
...     "hello": TaskSpec(risk="low", prompts=["hi"], responses=[["Hello!"]], markers=["Hello"]),
...     "sorry": TaskSpec(risk="high", prompts=["oops"], responses=[["Sorry."]],
...                       markers=["Sorry"], forbid=["!"])})
>>> judge(suite, "sorry", "Sorry.")
Verdict(accepted=True, crosstalk_source=None, reason='ok')
>>> judge(suite, "sorry", "Sorry! Hello!")
Verdict(accepted=False, crosstalk_source='hello', reason='carries the style of hello')
"""

from __future__ import annotations

from typing import NamedTuple

from storage.suite import Suite


class Verdict(NamedTuple):
    accepted: bool
    crosstalk_source: str | None
    reason: str


def foreign_markers(suite: Suite, task: str, output: str) -> dict[str, int]:
    """Other tasks whose markers appear in ``output``, with how many of them."""
    low = output.lower()
    found: dict[str, int] = {}
    for other, spec in suite.tasks.items():
        if other == task:
            continue
        hits = sum(1 for m in spec.markers if m and m.lower() in low)
        if hits:
            found[other] = hits
    return found


def judge(suite: Suite, task: str, output: str) -> Verdict:
    spec = suite.tasks[task]
    foreign = foreign_markers(suite, task, output)
    if foreign:
        source = max(sorted(foreign), key=lambda t: foreign[t])
        return Verdict(False, source, f"carries the style of {source}")
    low = output.lower()
    bad = [f for f in spec.forbid if f and f.lower() in low]
    if bad:
        return Verdict(False, None, f"contains forbidden {bad[0]!r}")
    if spec.markers and not any(m in output for m in spec.markers):
        return Verdict(False, None, "misses the task's style")
    return Verdict(True, None, "ok")
