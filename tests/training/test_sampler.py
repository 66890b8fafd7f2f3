"""The mixture sampler: a ratio is what the model actually sees."""

from __future__ import annotations

from collections import Counter

import pytest

from policies.ratios import RatioConfig
from workers.training.sampler import (
    GENERAL,
    NEG_SUFFIX,
    MixtureSampler,
    default_ratios,
    source_ratios,
    stage_task_ratios,
)


@pytest.mark.parametrize("ratios", [
    {"a": 0.5, "b": 0.3, "c": 0.2},
    {"a": 0.85, "b": 0.1, "c": 0.05},
    {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3},
])
def test_counts_match_ratios(ratios: dict[str, float]) -> None:
    sampler = MixtureSampler({"a": 40, "b": 7, "c": 300}, seed=3)
    seen: Counter[str] = Counter()
    batches = 50
    for _ in range(batches):
        sources = sampler.plan("s0", ratios, 16)
        # Content is drawn from the pool of the planned source.
        for s in sources:
            assert 0 <= sampler.draw(s) < sampler.sizes[s]
        seen.update(sources)
    total = batches * 16
    for task, r in ratios.items():
        assert abs(seen[task] - r * total) <= 1.0, (task, seen[task], r * total)


def test_every_batch_follows_the_ratios() -> None:
    sampler = MixtureSampler({"a": 10, "b": 10}, seed=0)
    for _ in range(20):
        batch = Counter(sampler.plan("s0", {"a": 0.75, "b": 0.25}, 8))
        assert abs(batch["a"] - 6) <= 1


def test_general_share_and_negatives_are_carved_out() -> None:
    src = source_ratios({"a": 0.5, "b": 0.5}, general_share=0.3, negative_share=0.1,
                        has_negatives={"a": True}, has_general=True)
    assert src[GENERAL] == pytest.approx(0.3)
    assert src["a"] + src["a" + NEG_SUFFIX] == pytest.approx(0.35)
    assert src["a" + NEG_SUFFIX] == pytest.approx(0.035)
    assert src["b"] == pytest.approx(0.35)
    assert sum(src.values()) == pytest.approx(1.0)


def test_epochs_cover_every_example_once() -> None:
    sampler = MixtureSampler({"a": 13}, seed=1)
    first = [sampler.draw("a") for _ in range(13)]
    second = [sampler.draw("a") for _ in range(13)]
    assert sorted(first) == list(range(13)) == sorted(second)
    assert first != second  # a new permutation per epoch


def test_state_round_trip_continues_identically() -> None:
    a = MixtureSampler({"x": 9, "y": 5}, seed=7)
    for _ in range(5):
        [a.draw(s) for s in a.plan("s0", {"x": 0.6, "y": 0.4}, 4)]
    b = MixtureSampler({"x": 9, "y": 5}, seed=7)
    b.load_state(a.state())
    for _ in range(5):
        pa, pb = a.plan("s0", {"x": 0.6, "y": 0.4}, 4), b.plan("s0", {"x": 0.6, "y": 0.4}, 4)
        assert pa == pb
        assert [a.draw(s) for s in pa] == [b.draw(s) for s in pb]


def test_default_ratios_temperature_floor_cap() -> None:
    r = default_ratios({"big": 10_000, "mid": 100, "tiny": 1},
                       RatioConfig(temperature=2.0, floor=0.1, cap=0.7))
    assert sum(r.values()) == pytest.approx(1.0)
    assert r["tiny"] >= 0.1 - 1e-9 and r["big"] <= 0.7 + 1e-9
    assert r["big"] > r["mid"] > r["tiny"]
    # Temperature flattens: the share of "big" is far below its data share (0.99).
    assert r["big"] < 0.9


def test_per_task_stage_blocks_follow_ratios() -> None:
    ratios = {"a": 0.5, "b": 0.25, "c": 0.25}
    owners = [next(iter(stage_task_ratios("per_task", ratios, step_in_stage=i, stage_len=40)))
              for i in range(40)]
    assert Counter(owners) == {"a": 20, "b": 10, "c": 10}
    assert owners == sorted(owners)  # contiguous blocks
    hard = stage_task_ratios("hard", ratios, step_in_stage=0, stage_len=5, hard_tasks=["b"])
    assert hard == {"b": 0.25}


def test_a_job_without_ratios_takes_the_engines_ratio_config() -> None:
    from workers.training.job import _ratios

    sizes, tasks = {"big": 10_000, "tiny": 10}, ["big", "tiny"]
    flat = RatioConfig(temperature=100.0, floor=0.0, cap=1.0)
    assert _ratios({}, None, sizes, tasks, None) == default_ratios(sizes)
    taken = _ratios({}, None, sizes, tasks, flat)
    assert taken == default_ratios(sizes, flat)
    assert taken["tiny"] > default_ratios(sizes)["tiny"] + 0.1  # the config made a difference
    # Ratios the job or the adapter row carries win over any prior.
    assert _ratios({"ratios": {"big": 1, "tiny": 3}}, None, sizes, tasks, flat) == {
        "big": 0.25, "tiny": 0.75}
