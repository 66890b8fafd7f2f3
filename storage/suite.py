"""Task suites: the base model, the tasks with their profiles, and the adapters.

A suite is a YAML file (docs/contracts.md sections 5 and 9) or a builtin (``builtin:<name>``, shipped in
``storage/suites``). Tasks get their seed data either from JSONL files
(``{"prompt": ..., "response": ...}``) or from generators: prompt templates and response parts
with ``{slot}`` placeholders. A generator task may also give the app's conversation around the
request: ``system`` prompts (the app screen's instructions) and ``context`` (earlier user and
assistant turns); each example draws one of each, so the request arrives as a chat. A bad
suite raises :class:`SuiteError` naming the file, the field and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.signals import Risk  # the one risk vocabulary (pure, imports nothing of ours)

BUILTIN_DIR = Path(__file__).parent / "suites"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
_SLOT_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The offline bases the builder makes from a suite's texts (name -> architecture; their
# recipes: workers/training/tiny_arch.py). Any other ``builtin:`` name is a typo.
BUILTIN_BASES = {"builtin:tiny": "llama", "builtin:tiny-qwen2": "qwen2",
                 "builtin:tiny-gemma": "gemma", "builtin:tiny-mistral": "mistral",
                 "builtin:tiny-phi3": "phi3", "builtin:tiny-gpt2": "gpt2"}


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names file, field and problem."""


def check_name(value: str, what: str = "name") -> str:
    """Validate a name that becomes a path component or a Redis key."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} must match {NAME_RE.pattern} "
            "(lowercase letters, digits, '_' or '-', starting with a letter)"
        )
    return value


def check_builtin_base(ref: str) -> None:
    """A ``builtin:`` base model must be one the builder makes; the error lists them."""
    if ref.startswith("builtin:") and ref not in BUILTIN_BASES:
        raise ValueError(f"unknown builtin base model {ref!r} (have: {', '.join(BUILTIN_BASES)}; "
                         "or a local directory, or a Hugging Face id in the local cache)")


Turn = tuple[str, str]  # (role, content) of a chat turn


@dataclass(frozen=True)
class Example:
    """One prompt/response pair of seed data; ``context``: the turns before the prompt (a
    system turn first if any, then user and assistant turns), empty for a plain request."""

    prompt: str
    response: str
    context: tuple[Turn, ...] = ()


class ContextTurn(BaseModel):
    """One earlier turn of the app's conversation."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class Generator(BaseModel):
    """Prompt templates and response parts; one choice per part, concatenated."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1)
    responses: list[list[str]] = Field(min_length=1)

    @field_validator("responses")
    @classmethod
    def _parts_not_empty(cls, parts: list[list[str]]) -> list[list[str]]:
        for i, part in enumerate(parts):
            if not part:
                raise ValueError(f"response part {i} is empty")
        return parts


class TaskSpec(BaseModel):
    """A task's profile and where its seed data comes from."""

    model_config = ConfigDict(extra="forbid")
    risk: Risk
    tone: str = "neutral"
    data: str | None = None
    prompts: list[str] = Field(default_factory=list)
    responses: list[list[str]] = Field(default_factory=list)
    markers: list[str] = Field(default_factory=list)
    forbid: list[str] = Field(default_factory=list)
    description: str = ""
    # The app's conversation around a generated request: one system prompt and one context
    # (earlier turns, user first, alternating, ending with the assistant) drawn per example.
    system: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    context: list[list[ContextTurn]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_data(self) -> TaskSpec:
        if self.data is None and not (self.prompts and self.responses):
            raise ValueError("needs either `data` (a JSONL file) or `prompts` and `responses`")
        if self.responses and any(not part for part in self.responses):
            raise ValueError("every list in `responses` needs at least one choice")
        if self.data is not None and (self.system or self.context):
            raise ValueError("`system` and `context` go with generated `prompts`, not `data`")
        for i, turns in enumerate(self.context):
            roles = [t.role for t in turns]
            want = ["user", "assistant"] * (len(turns) // 2)
            if not turns or roles != want:
                raise ValueError(f"context {i}: turns alternate user, assistant, starting with "
                                 f"the user and ending with the assistant (got {roles})")
        return self

    @property
    def chat(self) -> bool:
        """Whether the task's requests come as a conversation."""
        return bool(self.system or self.context)


class Suite(BaseModel):
    """A validated task suite. ``base_dir`` resolves relative data paths."""

    model_config = ConfigDict(extra="forbid")
    name: str = "suite"
    base_model: str = "builtin:tiny"
    general_data: str | None = None
    general_share: float = Field(0.3, ge=0.0, lt=1.0)
    general: Generator | None = None
    slots: dict[str, list[str]] = Field(default_factory=dict)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    adapters: dict[str, list[str]] = Field(default_factory=dict)
    examples_per_task: int = Field(200, ge=1, le=100_000)
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("base_model")
    @classmethod
    def _builtin_base(cls, ref: str) -> str:
        check_builtin_base(ref)
        return ref

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
        for name in tasks:
            check_name(name, "task name")
        return tasks

    @model_validator(mode="after")
    def _adapters_and_slots(self) -> Suite:
        if not self.adapters:
            self.adapters = {"shared": list(self.tasks)}
        seen: dict[str, str] = {}
        for adapter, members in self.adapters.items():
            check_name(adapter, "adapter name")
            for task in members:
                if task not in self.tasks:
                    raise ValueError(f"adapter {adapter!r} lists unknown task {task!r}")
                if task in seen:
                    raise ValueError(f"task {task!r} is in adapters {seen[task]!r} and {adapter!r}")
                seen[task] = adapter
        missing = [t for t in self.tasks if t not in seen]
        if missing:
            raise ValueError(f"tasks {missing} are in no adapter")
        for where, text in self._templates():
            for slot in _SLOT_RE.findall(text):
                if slot not in self.slots:
                    raise ValueError(f"{where} uses slot {{{slot}}} that `slots` does not define")
        return self

    def _templates(self) -> Iterator[tuple[str, str]]:
        gens: list[tuple[str, list[str], list[list[str]]]] = [
            (f"tasks.{n}", t.prompts, t.responses) for n, t in self.tasks.items()
        ]
        if self.general:
            gens.append(("general", self.general.prompts, self.general.responses))
        for n, t in self.tasks.items():
            for text in t.system:
                yield f"tasks.{n}.system", text
            for turns in t.context:
                for turn in turns:
                    yield f"tasks.{n}.context", turn.content
        for where, prompts, responses in gens:
            for p in prompts:
                yield where + ".prompts", p
            for part in responses:
                for r in part:
                    yield where + ".responses", r

    # -- derived views -------------------------------------------------------------------------

    def adapter_of(self, task: str) -> str:
        """The adapter a task belongs to in the suite's initial layout."""
        for adapter, members in self.adapters.items():
            if task in members:
                return adapter
        raise KeyError(task)

    def fingerprint(self) -> str:
        """A short content hash of the suite (used to cache builtin base models)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def fill(self, template: str, rng: random.Random) -> str:
        """Substitute each ``{slot}`` with a random value of that slot."""
        return _SLOT_RE.sub(lambda m: rng.choice(self.slots[m.group(1)]), template)

    def prompt_for(self, task: str, rng: random.Random) -> str:
        """A fresh prompt for ``task`` (generator suites) or a seed prompt (file suites)."""
        spec = self.tasks[task]
        if spec.prompts:
            return self.fill(rng.choice(spec.prompts), rng)
        return rng.choice(self.seed_examples(task)).prompt

    def request_for(self, task: str, rng: random.Random) -> tuple[tuple[Turn, ...], str]:
        """A fresh request of ``task``: the conversation before it (empty for a task without
        ``system`` or ``context``, which draws from ``rng`` exactly as :meth:`prompt_for`)
        and the prompt, their slots filled with the same values."""
        spec = self.tasks[task]
        if not spec.chat:
            return (), self.prompt_for(task, rng)
        values = {k: rng.choice(v) for k, v in self.slots.items()}
        prompt = _substitute(rng.choice(spec.prompts), values)
        return _conversation(spec, values, rng), prompt

    def seed_examples(self, task: str, *, seed: int = 0) -> list[Example]:
        """The task's seed data: its JSONL file, or ``examples_per_task`` generated pairs."""
        spec = self.tasks[task]
        if spec.data is not None:
            return read_jsonl_examples(self.base_dir / spec.data)
        return self._generate(spec.prompts, spec.responses, seed=seed, salt=task, spec=spec)

    def general_examples(self, *, seed: int = 0) -> list[Example]:
        """Retained general data (may be empty)."""
        if self.general_data is not None:
            return read_jsonl_examples(self.base_dir / self.general_data)
        if self.general is not None:
            return self._generate(
                self.general.prompts, self.general.responses, seed=seed, salt="__general__"
            )
        return []

    def _generate(
        self, prompts: list[str], responses: list[list[str]], *, seed: int, salt: str,
        spec: TaskSpec | None = None,
    ) -> list[Example]:
        digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        out: list[Example] = []
        for _ in range(self.examples_per_task):
            # One slot assignment per example so the name in the prompt matches the response.
            values = {k: rng.choice(v) for k, v in self.slots.items()}
            prompt = _substitute(rng.choice(prompts), values)
            response = "".join(_substitute(rng.choice(part), values) for part in responses)
            # Drawn last, and only for chat tasks, so other tasks' data stays as it was.
            context = _conversation(spec, values, rng) if spec is not None and spec.chat else ()
            out.append(Example(prompt, response, context))
        return out


def _conversation(spec: TaskSpec, values: dict[str, str], rng: random.Random) -> tuple[Turn, ...]:
    """A system turn (if the task has system prompts) and one of its contexts (if any)."""
    turns: list[Turn] = []
    if spec.system:
        turns.append(("system", _substitute(rng.choice(spec.system), values)))
    if spec.context:
        turns += [(t.role, _substitute(t.content, values)) for t in rng.choice(spec.context)]
    return tuple(turns)


def _substitute(template: str, values: dict[str, str]) -> str:
    return _SLOT_RE.sub(lambda m: values[m.group(1)], template)


def read_jsonl_examples(path: Path) -> list[Example]:
    """Read ``{"prompt", "response"}`` lines; errors name the file and the line."""
    if not path.is_file():
        raise SuiteError(f"{path}: data file not found")
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Example(str(row["prompt"]), str(row["response"])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SuiteError(
                    f"{path}:{lineno}: expected a JSON object with prompt and response ({exc})"
                ) from None
    if not out:
        raise SuiteError(f"{path}: no examples")
    return out


def validation_problems(exc: ValidationError) -> str:
    """``field.path: what is wrong; ...`` for an error message that names file and field."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
                     for err in exc.errors())


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_suite_path(ref: str | Path) -> Path:
    """Map ``builtin:<name>`` to its shipped file; leave paths alone."""
    text = str(ref)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        path = BUILTIN_DIR / f"{name}.yaml"
        if not NAME_RE.match(name) or not path.is_file():
            raise SuiteError(f"{text}: no such builtin suite (have: {', '.join(builtin_suites())})")
        return path
    return Path(text)


def load_suite(ref: str | Path) -> Suite:
    """Load and validate a suite file or builtin; raise :class:`SuiteError` on any problem."""
    path = resolve_suite_path(ref)
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{path}: suite file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: cannot read suite: {exc}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a YAML mapping with at least `tasks`")
    raw.pop("base_dir", None)
    try:
        suite = Suite(**raw, base_dir=path.parent)
    except ValidationError as exc:
        raise SuiteError(f"{path}: {validation_problems(exc)}") from None
    # Data files must exist and parse now, not at the first training run.
    for task in suite.tasks:
        suite.seed_examples(task)
    suite.general_examples()
    return suite
