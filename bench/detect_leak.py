"""Leak detection delay against the feedback rate (the ``leak`` part of ``bench.detect``).

A rare high-risk task (``--leak-share`` of the traffic, 4 % as in the holiday scenarios'
surge) shares an adapter with a busy cheerful task. After ``--leak-tau`` served answers a
share ``--leak-rate`` of its answers starts carrying the cheerful task's style. How many served
answers (all tasks) pass before the engine sees the leak, at each feedback rate, with and
without the app posting its unrated answers?

- Users: the simulator's own feedback model (``daemon.sim.feedback.FeedbackModel``) at the
  rate under test, with the label noise of the contract's thin-feedback example: 5 % of good
  answers rejected, 10 % of bad ones accepted, 20 % of crosstalk rejects naming their
  source, ratings landing up to 200 requests late.
- Automatic style detector: a leaked answer is found with probability ``--auto-recall``, a
  clean one wrongly flagged with ``--auto-fp``. These are assumptions, not measurements: in
  the simulator the detector has the judge's own markers and finds every leak.
- Engine: a real ``policies`` state with the default ``PolicyConfig``; ratings go through
  ``policies.observe`` (unflagged ones checked by the detector, as ``observe_new_events``
  does) and unrated answers through ``policies.events.observe_unrated``. The task's degradation
  detector starts armed at its pre-leak rated acceptance (the baseline a promotion gives).
- Caught: the first answer after the leak began at which the task's window turns
  ``leaking`` on or its degradation detector alarms (the two signals every leak rule of the
  engine reads). Signals turning on before the leak are false alarms, counted per 100,000
  served answers. A run that has not caught the leak ``--leak-horizon`` served answers after
  it began counts as the horizon (``missed``).

Every configuration runs on the same streams (common random numbers per run: the same
answers, leaks, users' draws and detector draws), so the rates compare like with like; the
rated answers at 5 % are a subset of those at 20 %.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import common
from daemon.sim.feedback import FeedbackModel, FeedbackSpec, Pending
from daemon.sim.judge import Verdict
from policies import PolicyConfig, TaskProfile, init_state, observe
from policies.events import observe_unrated

RATES = (1.0, 0.2, 0.05, 0.02)
RARE, SOURCE = "rare", "busy"
NOISE: dict[str, Any] = {"false_reject": 0.05, "false_accept": 0.10, "names_source": 0.2,
                         "delay": 200}
GOOD_SHARE = 0.9  # answers of the rare task that are good when not leaking


@dataclass(frozen=True)
class LeakParams:
    share: float  # the rare task's share of served answers
    rate: float  # share of its answers leaking once the leak began
    tau: int  # served answers before the leak
    horizon: int  # served answers after it, at most
    auto_recall: float
    auto_fp: float


@dataclass(frozen=True)
class RunResult:
    delay: int  # served answers from the leak's start to its catch (horizon: missed)
    rare_served: int  # of them, answers of the rare task
    false_alarms: int  # signals before the leak
    signal: str | None  # "window", "detector" or None (missed)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--leak-share", type=float, default=0.04,
                    help="the rare task's share of traffic")
    ap.add_argument("--leak-rate", type=float, default=0.10,
                    help="share of its answers leaking after the change")
    ap.add_argument("--leak-tau", type=int, default=25_000,
                    help="served answers before the leak")
    ap.add_argument("--leak-horizon", type=int, default=1_000_000,
                    help="served answers after it")
    ap.add_argument("--leak-runs", type=int, default=None, help="runs per setting (quick 40, full 200)")
    ap.add_argument("--auto-recall", type=float, default=0.5,
                    help="the style detector's share of leaks found (an assumption)")
    ap.add_argument("--auto-fp", type=float, default=0.005,
                    help="the style detector's share of clean answers flagged (an assumption)")


def params(args: argparse.Namespace) -> LeakParams:
    return LeakParams(args.leak_share, args.leak_rate, args.leak_tau, args.leak_horizon,
                      args.auto_recall, args.auto_fp)


def pre_leak_acceptance() -> float:
    """What users' ratings of the rare task accept before the leak (the detector's baseline)."""
    fr, fa = NOISE["false_reject"], NOISE["false_accept"]
    return GOOD_SHARE * (1 - fr) + (1 - GOOD_SHARE) * fa


def one_run(seed: int, rated: float, post_unrated: bool, p: LeakParams,
            config: PolicyConfig) -> RunResult:
    """One stream of the rare task's answers through users and the engine."""
    rng = np.random.default_rng(seed)
    users = FeedbackModel(FeedbackSpec(rated=rated, post_unrated=post_unrated, **NOISE), seed)
    profiles = {RARE: TaskProfile(risk="high", tone="negative"),
                SOURCE: TaskProfile(risk="low", tone="positive")}
    state = init_state({"shared": [RARE, SOURCE]}, profiles, config,
                       baselines={RARE: pre_leak_acceptance()})
    ts = state.tasks[RARE]
    pending = Pending()
    false_alarms, served, rare_since = 0, 0, 0
    end = p.tau + p.horizon

    def signal() -> str | None:
        if ts.window.drift_detected:
            return "window"
        if ts.detector.drift_detected:
            return "detector"
        return None

    while True:
        served += int(rng.geometric(p.share))  # served index of the next rare answer
        if served >= end:
            return RunResult(p.horizon, rare_since, false_alarms, None)
        u_leak, u_good, u_auto = rng.random(3)
        leaked = served >= p.tau and u_leak < p.rate
        rare_since += served >= p.tau
        verdict = (Verdict(False, SOURCE, "leak") if leaked else
                   Verdict(bool(u_good < GOOD_SHARE), None, "own style"))
        auto_hit = SOURCE if u_auto < (p.auto_recall if leaked else p.auto_fp) else None
        rating = users.rate(verdict)
        landed: list[tuple[int, Any]] = []
        if rating is not None:
            pending.push(served + rating.delay, {"rating": rating, "auto": auto_hit})
        elif post_unrated:
            landed.append((served, {"rating": None, "auto": auto_hit}))
        landed += pending.due(served)
        for at, ev in landed:
            r = ev["rating"]
            if r is None:
                observe_unrated(state, RARE, checked=True, crosstalk_source=ev["auto"])
            elif r.crosstalk_source is not None:
                observe(state, RARE, r.accepted, crosstalk_source=r.crosstalk_source)
            else:
                observe(state, RARE, r.accepted, crosstalk_source=ev["auto"],
                        origin="auto")
            hit = signal()
            if hit is None:
                continue
            if at < p.tau:
                false_alarms += 1
            else:
                return RunResult(at - p.tau + 1, rare_since, false_alarms, hit)


def _summary(results: list[RunResult], p: LeakParams) -> dict[str, Any]:
    d = np.array([r.delay for r in results], dtype=np.float64)
    rare = np.array([r.rare_served for r in results], dtype=np.float64)
    pre = sum(r.false_alarms for r in results)
    by = {s: sum(r.signal == s for r in results) for s in ("window", "detector")}
    return {
        "median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
        "missed": int(sum(r.signal is None for r in results)),
        "rare_answers_median": float(np.median(rare)),
        "caught_by": by,
        "false_alarms_per_100k": round(pre / (len(results) * p.tau) * 100_000, 3),
    }  # fmt: skip


def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    p = params(args)
    config = PolicyConfig()
    runs = args.leak_runs
    rows = []
    for rated in RATES:
        row: dict[str, Any] = {"rated": rated}
        for post_unrated in (True, False):
            results = [one_run(args.seed + i, rated, post_unrated, p, config) for i in range(runs)]
            row["with_unrated" if post_unrated else "rated_only"] = _summary(results, p)
            s = row["with_unrated" if post_unrated else "rated_only"]
            log(f"leak: rated {rated:.0%}, unrated {'posted' if post_unrated else 'not posted'}: "
                f"median {s['median']:.0f} served answers, {s['missed']} missed")
        rows.append(row)
    perfect = rows[0]["rated_only"]["median"]  # every answer rated: the baseline
    for row in rows:
        for side in ("with_unrated", "rated_only"):
            row[side]["vs_all_rated"] = round(row[side]["median"] / perfect, 2)
    return {
        "params": {"share": p.share, "leak_rate": p.rate, "tau": p.tau, "horizon": p.horizon,
                   "runs": runs, "auto_recall": p.auto_recall, "auto_fp": p.auto_fp,
                   "noise": NOISE, "good_share": GOOD_SHARE,
                   "baseline": round(pre_leak_acceptance(), 6),
                   "crosstalk_on": config.for_risk("high").crosstalk_on,
                   "window_size": config.window_size,
                   "crosstalk_min_events": config.crosstalk_min_events},
        "rates": rows,
    }


def table_lines(res: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    p = res["params"]
    title = (f"leak in a rare high-risk task ({p['share']:.0%} of traffic, {p['leak_rate']:.0%} "
             f"of its answers leak): served answers until caught, {p['runs']} runs; detector "
             f"recall {p['auto_recall']:.0%}, false flags {p['auto_fp']:.1%} (assumed)")
    head = ["rated", "unrated posted: median (p90)", "its answers", "× all rated",
            "rated only: median (p90)", "its answers", "× all rated", "missed",
            "false alarms /100k"]
    lines = []
    for r in res["rates"]:
        w, o = r["with_unrated"], r["rated_only"]
        lines.append([f"{r['rated']:.0%}", f"{w['median']:,.0f} ({w['p90']:,.0f})",
                      f"{w['rare_answers_median']:,.0f}", f"{w['vs_all_rated']:.2f}",
                      f"{o['median']:,.0f} ({o['p90']:,.0f})",
                      f"{o['rare_answers_median']:,.0f}", f"{o['vs_all_rated']:.2f}",
                      f"{w['missed']} | {o['missed']}",
                      f"{w['false_alarms_per_100k']:.2f} | {o['false_alarms_per_100k']:.2f}"])
    return title, head, lines



def print_table(res: dict[str, Any]) -> None:
    common.print_table(*table_lines(res), width=150)
