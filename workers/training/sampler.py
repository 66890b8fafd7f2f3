"""Mixture ratios and the batch sampler.

Every batch's composition follows the ratios exactly up to rounding: the sampler keeps, per
stage, how many draws each source got and always gives the next slot to the source furthest
below its share (smooth weighted round-robin), so after N draws every source has
``ratio * N`` draws within one. Which example a source yields is random (seeded), cycling
through a fresh permutation per epoch. The whole state is a small JSON dict, so a resumed run
draws exactly what the uninterrupted run would have drawn.

Sources are task names, ``<task>#neg`` (the task's rejected outputs, for the unlikelihood
term) and ``_general`` (retained general data).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from policies.ratios import RatioConfig, prior_ratios
from workers.training.config import StageKind

GENERAL = "_general"  # pseudo-task of general data; cannot clash (task names start a-z)
NEG_SUFFIX = "#neg"


def default_ratios(sizes: Mapping[str, int], cfg: RatioConfig | None = None) -> dict[str, float]:
    """The engine's prior over these data sizes (``policies.prior_ratios``): a job without
    ratios trains on what the policy engine would give the adapter's first version."""
    return prior_ratios(sizes, cfg)


def source_ratios(
    task_ratios: Mapping[str, float], *, general_share: float, negative_share: float,
    has_negatives: Mapping[str, bool], has_general: bool,
) -> dict[str, float]:
    """Split task ratios into sources: general carved out first, then each task's negatives."""
    g = general_share if has_general else 0.0
    total = sum(task_ratios.values()) or 1.0
    out: dict[str, float] = {}
    for task, r in task_ratios.items():
        share = (1.0 - g) * r / total
        ns = negative_share if has_negatives.get(task) else 0.0
        out[task] = share * (1.0 - ns)
        if ns:
            out[task + NEG_SUFFIX] = share * ns
    if g:
        out[GENERAL] = g
    return {k: v for k, v in out.items() if v > 0}


def stage_task_ratios(
    kind: StageKind, task_ratios: Mapping[str, float], *, step_in_stage: int, stage_len: int,
    hard_tasks: Sequence[str] = (),
) -> dict[str, float]:
    """The task ratios one step of a stage uses.

    ``mixed``: the ratios. ``per_task``: the step's block task only, blocks sized by ratio so
    the stage's totals still follow the ratios. ``hard``: ratios restricted to ``hard_tasks``.
    """
    if kind == "mixed" or not task_ratios:
        return dict(task_ratios)
    if kind == "per_task":
        total = sum(task_ratios.values()) or 1.0
        point = (step_in_stage + 0.5) / max(stage_len, 1)
        acc = 0.0
        for task in sorted(task_ratios):
            acc += task_ratios[task] / total
            if point < acc:
                return {task: 1.0}
        return {sorted(task_ratios)[-1]: 1.0}
    picked = {t: r for t, r in task_ratios.items() if t in hard_tasks} or dict(task_ratios)
    return picked


class MixtureSampler:
    """Deterministic-composition, seeded-content sampler over named pools."""

    def __init__(self, pool_sizes: Mapping[str, int], *, seed: int) -> None:
        self.sizes = {k: v for k, v in pool_sizes.items() if v > 0}
        self.seed = seed
        self.counts: dict[str, dict[str, int]] = {}  # stage key -> source -> draws
        self.cursor: dict[str, list[int]] = {}  # source -> [epoch, position]
        self._perms: dict[tuple[str, int], list[int]] = {}

    # -- composition ---------------------------------------------------------------------------

    def plan(self, stage: str, ratios: Mapping[str, float], n: int) -> list[str]:
        """The sources of the next ``n`` draws of ``stage`` under ``ratios``."""
        usable = {s: r for s, r in ratios.items() if r > 0 and self.sizes.get(s, 0) > 0}
        if not usable:
            raise ValueError(f"no data for any source of {sorted(ratios)}")
        total_r = sum(usable.values())
        counts = self.counts.setdefault(stage, {})
        out: list[str] = []
        for _ in range(n):
            done = sum(counts.values()) + 1
            # The source furthest below its share of the draws so far (ties: by name).
            src = max(sorted(usable), key=lambda s: usable[s] / total_r * done - counts.get(s, 0))
            counts[src] = counts.get(src, 0) + 1
            out.append(src)
        return out

    # -- content -------------------------------------------------------------------------------

    def draw(self, source: str) -> int:
        """Index of the next example of ``source`` (a new permutation every epoch)."""
        epoch, pos = self.cursor.get(source, [0, 0])
        size = self.sizes[source]
        if pos >= size:
            epoch, pos = epoch + 1, 0
        perm = self._perm(source, epoch, size)
        self.cursor[source] = [epoch, pos + 1]
        return perm[pos]

    def _perm(self, source: str, epoch: int, size: int) -> list[int]:
        cached = self._perms.get((source, epoch))
        if cached is not None:
            return cached
        if len(self._perms) > 64:
            self._perms.clear()
        digest = hashlib.sha256(f"{self.seed}:{source}:{epoch}".encode()).digest()
        order = list(range(size))
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
        self._perms[(source, epoch)] = order
        return order

    # -- resume --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"counts": self.counts, "cursor": self.cursor}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.counts = {k: dict(v) for k, v in state.get("counts", {}).items()}
        self.cursor = {k: list(v) for k, v in state.get("cursor", {}).items()}
