"""The automatic crosstalk detector against the simulator's judge, on a loop run's live outputs.

The policy checks every output nobody flagged with the style detector
(``workers/auto_crosstalk.py``). This replays all feedback of finished ``bench/loop.py`` runs
through that same code path and compares with what the judge said:

- accepted outputs it flags (the judge saw no other task's style: false flags);
- judged crosstalk it recovers, and with the judge's source task;
- rejected outputs without a source (off-style, no other task's markers) it attributes;
- the cost: one fit, then outputs per second.

    python bench/loop.py --policies adaptive --workdir /tmp/loop    # any finished runs
    python bench/autoflag.py /tmp/loop/adaptive-*/state/adaptd.db  # writes bench/results/autoflag.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlmodel import Session, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import PolicyConfig
from storage.db import make_engine
from storage.models import FeedbackEvent
from storage.suite import load_suite
from workers.auto_crosstalk import auto_source
from workers.policy_inputs import feedback_examples


def replay(db: Path, suite_ref: str, margin: float) -> dict[str, Any]:
    suite = load_suite(suite_ref)
    engine = make_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        t0 = time.perf_counter()
        accepted = sum(feedback_examples(session).values())
        source = auto_source(session, suite, margin=margin, accepted=accepted)
        fit_s = time.perf_counter() - t0
        events = session.execute(select(FeedbackEvent)).scalars().all()
        t0 = time.perf_counter()
        found = [source(ev.task, ev.output) for ev in events]
        check_s = time.perf_counter() - t0
    engine.dispose()
    n = {"accepted": 0, "judged_crosstalk": 0, "other_rejects": 0}
    hit = {"accepted": 0, "judged_crosstalk": 0, "same_source": 0, "other_rejects": 0}
    for ev, src in zip(events, found, strict=True):
        kind = ("accepted" if ev.verdict == "accept"
                else "judged_crosstalk" if ev.crosstalk_source else "other_rejects")
        n[kind] += 1
        hit[kind] += src is not None
        hit["same_source"] += kind == "judged_crosstalk" and src == ev.crosstalk_source
    return {"db": str(db), "events": len(events), "counts": n, "flagged": hit,
            "fit_seconds": round(fit_s, 3), "outputs_per_second": round(len(events) / check_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("databases", type=Path, nargs="+", help="adaptd.db files of finished runs")
    ap.add_argument("--suite", default="builtin:festive-zh")
    ap.add_argument("--margin", type=float, default=PolicyConfig().auto_crosstalk_margin)
    ap.add_argument("--out", type=Path, default=Path("bench/results/autoflag.json"))
    args = ap.parse_args()
    missing = [str(p) for p in args.databases if not p.is_file()]
    if missing:
        raise SystemExit(f"no such database: {', '.join(missing)}")
    rows = [replay(db, args.suite, args.margin) for db in args.databases]
    table = Table(title=f"automatic detector vs the judge (margin {args.margin} nats)")
    for col in ("run", "accepted flagged", "judged crosstalk found", "same source",
                "other rejects flagged", "fit s", "outputs/s"):
        table.add_column(col, justify="left" if col == "run" else "right")

    def frac(k: int, n: int) -> str:
        return f"{k}/{n} ({100 * k / n:.2f}%)" if n else "-"

    for r in rows:
        n, f = r["counts"], r["flagged"]
        table.add_row(Path(r["db"]).parent.parent.name, frac(f["accepted"], n["accepted"]),
                      frac(f["judged_crosstalk"], n["judged_crosstalk"]),
                      frac(f["same_source"], n["judged_crosstalk"]),
                      frac(f["other_rejects"], n["other_rejects"]), str(r["fit_seconds"]),
                      str(r["outputs_per_second"]))
    console = Console() if sys.stdout.isatty() else Console(width=140)
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"suite": args.suite, "margin": args.margin, "runs": rows},
                                   indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
