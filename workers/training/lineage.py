"""Where a training job's LoRA weights start: its adapter's served version, its parent's, or
fresh weights (and why). Split from ``job.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage.artifacts import ArtifactError, read_meta
from storage.models import Adapter
from workers.training.base_model import build_mismatch

log = logging.getLogger("adaptd.training")


def init_source(
    params: Mapping[str, Any], row: Adapter | None, adapter: str,
    routes: Mapping[str, Mapping[str, Any]], kind: str, tasks: list[str], build: str,
) -> tuple[Path | None, int | None]:
    """(LoRA weights to continue from, parent version of this adapter).

    ``params["init"]``: ``production`` (default: this adapter's served version), ``parent``
    (the parent adapter's served version) or ``fresh`` (default for forks). A task is forked
    because its parent's mixture leaks into it or hurts it, and the parent's weights carry
    that: a high-risk fork continued from a holiday-skewed parent answered 11-12 % of requests
    in a cheerful co-task's style after its first 100 steps, from fresh weights 8.5-10 %
    on the builtin festive-zh suite.

    ``production`` starts fresh instead when the served version was trained on a task this
    job no longer trains (it was forked out): continuing from those weights would keep
    serving that task's style to the tasks left behind, and a few hundred steps on the
    remaining mixture do not unlearn it.

    Either starts fresh from a version trained on another base build: its weights do not fit
    this base, and failing would fail every job of the adapter until someone retrains it.
    """
    own = [int(r["version"]) for r in routes.values() if r["adapter"] == adapter]
    parent = max(own) if own else None
    mode = params.get("init") or ("fresh" if kind == "fork" else "production")
    source = adapter if mode == "production" else (row.parent if row is not None else None)
    if mode == "fresh" or source is None:
        return None, parent
    served = [r for r in routes.values() if r["adapter"] == source]
    if not served:
        return None, parent
    best = Path(max(served, key=lambda r: int(r["version"]))["path"])
    lost = lost_tasks(best, tasks) if mode == "production" else []
    if lost:
        log.info("%s: training from fresh LoRA weights: the served %s learnt %s, which "
                 "left the adapter", adapter, best.name, ", ".join(lost))
        return None, parent
    if why := build_mismatch(best, build):
        log.warning("%s: training from fresh LoRA weights: %s", adapter, why)
        return None, parent
    return best, parent


def lost_tasks(version: Path, tasks: list[str]) -> list[str]:
    """Tasks ``version`` was trained on that are not in ``tasks`` (unreadable meta: none)."""
    try:
        trained = read_meta(version).get("tasks") or []
    except ArtifactError:
        return []
    return sorted(set(trained) - set(tasks))
