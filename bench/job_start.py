"""Benchmark: how long a training job's child process takes to get ready to train.

A `train` worker runs each job in a fresh child (``--max-tasks-per-child 1``), forked from
the worker's main process. What the child must do before its first training step is import
the training stack (torch, transformers, peft) and load the base model. ``adaptd worker``
imports that stack in the main process when it serves the `train` queue, so the fork
inherits it; this bench measures the difference side by side:

- ``lazy``: the parent has imported nothing heavy (the worker before this change);
- ``preloaded``: the parent called ``workers.training.job.preload`` before forking (now).

Each measurement is a fresh parent interpreter that forks once and times the child from
``fork()`` to a loaded base model (``load_base`` on the builtin suite's ``builtin:tiny``,
built once into ``--workdir`` first). Modes alternate; the table reports medians.

    .venv/bin/python bench/job_start.py [--repeats 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SUITE, machine, print_table, write_json

MODES = ("lazy", "preloaded")


def child_ready(artifacts: Path) -> None:
    """What a job does before training that does not depend on the job: import, load base."""
    from storage.suite import load_suite
    from workers.training.base_model import load_base
    from workers.training.job import run_training_job  # noqa: F401  (the task's own import)

    load_base(load_suite(SUITE), artifacts, device="cpu")


def one(mode: str, artifacts: Path) -> float:
    """In this (fresh) process: prepare the parent as ``mode`` says, fork, time the child."""
    if mode == "preloaded":
        from workers.training.job import preload

        preload()  # what `adaptd worker --queues train` does before it forks
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            child_ready(artifacts)
        except BaseException:
            traceback.print_exc()  # the parent only sees the exit status
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode}: the child failed")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/adaptd-job-start"))
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    artifacts = args.workdir / "artifacts"
    if args.one:
        print(f"{one(args.one, artifacts):.4f}")
        return
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # Build (or find) the base model first, so no measurement includes a build. (This
    # process only orchestrates: each measurement is a fresh interpreter.)
    child_ready(artifacts)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--one", mode, "--workdir",
                                  str(args.workdir)], cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True).stdout
            times[mode].append(float(out.strip().splitlines()[-1]))
    med = {m: statistics.median(v) for m, v in times.items()}
    rows = [[m, med[m], min(times[m]), max(times[m]), med[m] / med["lazy"]] for m in MODES]
    print_table("fork -> base model loaded in the child (s)",
                ["parent", "median", "min", "max", "vs lazy"], rows)
    path = write_json("job_start.json", {
        "machine": machine(), "repeats": args.repeats, "seconds": times,
        "median": med, "ratio_preloaded_vs_lazy": med["preloaded"] / med["lazy"],
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
