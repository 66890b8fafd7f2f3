"""Simulation scenarios (docs/contracts.md section 9): a seed, a suite, phases of traffic and
how users give feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from daemon.sim.feedback import FeedbackSpec
from storage.suite import BUILTIN_DIR, Suite, SuiteError, load_suite, validation_problems


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    events: int = Field(ge=1, le=10_000_000)
    traffic: dict[str, float] = Field(min_length=1)

    @field_validator("traffic")
    @classmethod
    def _weights(cls, traffic: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in traffic.values()):
            raise ValueError("traffic weights must be >= 0")
        total = sum(traffic.values())
        if total <= 0:
            raise ValueError("traffic weights must not all be 0")
        return {task: w / total for task, w in traffic.items()}  # normalise


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    suite: str
    phases: list[Phase] = Field(min_length=1)
    # How users rate the answers (default: every answer rated at once, without noise).
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    # For traffic longer than the simulation's defaults: the answer length the app allows,
    # and TrainConfig / EvalConfig overrides over the simulation's own (e.g. ``max_len``).
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @field_validator("train", "eval")
    @classmethod
    def _overrides(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from workers.training.config import CONFIG_GROUPS

        CONFIG_GROUPS[str(info.field_name)].model_validate(value)
        return value

    @property
    def total_events(self) -> int:
        return sum(p.events for p in self.phases)


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in (BUILTIN_DIR / "scenarios").glob("*.yaml"))


def resolve_scenario(ref: str | Path) -> Path:
    text = str(ref)
    if text.startswith("builtin:"):
        path = BUILTIN_DIR / "scenarios" / f"{text.removeprefix('builtin:')}.yaml"
        if not path.is_file():
            raise SuiteError(f"{text}: no such builtin scenario (have: {builtin_scenarios()})")
        return path
    return Path(text)


def load_scenario(ref: str | Path) -> tuple[Scenario, Suite, str]:
    """Load a scenario and its suite; return (scenario, suite, suite reference).

    The suite path is relative to the scenario file; ``builtin:<name>`` works too.
    """
    path = resolve_scenario(ref)
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{path}: scenario file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: cannot read scenario: {exc}") from None
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(f"{path}: {validation_problems(exc)}") from None
    suite_ref = scenario.suite
    if not suite_ref.startswith("builtin:"):
        suite_ref = str((path.parent / suite_ref).resolve())
    suite = load_suite(suite_ref)
    for i, phase in enumerate(scenario.phases):
        unknown = sorted(set(phase.traffic) - set(suite.tasks))
        if unknown:
            raise SuiteError(f"{path}: phases.{i}.traffic: unknown tasks {unknown}; "
                             f"the suite has {sorted(suite.tasks)}")
    return scenario, suite, suite_ref
