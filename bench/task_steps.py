"""Steps per task: a shared adapter's acceptance vs one-task adapters, by training steps.

Trains one adapter per configuration from fresh LoRA weights: the shared adapter of the
suite's compatible tasks at several step counts, and one-task adapters for the tasks measured.
Data: the suite's seed data, plus (``--examples`` or ``--db``) the feedback examples a loop
run stored, read as a training job reads them. Each adapter then answers ``--prompts`` fresh
requests per measured task with production's sampling, judged by the simulator's judge
(acceptance and crosstalk). Same prompts and sampling seed for every configuration; with
several ``--seeds`` (training seeds) the tables give the mean and the spread, and the
shared-minus-alone difference per seed, since one training run moves a task by 1-2 points.

This is the measurement behind ``TrainConfig.task_scaling``: with fixed steps a four-task
adapter sees each task a quarter as often as a one-task adapter and answers more requests in a
co-task's style.

    .venv/bin/python bench/task_steps.py                        # festive-zh, 100/200/400 steps
    .venv/bin/python bench/task_steps.py --shared greeting festival_wish --steps 100 200
    .venv/bin/python bench/task_steps.py --examples bench/data/long-after-s11-1950.jsonl.gz \
        --steps 400 --alone-steps 100 --seeds 1 2 3 4 5 --prompts 1000 --measure festival_wish
    .venv/bin/python bench/task_steps.py --tiny num_hidden_layers=3 ...   # another base size
    .venv/bin/python bench/task_steps.py ... --audit --audit-shared festival_wish greeting
        # self-audit every adapter as a job does, the shared one's two tasks as if flagged

Each measured task's result also counts its crosstalk answers by the task whose style they
carried (``crosstalk_sources`` in the JSON).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.loop import _key_values, parse_train  # noqa: E402
from daemon.sim.judge import judge  # noqa: E402
from storage.suite import Suite, load_suite  # noqa: E402

FESTIVE_SHARED = ["festival_wish", "greeting", "praise", "thanks"]


def train_fresh(suite: Suite, artifacts: Path, tasks: list[str], steps: int,
                seed: int, train: dict[str, Any] | None = None,
                db: str | None = None,
                ratios: Mapping[str, float] | None = None) -> tuple[Any, Any, Any, float]:
    """A fresh base copy with an adapter over ``tasks`` trained ``steps`` on seed data (plus,
    with ``db``, the feedback examples stored there, as a training job reads them), on
    ``ratios`` (default: the temperature prior over data sizes, as a job without a policy):
    (bundle, train result with the model in eval mode, data, training seconds)."""
    from workers.training.base_model import load_base
    from workers.training.config import TrainConfig
    from workers.training.data import assemble
    from workers.training.sampler import default_ratios
    from workers.training.trainer import train_adapter

    bundle = load_base(suite, artifacts, device="cpu")  # a fresh copy: LoRA wraps it in place
    if db is None:
        data = assemble(suite, tasks)
    else:
        from sqlmodel import Session

        from storage.db import make_engine

        with Session(make_engine(db)) as session:
            data = assemble(suite, tasks, session=session)
    cfg = TrainConfig.model_validate({"seed": seed, "checkpoint_every": 10**6, **(train or {}),
                                      "steps": steps, "task_scaling": 0.0})
    t0 = time.monotonic()
    mix = dict(ratios) if ratios is not None else default_ratios(data.sizes())
    result = train_adapter(bundle, data, ratios=mix, config=cfg,
                           general_share=cfg.general_share_or(suite.general_share))
    seconds = time.monotonic() - t0
    result.model.eval()
    return bundle, result, data, seconds


def audit_trained(suite: Suite, bundle: Any, model: Any, data: Any, seed: int,
                  train: dict[str, Any] | None, db: str | None,
                  also: Sequence[str],
                  ratios: Mapping[str, float] | None = None,
                  ) -> tuple[Any, list[dict[str, Any]], float]:
    """``model`` self-audited as a training job audits it (``workers/training/audit.py``),
    with the tasks in ``also`` audited as the policy engine's flagged tasks are: (the audited
    model in eval mode, the audit's rounds, seconds)."""
    from workers.training.audit import audit_adapter
    from workers.training.config import EvalConfig, TrainConfig
    from workers.training.data import accepted_texts
    from workers.training.sampler import default_ratios
    from workers.training.style import build_detector

    if db is None:
        detector = build_detector(suite)
    else:
        from sqlmodel import Session

        from storage.db import make_engine

        with Session(make_engine(db)) as session:  # the job's detector: seeds + accepted outputs
            detector = build_detector(suite, accepted_texts(session, list(suite.tasks)))
    cfg = TrainConfig.model_validate({"seed": seed, "checkpoint_every": 10**6, **(train or {}),
                                      "task_scaling": 0.0})
    t0 = time.monotonic()
    model, rounds = audit_adapter(
        bundle, model, data, suite=suite,
        ratios=dict(ratios) if ratios is not None else default_ratios(data.sizes()), config=cfg,
        general_share=cfg.general_share_or(suite.general_share), detector=detector,
        ecfg=EvalConfig(), flagged=also)
    model.eval()
    return model, rounds, time.monotonic() - t0


def answer(suite: Suite, model: Any, tokenizer: Any, task: str, prompts: list[str],
           seed: int) -> list[tuple[str, str, Any]]:
    """(prompt, output, verdict) for each prompt, sampled as production samples."""
    import torch

    from workers.training.generate import generate_batch

    with torch.no_grad():
        texts = generate_batch(model, tokenizer, task, prompts, max_new_tokens=40, seed=seed)
    return [(p, t, judge(suite, task, t)) for p, t in zip(prompts, texts, strict=True)]


def train_and_judge(suite: Suite, artifacts: Path, tasks: list[str], steps: int,
                    measured: list[str], prompts: int, seed: int,
                    train: dict[str, Any] | None = None, db: str | None = None,
                    audit: Sequence[str] | None = None,
                    ratios: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Train one adapter on ``tasks`` for ``steps`` on ``ratios`` (then, with ``audit``,
    self-audit it: ``audit_trained``) and judge its answers on ``measured``."""
    bundle, result, data, seconds = train_fresh(suite, artifacts, tasks, steps, seed, train, db,
                                                ratios)
    out: dict[str, Any] = {"tasks": tasks, "steps": steps, "train_s": round(seconds, 1)}
    if ratios is not None:
        out["ratios"] = dict(ratios)
    model = result.model
    if audit is not None:
        model, out["audit"], audit_s = audit_trained(suite, bundle, model, data,
                                                     (train or {}).get("seed", seed), train,
                                                     db, audit, ratios)
        out["audit_s"] = round(audit_s, 1)
    for task in measured:
        rng = random.Random(seed + 5)
        asks = [suite.prompt_for(task, rng) for _ in range(prompts)]
        verdicts = [v for _, _, v in answer(suite, model, bundle.tokenizer, task, asks,
                                            seed=seed + 3)]
        sources = Counter(v.crosstalk_source for v in verdicts if v.crosstalk_source)
        out[task] = {"acceptance": sum(v.accepted for v in verdicts) / prompts,
                     "crosstalk": sum(sources.values()) / prompts,
                     # whose style the crosstalk answers carried, most first
                     "crosstalk_sources": dict(sources.most_common())}
    return out


def parse_mixes(items: list[str], shared: Sequence[str]) -> dict[str, dict[str, float]]:
    """``NAME=JSON`` task ratios of the shared adapter, normalised; a clear CLI error if a
    mixture names other tasks than ``shared`` or has a weight that is not positive.

    >>> parse_mixes(['loop={"a": 3, "b": 1}'], ["a", "b"])
    {'loop': {'a': 0.75, 'b': 0.25}}
    """
    out: dict[str, dict[str, float]] = {}
    for name, value in _key_values("--mix", items, known=None,
                                   want="a JSON object of ratios").items():
        if not isinstance(value, dict) or sorted(value) != sorted(shared):
            sys.exit(f"error: --mix {name}: give a JSON object of ratios for exactly the "
                     f"shared tasks {', '.join(sorted(shared))}")
        if not all(isinstance(v, int | float) and v > 0 for v in value.values()):
            sys.exit(f"error: --mix {name}: every ratio must be a positive number")
        total = float(sum(value.values()))
        out[name] = {t: float(v) / total for t, v in sorted(value.items())}
    return out


def parse_tiny(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of ``builtin:tiny``'s recipe (``TINY_SPEC``), for measuring
    another base size; ``builder`` cannot be set (it is bumped so the base is rebuilt).

    >>> parse_tiny(["num_hidden_layers=3", "hidden_size=192"])
    {'num_hidden_layers': 3, 'hidden_size': 192}
    >>> parse_tiny(["layers=3"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: error: --tiny 'layers=3': want KEY=VALUE with a TINY_SPEC key ... (keys: ...)
    >>> parse_tiny(["hidden_size=0"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: error: --tiny hidden_size=0: want a TINY_SPEC key and a positive number ...
    """
    from workers.training.tiny_recipe import TINY_SPEC

    keys = [k for k in TINY_SPEC if k != "builder"]
    want = f"a TINY_SPEC key and a positive number (keys: {', '.join(keys)})"
    out = _key_values("--tiny", items, known=keys, want=want)
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SystemExit(f"error: --tiny {key}={value!r}: want {want}")
    return out


def use_tiny(overrides: dict[str, Any]) -> None:
    """Make this process build (and cache under a different name) ``builtin:tiny`` with
    ``overrides``: the recipe dict is patched in place, so the cache key and the builder both
    see it. Never used by the daemon; a base worth keeping goes into ``TINY_SPEC`` itself."""
    from workers.training.tiny_recipe import TINY_SPEC

    if overrides:
        TINY_SPEC.update(overrides)
        TINY_SPEC["builder"] += 1000  # a cache key the shipped recipe never has


def _lines(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            yield from fh
    else:
        with path.open(encoding="utf-8") as fh:
            yield from fh


def examples_db(path: Path, workdir: Path) -> str:
    """A SQLite database (migrated by alembic, like production's) holding the training examples
    of a JSON-lines file, one ``training_example`` row per line (``task``, ``kind``, ``prompt``,
    ``response``, ``negative``; ``.gz`` is read compressed). Returns its URL."""
    from sqlmodel import Session

    from storage.db import make_engine, migrate
    from storage.models import TrainingExample

    url = f"sqlite:///{workdir / 'examples.db'}"
    migrate(url)
    with Session(make_engine(url)) as session:
        for n, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                session.add(TrainingExample(task=row["task"], kind=row["kind"],
                                            prompt=row["prompt"], response=row["response"],
                                            negative=row.get("negative")))
            except (ValueError, KeyError, TypeError) as exc:  # ValueError: not JSON
                sys.exit(f"error: {path}:{n}: want a training_example row ({exc})")
        session.commit()
    return url


def summary_table(rows: list[dict[str, Any]], measured: list[str], title: str) -> Table:
    """Acceptance / crosstalk per configuration, mean over the training seeds (± spread)."""
    table = Table(title=title)
    for col in ("adapter", "steps", "steps per task", "seeds"):
        table.add_column(col, justify="left" if col == "adapter" else "right")
    for t in measured:
        table.add_column(t, justify="right")
    configs: dict[tuple[tuple[str, ...], int, str], list[dict[str, Any]]] = {}
    for row in rows:
        configs.setdefault((tuple(row["tasks"]), row["steps"], row.get("mix", "")),
                           []).append(row)
    for (tasks, steps, mix), group in configs.items():
        cells = []
        for t in measured:
            acc = [100 * r[t]["acceptance"] for r in group if t in r]
            xt = [100 * r[t]["crosstalk"] for r in group if t in r]
            spread = f" ± {statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
            cells.append(f"{statistics.mean(acc):.1f} %{spread} / {statistics.mean(xt):.1f} %"
                         if acc else "")
        name = ("shared" + (f" ({mix})" if mix else "")) if len(tasks) > 1 else tasks[0]
        table.add_row(name, str(steps), f"{steps / len(tasks):.0f}", str(len(group)), *cells)
    return table


def sharing_cost(rows: list[dict[str, Any]], measured: list[str]) -> dict[str, Any]:
    """Per measured task and shared step count (and mixture, ``@steps/mix``, if not the
    prior): shared minus alone acceptance (points), per training seed and on average (each
    seed's shared and alone adapters are paired).

    >>> rows = [{"tasks": ["a", "b"], "steps": 400, "seed": s, "a": {"acceptance": x}}
    ...         for s, x in [(1, 0.96), (2, 0.97)]]
    >>> rows += [{"tasks": ["a"], "steps": 100, "seed": s, "a": {"acceptance": x}}
    ...          for s, x in [(1, 0.99), (2, 0.98)]]
    >>> sharing_cost(rows, ["a"])
    {'a@400': {'per_seed': {'1': -3.0, '2': -1.0}, 'mean': -2.0}}
    """
    out: dict[str, Any] = {}
    alone = {(r["tasks"][0], r["seed"]): r for r in rows if len(r["tasks"]) == 1}
    for t in measured:
        for r in rows:
            a = alone.get((t, r["seed"]))
            if len(r["tasks"]) > 1 and t in r and a is not None:
                diff = 100 * (r[t]["acceptance"] - a[t]["acceptance"])
                mix = f"/{r['mix']}" if r.get("mix") else ""
                out.setdefault(f"{t}@{r['steps']}{mix}", {})[str(r["seed"])] = round(diff, 2)
    return {k: {"per_seed": v, "mean": round(statistics.mean(v.values()), 2)}
            for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="builtin:festive-zh")
    ap.add_argument("--shared", nargs="+", default=FESTIVE_SHARED,
                    help="the shared adapter's tasks (default: festive-zh's cheerful four)")
    ap.add_argument("--measure", nargs="+", default=["greeting", "festival_wish"])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400],
                    help="shared adapter step counts")
    ap.add_argument("--alone-steps", type=int, default=None,
                    help="one-task adapters' steps (default: the first --steps)")
    ap.add_argument("--prompts", type=int, default=300, help="requests judged per task")
    ap.add_argument("--seed", type=int, default=1, help="prompts' and sampling's seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seeds, one run of every configuration each (default: --seed)")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig override for every adapter, VALUE in JSON (repeatable), "
                         "e.g. --train unlikelihood_weight=1.0; steps come from --steps")
    ap.add_argument("--tiny", action="append", default=[], metavar="KEY=VALUE",
                    help="build builtin:tiny with this recipe change (repeatable), e.g. --tiny "
                         "num_hidden_layers=3 (a base of another size; built once per run, "
                         "in a temporary directory)")
    ap.add_argument("--audit", action="store_true",
                    help="self-audit every adapter after training, as a training job does "
                         "(its config's risk levels; default: high-risk tasks only)")
    ap.add_argument("--audit-shared", nargs="+", default=[], metavar="TASK",
                    help="with --audit: also audit these tasks of the shared adapter, whatever "
                         "their risk, as a job audits the tasks the policy engine flagged "
                         "(AuditConfig.flagged_rounds rounds)")
    ap.add_argument("--mix", action="append", default=[], metavar="NAME=JSON",
                    help="also train the shared adapter on these task ratios (repeatable; "
                         "normalised), e.g. --mix 'loop={\"greeting\": 0.16, ...}' for the "
                         "ratios a loop run's rebalances left; the prior (temperature sampling "
                         "over data sizes, as a job without a policy) always runs")
    data = ap.add_mutually_exclusive_group()
    data.add_argument("--examples", type=Path, metavar="JSONL",
                      help="also train on these feedback examples (JSON lines of training_example "
                           "rows, .gz allowed), e.g. bench/data/long-after-s11-1950.jsonl.gz")
    data.add_argument("--db", metavar="URL",
                      help="also train on the feedback examples of this database (e.g. a loop "
                           "run's sqlite:///…/state/adaptd.db)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/task_steps.json")
    args = ap.parse_args()
    train = parse_train(args.train)
    tiny = parse_tiny(args.tiny)
    if args.audit_shared and not args.audit:
        sys.exit("error: --audit-shared needs --audit")
    mixes = parse_mixes(args.mix, args.shared)
    if args.examples is not None and not args.examples.is_file():
        sys.exit(f"error: --examples {args.examples}: no such file")
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine: more threads mostly measure neighbours
    use_tiny(tiny)
    suite = load_suite(args.suite)
    unknown = [t for t in [*args.shared, *args.measure] if t not in suite.tasks]
    if unknown:
        sys.exit(f"error: not tasks of {suite.name}: {', '.join(unknown)}")
    console = Console()
    seeds = args.seeds or [args.seed]
    alone_steps = args.alone_steps or args.steps[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = examples_db(args.examples, Path(tmp)) if args.examples else args.db
        plan: list[tuple[list[str], int, str | None]] = [
            (sorted(args.shared), s, mix) for s in args.steps for mix in [None, *mixes]]
        plan += [([t], alone_steps, None) for t in args.measure]
        for seed in seeds:
            for tasks, steps, mix in plan:
                measured = [t for t in args.measure if t in tasks]
                audit = (args.audit_shared if len(tasks) > 1 else []) if args.audit else None
                row = train_and_judge(suite, Path(tmp), tasks, steps, measured, args.prompts,
                                      args.seed, {**train, "seed": seed}, db, audit,
                                      mixes[mix] if mix else None)
                row["seed"] = seed
                if mix:
                    row["mix"] = mix
                label = f" ({mix})" if mix else ""
                console.print(f"seed {seed}: {'+'.join(tasks)}{label} × {steps} steps: " + ", ".join(
                    f"{t} {100 * row[t]['acceptance']:.1f} %" for t in measured))
                rows.append(row)
    console.print(summary_table(rows, args.measure, f"{suite.name}: acceptance / crosstalk of "
                                f"{args.prompts} sampled answers per task"))
    cost = sharing_cost(rows, args.measure)
    for key, c in cost.items():
        task, config = key.split("@")
        steps, _, mix = config.partition("/")
        per_seed = ", ".join(f"{v:+.1f}" for v in c["per_seed"].values())
        console.print(f"{task}: shared ({steps} steps{', mix ' + mix if mix else ''}) minus "
                      f"alone ({alone_steps}): "
                      f"{c['mean']:+.1f} points (per seed {per_seed})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "suite": suite.name, "prompts": args.prompts, "seed": args.seed, "seeds": seeds,
        "train_overrides": train, "tiny_overrides": tiny, "audit": args.audit,
        "audit_shared": args.audit_shared, "mixes": mixes,
        "examples": str(args.examples) if args.examples else args.db,
        "sharing_cost_points": cost, "runs": rows}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
