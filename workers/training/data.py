"""Training data per task: SQL ``TrainingExample`` rows + the suite's seed data, cleaned and
split into train and a deterministic held-out set.

No torch here. Cleaning drops empty and over-long texts and exact and near duplicates (same
text after Unicode NFKC, case folding and whitespace collapsing); when duplicates disagree on
kind the most valuable one is kept (correction > accepted > seed). The held-out split hashes
each example's normalized text, so an example stays on the same side of the split as data
grows and candidate and production are always compared on the same prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlmodel import Session

from storage.crud import newest_examples, newest_responses
from storage.models import TrainingExample
from storage.suite import Example, Suite
from workers.training.config import DataConfig
from workers.training.encode import Conversation, Prompt, flat_text
from workers.training.sampler import GENERAL

KIND_PRIORITY = {"correction": 0, "accepted": 1, "seed": 2}
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Sample:
    task: str
    prompt: Prompt
    response: str
    kind: str = "seed"  # seed | accepted | correction | negative
    example_id: int | None = None


@dataclass
class TaskData:
    task: str
    train: list[Sample]
    heldout: list[Sample]
    negatives: list[Sample]  # response = the rejected output


@dataclass
class DataBundle:
    tasks: dict[str, TaskData]
    general_train: list[Sample]
    general_heldout: list[Sample]
    example_ids: list[int] = field(default_factory=list)  # SQL rows read (to mark trained_in)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def sizes(self) -> dict[str, int]:
        return {t: len(d.train) for t, d in self.tasks.items()}

    def hashes(self) -> dict[str, str]:
        """sha256 per task (and ``_general``) over the training samples, order-independent."""
        out = {t: _hash_samples(d.train + d.negatives) for t, d in self.tasks.items()}
        out[GENERAL] = _hash_samples(self.general_train)
        return out


def norm_key(text: str) -> str:
    """Near-duplicate key: NFKC, case-folded, whitespace collapsed and stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).casefold().strip()


def pair_key(prompt: Prompt, response: str) -> tuple[str, str]:
    """Near-duplicate key of an example: both texts through :func:`norm_key` (a conversation
    as :func:`~workers.training.encode.flat_text`)."""
    return norm_key(flat_text(prompt)), norm_key(response)


def _hash_samples(samples: Iterable[Sample]) -> str:
    lines = sorted(json.dumps([_prompt_json(s.prompt), s.response, s.kind], ensure_ascii=False)
                   for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _prompt_json(prompt: Prompt) -> str | list[list[str]]:
    """A plain prompt as itself (so its hash stays what it is), a conversation as its turns."""
    if isinstance(prompt, Conversation):
        return [list(t) for t in prompt.turns]
    return prompt


def _strip(prompt: Prompt) -> Prompt:
    if isinstance(prompt, Conversation):
        return Conversation(tuple((role, text.strip()) for role, text in prompt.turns))
    return prompt.strip()


def _bucket(task: str, sample: Sample) -> float:
    """Stable pseudo-random number in [0, 1) from the example's normalized content."""
    key = f"{task}\x00{norm_key(flat_text(sample.prompt))}\x00{norm_key(sample.response)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def clean(samples: Sequence[Sample], *, max_chars: int, dropped: dict[str, int]) -> list[Sample]:
    """Drop empty/over-long texts and exact/near duplicates; keep the most valuable kind. A
    conversation counts as empty without a request and as long as its turns together."""
    best: dict[tuple[str, str], Sample] = {}
    for s in samples:
        prompt, response = _strip(s.prompt), s.response.strip()
        flat = flat_text(prompt)
        if not request_of(prompt) or not response:
            dropped["empty"] = dropped.get("empty", 0) + 1
            continue
        if len(flat) > max_chars or len(response) > max_chars:
            dropped["too_long"] = dropped.get("too_long", 0) + 1
            continue
        key = pair_key(prompt, response)
        s = Sample(s.task, prompt, response, s.kind, s.example_id)
        old = best.get(key)
        if old is None:
            best[key] = s
            continue
        dropped["duplicate"] = dropped.get("duplicate", 0) + 1
        if KIND_PRIORITY.get(s.kind, 9) < KIND_PRIORITY.get(old.kind, 9):
            best[key] = s
    return list(best.values())


def split(
    task: str, samples: list[Sample], cfg: DataConfig
) -> tuple[list[Sample], list[Sample]]:
    """Deterministic (train, heldout): by content hash, topped up to ``heldout_min``."""
    ranked = sorted(samples, key=lambda s: _bucket(task, s))
    n_held = sum(1 for s in ranked if _bucket(task, s) < cfg.heldout_fraction)
    n_held = max(n_held, min(cfg.heldout_min, len(ranked) // 4))
    n_held = min(n_held, max(len(ranked) - 1, 0))  # never hold out a task's only example
    return ranked[n_held:], ranked[:n_held]


def request_of(prompt: Prompt) -> str:
    return prompt.request if isinstance(prompt, Conversation) else prompt


def seed_prompt(example: Example) -> Prompt:
    """A seed example's prompt: its request, in its context turns when the task has any."""
    if example.context:
        return Conversation((*example.context, ("user", example.prompt)))
    return example.prompt


def fresh_request(suite: Suite, task: str, rng: random.Random) -> Prompt:
    """A fresh request of ``task`` as the app sends it (:meth:`Suite.request_for`)."""
    context, prompt = suite.request_for(task, rng)
    return Conversation((*context, ("user", prompt))) if context else prompt


def row_prompt(row: TrainingExample) -> Prompt:
    """What the app asked: the stored conversation when the event had one, else ``prompt``."""
    if row.messages:
        return Conversation.of(row.messages)
    return row.prompt


def sql_rows(session: Session, tasks: Sequence[str], limit: int) -> list[TrainingExample]:
    """The newest ``limit`` rows per task (all kinds)."""
    return [row for task in tasks for row in newest_examples(session, task=task, limit=limit)]


def assemble(
    suite: Suite, tasks: Sequence[str], *, session: Session | None = None,
    cfg: DataConfig | None = None,
) -> DataBundle:
    """Everything one training run of an adapter over ``tasks`` needs, cleaned and split."""
    cfg = cfg or DataConfig()
    dropped: dict[str, int] = {}
    positives: dict[str, list[Sample]] = {t: [] for t in tasks}
    negatives: dict[str, list[Sample]] = {t: [] for t in tasks}
    for task in tasks:
        positives[task] += [Sample(task, seed_prompt(e), e.response, "seed") for e in
                            suite.seed_examples(task)]
    example_ids: list[int] = []
    if session is not None:
        for row in sql_rows(session, tasks, cfg.max_rows_per_task):
            if row.id is not None and row.trained_in is None:
                example_ids.append(row.id)
            prompt = row_prompt(row)
            if row.kind == "negative":
                text = row.negative or row.response
                negatives[row.task].append(Sample(row.task, prompt, text, "negative", row.id))
                continue
            positives[row.task].append(Sample(row.task, prompt, row.response, row.kind, row.id))
            if row.kind == "correction" and row.negative:
                # The output the user corrected is a rejected output of the same prompt.
                negatives[row.task].append(
                    Sample(row.task, prompt, row.negative, "negative", row.id)
                )
    data: dict[str, TaskData] = {}
    for task in tasks:
        kept = clean(positives[task], max_chars=cfg.max_chars, dropped=dropped)
        train, heldout = split(task, kept, cfg)
        good = {norm_key(s.response) for s in kept}
        # A "negative" that equals an accepted output would fight the CE term: drop it.
        negs = [n for n in clean(negatives[task], max_chars=cfg.max_chars, dropped=dropped)
                if norm_key(n.response) not in good]
        data[task] = TaskData(task, train, heldout, negs)
    general = clean(
        [Sample(GENERAL, seed_prompt(e), e.response, "seed") for e in suite.general_examples()],
        max_chars=cfg.max_chars, dropped=dropped,
    )
    g_train, g_held = split(GENERAL, general, cfg)
    return DataBundle(data, g_train, g_held, sorted(example_ids), dropped)


def accepted_texts(session: Session, tasks: Sequence[str], limit: int = 500) -> dict[str, list[str]]:
    """Newest accepted outputs and corrections per task (style detector training data)."""
    return {task: newest_responses(session, task=task, kinds=("accepted", "correction"),
                                   limit=limit)
            for task in tasks}
