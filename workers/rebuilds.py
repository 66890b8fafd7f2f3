"""Adapters still serving versions trained on another base build, and the retrain they need.

A version's LoRA weights only fit the base build they were trained on (``base_build`` in
``adaptd.json``, see ``workers/training/base_model.py``). After the base is rebuilt (a new
``builtin:tiny`` recipe, edited suite texts, a new hub snapshot), the server refuses such a
version with a clear error, and its tasks stay broken until their adapter trains again. The
policy tick asks :func:`stale_adapters` which served adapters that concerns and queues one
retrain for each (the job starts from fresh LoRA weights and compares its candidate with the
bare base, since the old production version cannot be loaded). Split from ``policy.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.artifacts import ArtifactError, read_meta
from workers.training.encode import PROMPT_FORMAT, recorded_format


@dataclass(frozen=True)
class StaleAdapter:
    adapter: str
    version: int
    build: str  # the build the served version was trained on
    tasks: tuple[str, ...]  # the tasks routed to it
    prompt_format: int = PROMPT_FORMAT  # the prompt format it was trained with

    def reason(self, current: str) -> str:
        if self.prompt_format != PROMPT_FORMAT:
            return (f"prompt format changed: {self.adapter} serves v{self.version}, trained "
                    f"with prompt format {self.prompt_format}; adaptd now builds format "
                    f"{PROMPT_FORMAT}, so {', '.join(self.tasks)} cannot be served until it "
                    f"retrains")
        return (f"base rebuilt: {self.adapter} serves v{self.version}, trained on base build "
                f"{self.build!r}; the base is now {current!r}, so {', '.join(self.tasks)} "
                f"cannot be served until it retrains")


def stale_adapters(routes: Mapping[str, Mapping[str, Any]], current: str) -> list[StaleAdapter]:
    """Served adapters whose routed version records a base build other than ``current``, or
    was trained with another prompt format (``encode.PROMPT_FORMAT``; none recorded: 1).

    ``routes`` is the routing table (task -> adapter, version, path). A version whose meta
    cannot be read or records no build is left alone (unless its format differs): the server
    reports the first, and the second predates recorded builds (it loads with a warning).

    >>> import json, tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, build, fmt in [("old", "tiny-aaa", 1), ("new", "tiny-bbb", 1),
    ...                          ("fmt", "tiny-bbb", 0)]:
    ...     _ = (root / name).mkdir(), (root / name / "adaptd.json").write_text(
    ...         json.dumps({"base_build": build, "prompt_format": fmt}))
    >>> routes = {"apology": {"adapter": "shared", "version": 3, "path": str(root / "old")},
    ...           "thanks": {"adapter": "shared", "version": 3, "path": str(root / "old")},
    ...           "praise": {"adapter": "praise", "version": 1, "path": str(root / "new")},
    ...           "greeting": {"adapter": "hello", "version": 2, "path": str(root / "gone")},
    ...           "wish": {"adapter": "wish", "version": 4, "path": str(root / "fmt")}}
    >>> stale = stale_adapters(routes, "tiny-bbb")
    >>> [(s.adapter, s.version, s.build, s.tasks, s.prompt_format) for s in stale]
    [('shared', 3, 'tiny-aaa', ('apology', 'thanks'), 1), ('wish', 4, 'tiny-bbb', ('wish',), 0)]
    >>> stale[1].reason("tiny-bbb")[:62]
    'prompt format changed: wish serves v4, trained with prompt for'
    """
    served: dict[tuple[str, int, str], list[str]] = {}
    for task, route in routes.items():
        key = (str(route["adapter"]), int(route["version"]), str(route["path"]))
        served.setdefault(key, []).append(task)
    stale: list[StaleAdapter] = []
    for (adapter, version, path), tasks in sorted(served.items()):
        try:
            meta = read_meta(Path(path))
        except ArtifactError:
            continue
        recorded, fmt = meta.get("base_build"), recorded_format(meta)
        if (recorded and recorded != current) or fmt != PROMPT_FORMAT:
            stale.append(StaleAdapter(adapter, version, str(recorded or ""), tuple(sorted(tasks)),
                                      fmt))
    return stale
