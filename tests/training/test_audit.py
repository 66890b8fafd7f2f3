"""The self-audit: a high-risk adapter's leaks on fresh requests are found and trained away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.suite import Suite
from tests.support.suites import as_file_suite
from workers.training.audit import audit_adapter, audit_requests, find_leaks
from workers.training.data import Sample, assemble
from workers.training.sampler import default_ratios
from workers.training.style import build_detector, crosstalk_source, suite_markers
from workers.training.trainer import train_adapter


def _leak_rate(model: Any, bundle: Any, suite: Suite, eval_cfg: Any, seed: int) -> float:
    leaks = find_leaks(model, bundle.tokenizer, suite, "apology", samples=96, seed=seed,
                       detector=build_detector(suite), ecfg=eval_cfg)
    return len(leaks) / 96


def test_audit_trains_away_the_leaks_it_finds(bundle: Any, suite: Suite, train_cfg: Any,
                                              eval_cfg: Any) -> None:
    # An apology-only adapter after 4 steps still answers many fresh requests in the cheerful
    # tasks' style (the base model saw all three tasks' texts untagged).
    data = assemble(suite, ["apology"])
    cfg = train_cfg(steps=4, audit={"rounds": 2, "samples": 64, "steps": 16})
    ratios = default_ratios(data.sizes())
    model = train_adapter(bundle, data, ratios=ratios, config=cfg,
                          general_share=suite.general_share).model
    detector = build_detector(suite)
    before = _leak_rate(model, bundle, suite, eval_cfg, seed=777)  # not an audit seed
    audited, rounds = audit_adapter(bundle, model, data, suite=suite, ratios=ratios, config=cfg,
                                    general_share=suite.general_share, detector=detector,
                                    ecfg=eval_cfg)
    after = _leak_rate(audited, bundle, suite, eval_cfg, seed=777)
    assert before >= 0.05, f"the planted condition did not hold: {before:.2f} leaked"
    # What round 1 found was trained against (the data had no negatives before), and the
    # audited adapter leaks less on requests the audit never saw.
    assert rounds[0]["leaks"]["apology"] > 0 and rounds[0]["steps"] == 16
    assert rounds[0]["negatives_drawn"]["apology"] > 0
    assert after < before, (before, after, rounds)
    assert data.tasks["apology"].negatives == []  # the caller's data is untouched


def test_an_audit_trains_on_every_round_that_finds_leaks_and_ends_at_a_clean_one(
        bundle: Any, suite: Suite, train_cfg: Any, eval_cfg: Any) -> None:
    data = assemble(suite, ["apology"])
    ratios = default_ratios(data.sizes())
    model = train_adapter(bundle, data, ratios=ratios, config=train_cfg(steps=4),
                          general_share=suite.general_share).model
    cfg = train_cfg(steps=4, audit={"rounds": 3, "samples": 64, "steps": 8})
    _, rounds = audit_adapter(bundle, model, data, suite=suite, ratios=ratios, config=cfg,
                              general_share=suite.general_share,
                              detector=build_detector(suite), ecfg=eval_cfg)
    assert rounds[0]["leaks"]["apology"] > 0 and rounds[0]["steps"] == 8
    for r in rounds:
        found = r["leaks"]["apology"] > 0
        # A round that finds anything trains on it, even more than the round before found.
        assert (r["steps"], r.get("stopped")) == ((8, None) if found else (0, "clean")), rounds
    assert len(rounds) == 3 or rounds[-1].get("stopped") == "clean"


def test_found_outputs_carry_another_tasks_style_and_held_out_prompts_are_skipped(
        bundle: Any, suite: Suite, train_cfg: Any, eval_cfg: Any) -> None:
    data = assemble(suite, ["apology"])
    model = train_adapter(bundle, data, ratios=default_ratios(data.sizes()),
                          config=train_cfg(steps=4), general_share=suite.general_share).model
    detector = build_detector(suite)
    markers = suite_markers(suite)
    found = find_leaks(model, bundle.tokenizer, suite, "apology", samples=64, seed=1,
                       detector=detector, ecfg=eval_cfg)
    assert found, "a 4-step adapter should leak"
    for s in found:
        assert s.kind == "negative" and s.task == "apology"
        assert crosstalk_source(s.response, "apology", detector=detector, markers=markers,
                                margin=eval_cfg.crosstalk_margin) is not None
    # Every request the generator can make, skipped: nothing is asked, nothing is found.
    prompts = {s.prompt for s in found}
    again = find_leaks(model, bundle.tokenizer, suite, "apology", samples=64, seed=1,
                       detector=detector, ecfg=eval_cfg, skip=prompts)
    assert not {s.prompt for s in again} & prompts


def test_nothing_to_audit_returns_the_model_as_it_is(bundle: Any, suite: Suite, train_cfg: Any,
                                                     eval_cfg: Any) -> None:
    data = assemble(suite, ["greeting"])  # low risk: not audited by default
    model = train_adapter(bundle, data, ratios=default_ratios(data.sizes()),
                          config=train_cfg(steps=2), general_share=suite.general_share).model
    for cfg in (train_cfg(steps=2), train_cfg(steps=2, audit={"rounds": 0})):
        same, rounds = audit_adapter(bundle, model, data, suite=suite, ratios={"greeting": 1.0},
                                     config=cfg, general_share=0.3, detector=None, ecfg=eval_cfg)
        assert same is model and rounds == []
    # Audit the low-risk level too, and the greeting task is sampled.
    cfg = train_cfg(steps=2, audit={"rounds": 1, "samples": 8, "steps": 2,
                                    "risks": ["low", "high"]})
    _, rounds = audit_adapter(bundle, model, data, suite=suite, ratios={"greeting": 1.0},
                              config=cfg, general_share=0.3, detector=None, ecfg=eval_cfg)
    assert [set(r["leaks"]) for r in rounds] == [{"greeting"}]
    # Flagged by the engine (its users saw it leak), greeting is audited whatever its risk,
    # in the first ``flagged_rounds`` rounds only; with 0 it is not audited at all.
    cfg = train_cfg(steps=2, audit={"rounds": 3, "samples": 8, "steps": 2})
    _, rounds = audit_adapter(bundle, model, data, suite=suite, ratios={"greeting": 1.0},
                              config=cfg, general_share=0.3, detector=None, ecfg=eval_cfg,
                              flagged=["greeting", "apology"])  # apology: not in the adapter
    assert [set(r["leaks"]) for r in rounds] == [{"greeting"}]
    off = train_cfg(steps=2, audit={"rounds": 3, "flagged_rounds": 0})
    same, rounds = audit_adapter(bundle, model, data, suite=suite, ratios={"greeting": 1.0},
                                 config=off, general_share=0.3, detector=None, ecfg=eval_cfg,
                                 flagged=["greeting"])
    assert same is model and rounds == []


def test_a_task_without_generators_is_audited_on_the_requests_it_is_known_to_get(
        bundle: Any, suite: Suite, train_cfg: Any, eval_cfg: Any, tmp_path: Path) -> None:
    files = as_file_suite(suite, tmp_path)
    data = assemble(files, ["apology"])
    seeds = {e.prompt for e in files.seed_examples("apology")}
    # A user's rejected answer to a request no seed has: where production really failed.
    asked_by_user = "客户说合同又出了问题，帮我回一句"
    assert asked_by_user not in seeds
    data.tasks["apology"].negatives.append(Sample("apology", asked_by_user, "新年快乐~",
                                                  "negative"))
    known = [s.prompt for s in (*data.tasks["apology"].train, *data.tasks["apology"].negatives)]
    asked = audit_requests(files, "apology", samples=512, seed=3, known=known)
    assert asked_by_user in asked and set(asked) <= set(known)
    assert set(audit_requests(files, "apology", samples=64, seed=3)) <= seeds  # nothing known
    # A task with generators asks fresh requests, whatever is known.
    fresh = audit_requests(suite, "apology", samples=64, seed=3, known=[asked_by_user])
    assert asked_by_user not in fresh and len(fresh) == 64
    # End to end: a 4-step adapter leaks on those requests too, and the round trains.
    cfg = train_cfg(steps=4, audit={"rounds": 1, "samples": 64, "steps": 4})
    ratios = default_ratios(data.sizes())
    model = train_adapter(bundle, data, ratios=ratios, config=cfg,
                          general_share=files.general_share).model
    _, rounds = audit_adapter(bundle, model, data, suite=files, ratios=ratios, config=cfg,
                              general_share=files.general_share, detector=build_detector(files),
                              ecfg=eval_cfg)
    assert rounds[0]["leaks"]["apology"] > 0 and rounds[0]["steps"] == 4
