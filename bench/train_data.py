"""Training data of production shapes for ``bench.train --profile long``.

A suite's own examples are one-line requests with answers of 10–43 tokens, where padding
wastes little. Production traffic has a system prompt per app screen, sometimes an earlier
turn, and answers of hundreds of tokens. This module rebuilds a suite's tasks at those
lengths, from the suite's own texts (so the tiny base's tokenizer knows the words), as
token counts drawn from fixed distributions:

- system prompt: one per task, uniform 120–480 tokens (the general data's texts);
- user turn: log-normal, median 40 tokens, clipped to 8–256 (the task's requests);
- an earlier user and assistant turn in 35 % of examples, the earlier answer log-normal,
  median 128, clipped to 32–512;
- answer: log-normal, median 256 tokens (sigma 0.6), clipped to 64–1,024 (the task's
  answers, one after another).

Deterministic in ``seed``: both sides of the bench build the same examples.
"""

from __future__ import annotations

import math
import random
from typing import Any

from storage.suite import Suite
from workers.training.data import DataBundle, Sample, TaskData

TRAIN_PER_TASK, HELD_PER_TASK = 48, 6
ANSWER = (math.log(256), 0.6, 64, 1024)  # log-normal (mu, sigma), clipped to [lo, hi]
USER = (math.log(40), 0.5, 8, 256)
EARLIER = (math.log(128), 0.5, 32, 512)
SYSTEM = (120, 480)
EARLIER_SHARE = 0.35


def _lognormal(rng: random.Random, spec: tuple[float, float, int, int]) -> int:
    mu, sigma, lo, hi = spec
    return int(min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))))


class _Texts:
    """Token-exact text of a wanted length from a pool of texts (whole texts, then cut)."""

    def __init__(self, tokenizer: Any, texts: list[str], rng: random.Random) -> None:
        self.tok = tokenizer
        self.pool = [list(tokenizer.encode(t + " ", add_special_tokens=False)) for t in texts]
        self.rng = rng

    def text(self, n_tokens: int) -> str:
        ids: list[int] = []
        while len(ids) < n_tokens:
            ids += self.rng.choice(self.pool)
        return str(self.tok.decode(ids[:n_tokens])).strip()


def long_profile(suite: Suite, tokenizer: Any, *, seed: int = 0) -> DataBundle:
    """The suite's tasks (and general data) rebuilt at production lengths."""
    rng = random.Random(seed)
    general = suite.general_examples()
    sys_pool = _Texts(tokenizer, [f"{e.prompt} {e.response}" for e in general], rng)
    tasks: dict[str, TaskData] = {}
    for task in sorted(suite.tasks):
        seeds = suite.seed_examples(task)
        users = _Texts(tokenizer, [e.prompt for e in seeds], rng)
        answers = _Texts(tokenizer, [e.response for e in seeds], rng)
        system = sys_pool.text(rng.randint(*SYSTEM))
        made = [_example(task, system, users, answers, rng)
                for _ in range(TRAIN_PER_TASK + HELD_PER_TASK)]
        tasks[task] = TaskData(task=task, train=made[:TRAIN_PER_TASK],
                               heldout=made[TRAIN_PER_TASK:], negatives=[])
    gen_users = _Texts(tokenizer, [e.prompt for e in general], rng)
    gen_answers = _Texts(tokenizer, [e.response for e in general], rng)
    gen = [_example("_general", "", gen_users, gen_answers, rng)
           for _ in range(TRAIN_PER_TASK + HELD_PER_TASK)]
    return DataBundle(tasks=tasks, general_train=gen[:TRAIN_PER_TASK],
                      general_heldout=gen[TRAIN_PER_TASK:])


def _example(task: str, system: str, users: _Texts, answers: _Texts,
             rng: random.Random) -> Sample:
    turns = [system] if system else []
    if rng.random() < EARLIER_SHARE:
        turns += [f"User: {users.text(_lognormal(rng, USER))}",
                  f"Assistant: {answers.text(_lognormal(rng, EARLIER))}"]
    turns.append(f"User: {users.text(_lognormal(rng, USER))}")
    return Sample(task=task, prompt="\n\n".join(turns),
                  response=answers.text(_lognormal(rng, ANSWER)))
