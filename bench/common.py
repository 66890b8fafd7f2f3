"""What every bench shares: where results go, the machine a bench ran on, tables, profiling.

A bench writes one JSON file, by default ``.adaptd/bench/<name>.json`` (outside version
control), so running a bench never dirties the checkout; ``--out bench/results/<name>.json``
replaces the committed result. The load generator and the process helpers the ingest and drain
benches share with the tests live in ``tests/support``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / ".adaptd" / "bench"


def default_out(name: str) -> Path:
    """Where bench ``name`` writes its JSON unless ``--out`` says otherwise.

    >>> default_out("drain").relative_to(ROOT).as_posix()
    '.adaptd/bench/drain.json'
    """
    return OUT_DIR / f"{name}.json"


def add_out(parser: argparse.ArgumentParser, name: str) -> None:
    """The ``--out PATH`` option every bench has."""
    parser.add_argument("--out", type=Path, default=default_out(name), metavar="PATH",
                        help=f"results JSON (default: .adaptd/bench/{name}.json, outside version "
                             f"control; bench/results/{name}.json is the committed result)")


def command(name: str) -> str:
    """How this run was started, as a maintainer reruns it."""
    return " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]])


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def key_values(flag: str, items: list[str], *, known: Collection[str] | None,
               want: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE in JSON) as a dict; a clear CLI error for anything else.

    >>> key_values("--x", ["a=1", "b={\\"c\\": 2}"], known=None, want="a JSON value")
    {'a': 1, 'b': {'c': 2}}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep or (known is not None and key not in known):
            raise SystemExit(f"error: {flag} {item!r}: want KEY=VALUE with {want}")
    return out


# ---------------------------------------------------------------------------------------------
# Profiling and work directories


@contextlib.contextmanager
def profiled(pid: int, out: Path, rate: int = 250) -> Iterator[None]:
    """Sample ``pid`` (and its subprocesses) with py-spy while the block runs: collapsed stacks
    of the threads holding the GIL, i.e. where the Python CPU time goes. ``PY_SPY`` names the
    py-spy executable (default: ``py-spy`` on PATH)."""
    import signal
    import subprocess

    cmd = [os.environ.get("PY_SPY", "py-spy"), "record", "--pid", str(pid), "--format", "raw",
           "--rate", str(rate), "--nonblocking", "--gil", "--subprocesses", "-o", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


def self_time_by_package(raw_path: Path) -> list[tuple[str, float]]:
    """Share of GIL-holding samples per package of the innermost frame."""
    import re

    per: dict[str, int] = {}
    total = 0
    if not raw_path.exists():
        return []
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        m = re.search(r"\(([^():]+)(?::\d+)?\)\s*$", leaf)
        path = m.group(1) if m else leaf
        pkg = path.split("/")[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")
        per[pkg] = per.get(pkg, 0) + int(count)
        total += int(count)
    rows = sorted(per.items(), key=lambda kv: -kv[1])
    return [(k, round(100 * v / total, 1)) for k, v in rows if v / total >= 0.005]


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"adaptd-{name}-"))


# ---------------------------------------------------------------------------------------------
# Output


def machine() -> dict[str, Any]:
    """Where a bench ran: benches on a shared 2-core machine move with its speed and load.

    >>> m = machine()
    >>> sorted(m), m["cpus"] >= 1, len(m["loadavg_at_start"])
    (['cpu', 'cpus', 'loadavg_at_start', 'platform', 'python'], True, 3)
    """
    load = os.getloadavg()
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": cpu_model(),
            "loadavg_at_start": [round(x, 2) for x in load], "platform": platform.platform()}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    Console(width=width).print(table)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
