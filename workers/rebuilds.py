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


@dataclass(frozen=True)
class StaleAdapter:
    adapter: str
    version: int
    build: str  # the build the served version was trained on
    tasks: tuple[str, ...]  # the tasks routed to it

    def reason(self, current: str) -> str:
        return (f"base rebuilt: {self.adapter} serves v{self.version}, trained on base build "
                f"{self.build!r}; the base is now {current!r}, so {', '.join(self.tasks)} "
                f"cannot be served until it retrains")


def stale_adapters(routes: Mapping[str, Mapping[str, Any]], current: str) -> list[StaleAdapter]:
    """Served adapters whose routed version records a base build other than ``current``.

    ``routes`` is the routing table (task -> adapter, version, path). A version whose meta
    cannot be read or records no build is left alone: the server reports the first, and the
    second predates recorded builds (it loads with a warning).

    >>> import json, tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, build in [("old", "tiny-aaa"), ("new", "tiny-bbb")]:
    ...     _ = (root / name).mkdir(), (root / name / "adaptd.json").write_text(
    ...         json.dumps({"base_build": build}))
    >>> routes = {"apology": {"adapter": "shared", "version": 3, "path": str(root / "old")},
    ...           "thanks": {"adapter": "shared", "version": 3, "path": str(root / "old")},
    ...           "praise": {"adapter": "praise", "version": 1, "path": str(root / "new")},
    ...           "greeting": {"adapter": "hello", "version": 2, "path": str(root / "gone")}}
    >>> stale_adapters(routes, "tiny-bbb")
    [StaleAdapter(adapter='shared', version=3, build='tiny-aaa', tasks=('apology', 'thanks'))]
    """
    served: dict[tuple[str, int, str], list[str]] = {}
    for task, route in routes.items():
        key = (str(route["adapter"]), int(route["version"]), str(route["path"]))
        served.setdefault(key, []).append(task)
    stale: list[StaleAdapter] = []
    for (adapter, version, path), tasks in sorted(served.items()):
        try:
            recorded = read_meta(Path(path)).get("base_build")
        except ArtifactError:
            continue
        if recorded and recorded != current:
            stale.append(StaleAdapter(adapter, version, str(recorded), tuple(sorted(tasks))))
    return stale
