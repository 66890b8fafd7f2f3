"""PromQL of the Grafana dashboards in deploy/grafana/dashboards, ready to send to Prometheus.

Used by tests/deploy/test_deploy_files.py (syntax and metric-name checks) and meant for an
end-to-end test that runs each query against a real Prometheus scraping a running adaptd.
Load it by path (tests are imported with --import-mode=importlib)::

    spec = importlib.util.spec_from_file_location("dashboard_queries", PATH_OF_THIS_FILE)

``dashboard_queries(path)`` returns every panel target's ``expr`` with Grafana's variables
replaced by valid PromQL: ``$__rate_interval`` -> ``5m``, ``$__interval`` -> ``1m``,
``$__range`` -> ``1h``, dashboard variables (``$task``, ``${adapter}``, ``${task:regex}``) ->
``.*`` (they are only used inside ``=~"..."`` matchers) unless given in ``variables``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BUILTIN_VARIABLES: dict[str, str] = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name} or ${name:format}; [[name]] is Grafana's deprecated form.
_VARIABLE_RE = re.compile(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<bare>\w+)|\[\[(?P<old>\w+)(?::\w+)?\]\]")


def substitute(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables in ``expr``.

    >>> substitute('rate(x{task=~"$task"}[$__rate_interval])')
    'rate(x{task=~".*"}[5m])'
    >>> substitute('y{adapter=~"${adapter:regex}"}', {"adapter": "shared"})
    'y{adapter=~"shared"}'
    """
    values = {**BUILTIN_VARIABLES, **(variables or {})}

    def repl(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare") or match.group("old")
        return values.get(name, ".*")

    return _VARIABLE_RE.sub(repl, expr)


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def dashboard_targets(path: str | Path) -> list[tuple[str, str]]:
    """(panel title, raw expr) for every Prometheus target of the dashboard, in order."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr and not target.get("hide"):
                found.append((str(panel.get("title", "")), str(expr)))
    return found


def dashboard_queries(path: str | Path, variables: Mapping[str, str] | None = None) -> list[str]:
    """Each panel target's PromQL, Grafana variables substituted (see module docstring)."""
    return [substitute(expr, variables) for _title, expr in dashboard_targets(path)]


_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a lexical scan, good for our own queries).

    >>> sorted(metric_names('sum by (task) (rate(a_total{task=~"x|y"}[5m])) / on (task) '
    ...                     'group_left (risk) max by (task, risk) (b_info{risk="high"}) > 0.02'))
    ['a_total', 'b_info']
    >>> sorted(metric_names('histogram_quantile(0.9, sum by (le) (rate(h_bucket[1h]))) or vector(0)'))
    ['h_bucket']
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":  # 1e3, 0.5e-2
            continue
        if text[match.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
