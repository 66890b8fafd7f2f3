"""Benchmark: the evaluation's quality scorer, cached n-grams vs counting them per pair.

Every training job scores each sampled answer against its prompt's reference and up to 64 of
the task's accepted responses (``workers.training.evaluate.default_scorer``: the best
character n-gram F1), for the candidate and for production: 2 × 64 answers × 65 references
per task. Counting each text's n-grams once per pair made that two thirds of a four-task
adapter's evaluation (a cProfile of one shared retrain on a demo's state: 5.9 s of 8.8 s).

This bench replays that work on the builtin suite's data, as a job does it (both sides, one
fresh process-wide cache per job), with the shipped scorer and with the previous one (kept
below as ``reference_char_f1``), alternating, and reports the medians and their ratio. Every
score must be the same number with both (column ``identical``): the cache changes the cost,
not one digit of what the gate sees.

    .venv/bin/python bench/eval_scoring.py [--repeats 5] [--out bench/results/eval_scoring.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import SUITE, machine, print_table, write_json

from storage.suite import Suite, load_suite
from workers.training import evaluate


def reference_char_f1(hyp: str, ref: str, sizes: Sequence[int] = (1, 2, 3)) -> float:
    """The scorer before the cache (stop 34), verbatim: the baseline.

    >>> reference_char_f1("新年快乐", "新年快乐"), round(reference_char_f1("新年快乐", "新春快乐"), 4)
    (1.0, 0.3611)
    """
    scores = []
    for n in sizes:
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            scores.append(1.0 if not h and not r else 0.0)
            continue
        overlap = sum((h & r).values())
        p, rec = overlap / sum(h.values()), overlap / sum(r.values())
        scores.append(0.0 if overlap == 0 else 2 * p * rec / (p + rec))
    return sum(scores) / len(scores)


Work = list[tuple[str, list[str]]]  # (answer, [its reference, *the task's pool])


def job_work(suite: Suite, seed: int, answers: int = 64, pool: int = 64) -> list[Work]:
    """Two sides' worth of (answer, references) per task, like one job's evaluation: 16
    held-out prompts × 4 answers, the answers drawn from every task's responses (an answer
    in another task's style is the case the scorer must rate low)."""
    rng = random.Random(seed)
    responses = {t: [e.response for e in suite.seed_examples(t)] for t in sorted(suite.tasks)}
    everything = [r for rs in responses.values() for r in rs]
    sides = []
    for _side in range(2):
        work: Work = []
        for task in sorted(suite.tasks):
            refs = responses[task][:pool]
            for i in range(answers):
                answer = rng.choice(responses[task] if rng.random() < 0.8 else everything)
                work.append((answer, [responses[task][(i // 4) % len(refs)], *refs]))
        sides.append(work)
    return sides


def score_all(sides: list[Work], f1: Callable[[str, str], float]) -> tuple[float, list[float]]:
    """Seconds and scores of the best-F1 scoring, as ``default_scorer`` computes it."""
    t0 = time.perf_counter()
    scores = [max((f1(a, r) for r in refs), default=0.0) for work in sides for a, refs in work]
    return time.perf_counter() - t0, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--suite", default=SUITE)
    parser.add_argument("--out", default="eval_scoring.json",
                        help="file name under bench/results/")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    suite = load_suite(args.suite)
    seconds: dict[str, list[float]] = {"counted per pair": [], "cached n-grams": []}
    identical = True
    for k in range(args.repeats):
        sides = job_work(suite, seed=k)
        base_s, base_scores = score_all(sides, reference_char_f1)
        evaluate._ngrams.cache_clear()  # each job is a fresh process: a cold cache
        new_s, new_scores = score_all(sides, evaluate.char_f1)
        identical &= base_scores == new_scores
        seconds["counted per pair"].append(base_s)
        seconds["cached n-grams"].append(new_s)
    pairs = sum(len(refs) for work in job_work(suite, seed=0) for _, refs in work)
    base = statistics.median(seconds["counted per pair"])
    rows = [[name, pairs, round(statistics.median(v), 3), round(statistics.median(v) / base, 3),
             identical] for name, v in seconds.items()]
    print_table(f"eval scoring, one job's pairs ({args.suite}, {len(suite.tasks)} tasks, "
                f"median of {args.repeats})",
                ["scorer", "pairs", "seconds", "ratio", "identical"], rows)
    path = write_json(args.out, {"suite": args.suite, "repeats": args.repeats, "pairs": pairs,
                                 "seconds": seconds, "identical": identical,
                                 "ratio": round(statistics.median(seconds["cached n-grams"])
                                                / base, 4), "machine": machine()})
    print(f"wrote {path}")
    if not identical:
        raise SystemExit("the cached scorer gave a different score: a bug")


if __name__ == "__main__":
    main()
