"""Candidate vs production, side by side, on one base model in memory.

The candidate is the PeftModel's ``default`` adapter. Each task's production is what the
routing table serves for it now (possibly another adapter, e.g. after a fork); production
versions are loaded as extra adapters into the same model, evaluated on their tasks, and
removed again. A task with no route (first training), or whose production is unusable
(corrupted, or trained on another base build), is compared against the bare base model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from storage.artifacts import ArtifactError, verify_version
from storage.suite import Suite
from workers.training.base_model import check_build, quiet_peft
from workers.training.config import EvalConfig
from workers.training.data import DataBundle
from workers.training.evaluate import Scorer, compare, evaluate_model
from workers.training.style import StyleDetector

log = logging.getLogger("adaptd.training")
CANDIDATE = "default"


def side_by_side(
    model: Any, tokenizer: Any, data: DataBundle, suite: Suite, *, tasks: Sequence[str],
    routes: Mapping[str, Mapping[str, Any]], detector: StyleDetector | None,
    cfg: EvalConfig | None = None, scorer: Scorer | None = None, build: str,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``{"candidate": ..., "production": ..., "compare": ..., "production_routes": ...}``.

    ``build``: the loaded base build; production versions trained on another are not loaded.
    ``progress`` hears ``{"done": n, "total": 2 * len(tasks)}``: each task evaluated on
    each side.
    """
    done, total = 0, 2 * len(tasks)

    def tick(event: Mapping[str, Any] | None = None) -> None:
        nonlocal done
        done += event is not None
        if progress is not None:
            progress({"done": done, "total": total})

    tick()
    model.set_adapter(CANDIDATE)
    candidate = evaluate_model(model, tokenizer, data, suite, tasks=tasks, detector=detector,
                               cfg=cfg, scorer=scorer, progress=tick)
    production: dict[str, Any] = {"tasks": {}}
    groups: dict[tuple[str, int] | None, list[str]] = {}
    for task in tasks:
        r = routes.get(task)
        groups.setdefault(None if r is None else (r["adapter"], int(r["version"])), []).append(task)
    general_from: tuple[str, int] | None = None
    for key, members in groups.items():
        if key is not None:
            route = routes[members[0]]
            name = f"prod-{key[0]}-v{key[1]}"
            try:
                verify_version(Path(route["path"]), route.get("sha256"))
                check_build(Path(route["path"]), build)
                with quiet_peft():
                    model.load_adapter(str(route["path"]), adapter_name=name)
            except (ArtifactError, OSError, ValueError) as exc:
                log.warning("production %s@%s unusable (%s); comparing with the base model",
                            key[0], key[1], exc)
                key = None
        # General retention is measured against the production that serves most tasks.
        with_general = general_from is None and len(members) == max(map(len, groups.values()))
        if key is None:
            with model.disable_adapter():
                res = evaluate_model(model, tokenizer, data, suite, tasks=members,
                                     detector=detector, cfg=cfg, scorer=scorer,
                                     with_general=with_general, progress=tick)
        else:
            model.set_adapter(name)
            res = evaluate_model(model, tokenizer, data, suite, tasks=members, detector=detector,
                                 cfg=cfg, scorer=scorer, with_general=with_general,
                                 progress=tick)
            model.set_adapter(CANDIDATE)
            model.delete_adapter(name)
        if key is None:
            for stats in res["tasks"].values():
                stats["baseline"] = "base"
        production["tasks"].update(res["tasks"])
        if with_general:
            general_from = key or ("base", 0)
            production["general_loss"] = res.get("general_loss")
    model.set_adapter(CANDIDATE)
    return {
        "candidate": candidate,
        "production": production,
        "compare": compare(candidate, production),
        "production_routes": {t: ({"adapter": r["adapter"], "version": int(r["version"])}
                                  if (r := routes.get(t)) else None) for t in tasks},
    }
