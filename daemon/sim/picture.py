"""The simulation report as a picture (PNG) and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

MARKED = ("rebalance", "fork", "merge", "rollback")


def _series(report: dict[str, Any], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """``key`` per task over the run: over every answer served (the judge's truth), or
    over the rated answers in a report without it."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for point in report.get("series", []):
        for task, r in point.get("truth", point["tasks"]).items():
            if r.get(key) is None:
                continue
            xs, ys = out.setdefault(task, ([], []))
            xs.append(point["at_event"])
            ys.append(r[key])
    return out


def _smooth(ys: list[float], k: int = 4) -> list[float]:
    return [sum(ys[max(0, i - k + 1): i + 1]) / len(ys[max(0, i - k + 1): i + 1])
            for i in range(len(ys))]


def write_pictures(report: dict[str, Any], png: Path, page: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for ax, key, title in ((axes[0], "acceptance", "acceptance"),
                           (axes[1], "crosstalk_rate", "crosstalk rate")):
        for task, (xs, ys) in sorted(_series(report, key).items()):
            ax.plot(xs, _smooth(ys), label=task, linewidth=1.4)
        ax.set_ylabel(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        boundary = 0
        for phase in report.get("phases", [])[:-1]:
            boundary += phase["events"]
            ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        for d in report.get("decisions", []):
            if d["action"] in MARKED:
                ax.axvline(d["at_event"], color="red" if d["action"] == "fork" else "orange",
                           linewidth=0.8, alpha=0.7)
    for d in report.get("decisions", []):
        if d["action"] in MARKED:
            axes[0].annotate(f"{d['action']} {d['task'] or ''}", (d["at_event"], 1.0),
                             rotation=90, fontsize=7, va="top", ha="right")
    axes[0].legend(loc="lower left", fontsize=8, ncol=3)
    axes[1].set_xlabel("events")
    fig.suptitle(f"adaptd simulate: {report.get('policy')} on {report.get('scenario')}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    page.write_text(_html(report, base64.b64encode(png.read_bytes()).decode()), "utf-8")


def _html(report: dict[str, Any], png_b64: str) -> str:
    esc = html.escape
    rows = []
    for phase in report.get("phases", []):
        for task, row in phase["tasks"].items():
            r = row.get("truth", row)  # every answer served, not only the rated ones
            pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
            rows.append(f"<tr><td>{esc(phase['name'])}</td><td>{esc(task)}</td>"
                        f"<td>{r['events']}</td><td>{pct(r['acceptance'])}</td>"
                        f"<td>{pct(r['crosstalk_rate'])}</td></tr>")
    decisions = "".join(
        f"<tr><td>{d['at_event']}</td><td>{esc(d['action'])}</td><td>{esc(d['task'] or '')}</td>"
        f"<td>{esc(d['reason'])}</td></tr>" for d in report.get("decisions", [])
        if d["action"] != "hold")
    runs = "".join(
        f"<tr><td>{esc(str(r['adapter']))}</td><td>{r['version']}</td><td>{esc(r['outcome'])}</td>"
        f"<td>{r['seconds']}</td></tr>" for r in report.get("training_runs", []))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>adaptd simulate: {esc(str(report.get('policy')))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style>
</head><body><h1>adaptd simulate: {esc(str(report.get('policy')))}</h1>
<p>scenario {esc(str(report.get('scenario')))}, seed {report.get('seed')},
{report.get('seconds')} s</p>
<img src="data:image/png;base64,{png_b64}" style="width:100%">
<h2>Per phase and task</h2><table><tr><th>phase</th><th>task</th><th>events</th>
<th>acceptance</th><th>crosstalk</th></tr>{''.join(rows)}</table>
<h2>Decisions</h2><table><tr><th>at event</th><th>action</th><th>task</th><th>reason</th></tr>
{decisions}</table>
<h2>Training runs</h2><table><tr><th>adapter</th><th>version</th><th>outcome</th><th>seconds</th></tr>
{runs}</table></body></html>"""
