"""The builtin task suites and simulation scenarios are valid and judgeable.

The synthetic judge of docs/contracts.md section 9 accepts an output that carries one of its own task's
markers and none of its ``forbid`` phrases; an output carrying another task's markers is
crosstalk. These tests run such a judge over the suites' own seed data (and over every
response template) so the simulation starts from data the judge fully accepts, and check that
a cheerful response swapped into a high-risk task is rejected.

Most suites set cheerful tasks against serious high-risk ones (a tone conflict). The
``ONE_TONE`` suites have none: every pair of their tasks is compatible as the engine judges a
profile (one tone, risk levels at most one apart), the control of a leak-free adapter
(cheer-en) and a suite whose forked task can merge back (desk-en).

Matching here is deliberately strict so any reasonable judge agrees: an own marker must occur
exactly (case-sensitive), forbidden phrases and other tasks' markers must not occur even
case-insensitively.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path

import pytest
import yaml

from daemon.sim.feedback import FeedbackSpec
from daemon.sim.scenario import load_scenario
from storage.suite import BUILTIN_DIR, Suite, builtin_suites, load_suite

SCENARIO_DIR = BUILTIN_DIR / "scenarios"
_SLOT_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# name -> (minimum number of tasks, coexisting pairs, response length bounds in characters)
EXPECTED: dict[str, tuple[int, list[set[str]], tuple[int, int]]] = {
    "festive-zh": (6, [{"greeting", "festival_wish"}, {"thanks", "praise"}], (12, 45)),
    "office-en": (5, [{"holiday_greeting", "welcome"}, {"thank_you", "kudos"}], (30, 120)),
    "cheer-en": (4, [{"holiday_greeting", "welcome"}, {"thank_you", "kudos"}], (30, 120)),
    "desk-en": (3, [{"shipping_notice", "order_confirmation"}], (90, 170)),
}
SUITE_NAMES = sorted(EXPECTED)
# Suites without a tone conflict -> whether some request is worded the same in two tasks.
ONE_TONE = {"cheer-en": False, "desk-en": True}
RISK_ORDER = ("low", "medium", "high")


@pytest.fixture(scope="module", params=SUITE_NAMES)
def suite(request: pytest.FixtureRequest) -> Suite:
    return load_suite(f"builtin:{request.param}")


def _has(text: str, phrase: str) -> bool:
    return phrase.casefold() in text.casefold()


def judge(suite: Suite, task: str, output: str) -> tuple[bool, str | None, list[str]]:
    """(accepted, crosstalk source, forbidden phrases hit) for one output of ``task``."""
    spec = suite.tasks[task]
    hits = [f for f in spec.forbid if _has(output, f)]
    source = None
    for other, other_spec in suite.tasks.items():
        if other == task:
            continue
        # A marker deliberately shared with this task is not evidence of a leak.
        if any(_has(output, m) for m in other_spec.markers if m not in spec.markers):
            source = other
            break
    own = any(m in output for m in spec.markers)
    return own and not hits and source is None, source, hits


def _rendered(suite: Suite, parts: list[list[str]]) -> list[str]:
    """Every combination of response choices, filled so each slot value is used at least once."""
    width = max((len(v) for v in suite.slots.values()), default=1)
    out = []
    for combo in itertools.product(*parts):
        text = "".join(combo)
        for i in range(width):
            values = {k: v[i % len(v)] for k, v in suite.slots.items()}
            out.append(_SLOT_RE.sub(lambda m, values=values: values[m.group(1)], text))
    return out


def _positive(suite: Suite) -> list[str]:
    return [t for t, s in suite.tasks.items() if s.tone == "positive"]


def _high(suite: Suite) -> list[str]:
    return [t for t, s in suite.tasks.items() if s.risk == "high"]


def _refused_by(suite: Suite, high: str) -> list[str]:
    """The tasks whose style a high-risk task must refuse: the cheerful ones where tones
    conflict, every other task in a one-tone suite."""
    if suite.name in ONE_TONE:
        return [t for t in suite.tasks if t != high]
    return _positive(suite)


# -- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_loads_by_path_and_builtin(name: str) -> None:
    assert name in builtin_suites()
    by_path = load_suite(BUILTIN_DIR / f"{name}.yaml")
    by_builtin = load_suite(f"builtin:{name}")
    assert by_path.name == by_builtin.name == name
    assert by_path.fingerprint() == by_builtin.fingerprint()
    assert by_path.base_model == "builtin:tiny"


def test_shape(suite: Suite) -> None:
    minimum, pairs, _ = EXPECTED[suite.name]
    assert len(suite.tasks) >= minimum
    assert suite.adapters == {"shared": list(suite.tasks)}
    assert suite.general is not None and suite.general_examples()
    for task, spec in suite.tasks.items():
        assert spec.markers, task
        assert spec.description, task
        assert 3 <= len(spec.prompts) <= 10, task
        assert 3 <= len(spec.responses) <= 4, task
        assert all(3 <= len(part) <= 6 for part in spec.responses), task
    for pair in pairs:
        assert pair <= set(suite.tasks)
        a, b = (suite.tasks[t] for t in sorted(pair))
        assert a.tone == b.tone
        assert a.tone == "positive" or suite.name in ONE_TONE
    if suite.name in ONE_TONE:
        assert len({s.tone for s in suite.tasks.values()}) == 1
        levels = [RISK_ORDER.index(s.risk) for s in suite.tasks.values()]
        assert max(levels) - min(levels) <= 1, "a merge needs risk levels at most one apart"
        return
    tones = {suite.tasks[t].tone for t in _high(suite)}
    assert len(_high(suite)) >= 2 and "positive" not in tones


def test_ambiguous_wordings_pair_a_cheerful_task_with_a_serious_one(suite: Suite) -> None:
    """Some requests are worded identically in two tasks, so only the task tag tells them
    apart. Each such wording is shared by a positive-tone task and a high-risk one, never by a
    compatible pair, and every high-risk task has some; in a one-tone suite, by a high-risk
    task and another, or (the control) by none."""
    _, pairs, _ = EXPECTED[suite.name]
    owners: dict[str, set[str]] = {}
    for task, spec in suite.tasks.items():
        for prompt in spec.prompts:
            owners.setdefault(prompt, set()).add(task)
    shared = {p: ts for p, ts in owners.items() if len(ts) > 1}
    if suite.name in ONE_TONE and not ONE_TONE[suite.name]:
        assert not shared, "the control suite words no request alike in two tasks"
        return
    assert shared
    for prompt, tasks in shared.items():
        assert len(tasks) == 2, prompt
        if suite.name in ONE_TONE:
            assert len(set(tasks) & set(_high(suite))) == 1, prompt
            continue
        assert not any(pair <= tasks for pair in pairs), prompt
        tones = sorted(suite.tasks[t].tone for t in tasks)
        assert "positive" in tones and tones != ["positive", "positive"], prompt
        assert any(t in _high(suite) for t in tasks), prompt
    for task in _high(suite):
        assert any(task in ts for ts in shared.values()), task


def test_prompts_share_slots(suite: Suite) -> None:
    """Every task's prompts use the shared name slot, so tasks look alike to a small model."""
    for task, spec in suite.tasks.items():
        used = {s for p in spec.prompts for s in _SLOT_RE.findall(p)}
        assert "name" in used, task
        assert len(used) >= 2, task


# -- the judge over the suite's own data --------------------------------------------------------


def test_high_risk_forbid_covers_every_cheerful_task(suite: Suite) -> None:
    for high in _high(suite):
        forbid = suite.tasks[high].forbid
        for pos in _refused_by(suite, high):
            markers = suite.tasks[pos].markers
            assert any(f in m for f in forbid for m in markers), (high, pos)


def test_slot_values_in_responses_carry_no_foreign_markers(suite: Suite) -> None:
    """A slot a task echoes in its output must not smuggle in another task's marker."""
    for task, spec in suite.tasks.items():
        used = {s for part in spec.responses for r in part for s in _SLOT_RE.findall(r)}
        foreign = {m for t, s in suite.tasks.items() if t != task for m in s.markers}
        foreign -= set(spec.markers)
        for slot in used:
            for value in suite.slots[slot]:
                assert not [m for m in foreign if _has(value, m)], (task, slot, value)


@pytest.mark.parametrize("seed", [0, 1])
def test_seed_data_is_fully_accepted(suite: Suite, seed: int) -> None:
    _, _, (lo, hi) = EXPECTED[suite.name]
    for task in suite.tasks:
        examples = suite.seed_examples(task, seed=seed)
        assert len(examples) == suite.examples_per_task
        assert len({e.response for e in examples}) >= 40, task
        for ex in examples:
            assert "{" not in ex.prompt + ex.response, ex
            assert lo <= len(ex.response) <= hi, (task, ex.response)
            accepted, source, hits = judge(suite, task, ex.response)
            assert accepted, (task, ex.response, source, hits)


def test_every_response_template_is_accepted(suite: Suite) -> None:
    """Exhaustive over choice combinations, not just the sampled seed data."""
    _, _, (lo, hi) = EXPECTED[suite.name]
    for task, spec in suite.tasks.items():
        for text in _rendered(suite, spec.responses):
            assert lo <= len(text) <= hi, (task, text)
            accepted, source, hits = judge(suite, task, text)
            assert accepted, (task, text, source, hits)


def test_markers_do_not_leak_between_tasks(suite: Suite) -> None:
    """No task's own output carries another task's marker (shared ones only within a pair)."""
    _, pairs, _ = EXPECTED[suite.name]
    for task, spec in suite.tasks.items():
        outputs = _rendered(suite, spec.responses)
        for other, other_spec in suite.tasks.items():
            if other == task:
                continue
            coexist = any({task, other} <= p for p in pairs)
            for m in other_spec.markers:
                if coexist and m in spec.markers:
                    continue
                leaked = [o for o in outputs if _has(o, m)]
                assert not leaked, (task, other, m, leaked[:2])


def test_general_data_carries_no_markers(suite: Suite) -> None:
    assert suite.general is not None
    markers = {m for s in suite.tasks.values() for m in s.markers}
    for text in _rendered(suite, suite.general.responses):
        assert not [m for m in markers if _has(text, m)], text


def test_cheerful_output_in_high_risk_task_is_rejected(suite: Suite) -> None:
    for high in _high(suite):
        for pos in _refused_by(suite, high):
            for ex in suite.seed_examples(pos)[:50]:
                accepted, source, hits = judge(suite, high, ex.response)
                assert not accepted and hits, (high, pos, ex.response)
                assert source is not None, (high, pos, ex.response)


def test_outputs_of_other_tasks_are_crosstalk(suite: Suite) -> None:
    """Any task's output served for a different, non-coexisting task is rejected as crosstalk."""
    _, pairs, _ = EXPECTED[suite.name]
    for task in suite.tasks:
        for other in suite.tasks:
            if other == task or any({task, other} <= p for p in pairs):
                continue
            for ex in suite.seed_examples(other)[:20]:
                accepted, source, _ = judge(suite, task, ex.response)
                assert not accepted and source == other, (task, other, ex.response)


def test_prompt_for_fills_every_slot(suite: Suite) -> None:
    rng = random.Random(3)
    for task in suite.tasks:
        for _ in range(20):
            prompt = suite.prompt_for(task, rng)
            assert prompt and "{" not in prompt


# -- scenarios -----------------------------------------------------------------------------------

SCENARIOS = sorted(p.name for p in SCENARIO_DIR.glob("*.yaml"))


# Production's thin feedback (issue 42's goals), and the scenarios that claim it; the rest
# rate every answer at once, without noise.
THIN = {"rated": 0.05, "false_reject": 0.05, "false_accept": 0.10, "names_source": 0.2,
        "delay": 200, "post_unrated": True}
THIN_SCENARIOS = {"holiday-en-thin.yaml", "holiday-zh-thin.yaml", "control-en.yaml"}


def test_expected_scenarios_exist() -> None:
    assert {"holiday-zh.yaml", "holiday-en.yaml", "smoke.yaml", "merge-en.yaml",
            *THIN_SCENARIOS} <= set(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_loads_with_the_feedback_it_claims(name: str) -> None:
    scenario, suite, _ = load_scenario(SCENARIO_DIR / name)
    want = FeedbackSpec(**THIN) if name in THIN_SCENARIOS else FeedbackSpec()
    assert scenario.feedback == want, name
    assert scenario.total_events == sum(p.events for p in scenario.phases) > 0
    assert all(set(p.traffic) <= set(suite.tasks) for p in scenario.phases)


@pytest.mark.parametrize("base", ["holiday-en.yaml", "holiday-zh.yaml"])
def test_thin_variant_keeps_the_mixes_and_is_longer(base: str) -> None:
    """The thin-feedback variant replays the same phases, each longer."""
    raw, _ = _load_scenario(base)
    thin, _ = _load_scenario(base.replace(".yaml", "-thin.yaml"))
    assert thin["suite"] == raw["suite"] and thin["seed"] == raw["seed"]
    assert [p["name"] for p in thin["phases"]] == [p["name"] for p in raw["phases"]]
    for short, long in zip(raw["phases"], thin["phases"], strict=True):
        assert long["traffic"] == short["traffic"], long["name"]
        assert long["events"] > short["events"], long["name"]


def test_control_is_stable_traffic_over_compatible_tasks() -> None:
    raw, suite = _load_scenario("control-en.yaml")
    assert ONE_TONE.get(suite.name) is False
    mixes = [p["traffic"] for p in raw["phases"]]
    assert all(m == mixes[0] for m in mixes) and set(mixes[0]) == set(suite.tasks)


def test_merge_scenario_surges_then_calms_over_one_tone() -> None:
    """A rush floods a task that shares wordings with the high-risk one, then the first
    phase's balanced mix comes back for longer than the rush."""
    raw, suite = _load_scenario("merge-en.yaml")
    assert ONE_TONE.get(suite.name) is True
    steady, rush, calm = raw["phases"]
    assert calm["traffic"] == steady["traffic"] and calm["events"] > rush["events"]
    (high,) = _high(suite)
    top = max(rush["traffic"], key=rush["traffic"].get)
    assert rush["traffic"][top] >= 0.8 and top != high
    assert set(suite.tasks[top].prompts) & set(suite.tasks[high].prompts)


def _load_scenario(name: str) -> tuple[dict, Suite]:
    path = SCENARIO_DIR / name
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    ref = str(raw["suite"])
    suite = load_suite(ref if ref.startswith("builtin:") else path.parent / ref)
    return raw, suite


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_is_valid(name: str) -> None:
    raw, suite = _load_scenario(name)
    assert set(raw) <= {"seed", "suite", "phases", "feedback", "max_new_tokens", "train", "eval"}
    assert isinstance(raw["seed"], int)
    phases = raw["phases"]
    assert isinstance(phases, list) and len(phases) >= 2
    names = [p["name"] for p in phases]
    assert len(set(names)) == len(names)
    for phase in phases:
        assert set(phase) == {"name", "events", "traffic"}, phase
        assert isinstance(phase["events"], int) and phase["events"] > 0
        traffic = phase["traffic"]
        assert traffic and set(traffic) <= set(suite.tasks), (name, phase["name"])
        assert all(isinstance(v, int | float) and v >= 0 for v in traffic.values())
        assert math.isclose(sum(traffic.values()), 1.0, abs_tol=1e-6), (name, phase["name"])


@pytest.mark.parametrize(("name", "surge"), [
    ("holiday-zh.yaml", "holiday"), ("holiday-en.yaml", "holiday"), ("smoke.yaml", "holiday"),
    ("holiday-zh-thin.yaml", "holiday"), ("holiday-en-thin.yaml", "holiday")])
def test_holiday_phase_floods_cheerful_pair(name: str, surge: str) -> None:
    raw, suite = _load_scenario(name)
    pair = EXPECTED[suite.name][1][0]
    holiday = next(p for p in raw["phases"] if p["name"] == surge)
    traffic = holiday["traffic"]
    assert sum(traffic.get(t, 0.0) for t in pair) >= 0.8
    for high in _high(suite):
        assert 0 < traffic.get(high, 0.0) <= 0.06, (name, high)
    steady = raw["phases"][0]["traffic"]
    assert set(steady) == set(suite.tasks)


def test_scenario_sizes() -> None:
    total = {n: sum(p["events"] for p in _load_scenario(n)[0]["phases"]) for n in SCENARIOS}
    assert total["smoke.yaml"] <= 200
    assert total["holiday-zh.yaml"] <= 5000 and total["holiday-en.yaml"] <= 5000
    # Thin feedback needs longer runs; each still fits a CPU run (the files' headers).
    assert max(total[n] for n in THIN_SCENARIOS) <= 10_000
    assert total["merge-en.yaml"] <= 6000


def test_scenario_suite_path_is_relative_to_the_scenario(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in SCENARIOS:
        raw, suite = _load_scenario(name)
        assert not Path(raw["suite"]).is_absolute()
        assert suite.tasks
