"""The upgrade hazard: a version records the base build it was trained on, and is never loaded
onto another build of the same ``base_model`` (builtin:tiny is rebuilt when its recipe or the
suite's texts change: same shapes, different weights and tokenizer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import Session, col

from storage.artifacts import ArtifactError, read_meta, verify_version, write_version
from storage.crud import create_job, set_routes, sync_suite
from storage.models import AdapterVersion
from storage.suite import Suite
from tests.training.conftest import SUITE_PATH, RoutingFeed
from tests.training.fast import LENIENT_GATE
from workers.training.base_model import (
    base_build,
    ensure_base,
    expected_build,
    find_lora_targets,
    quiet_peft,
)
from workers.training.checkpoint import META, pin_build
from workers.training.encode import PROMPT_FORMAT
from workers.training.generate import AdapterServer
from workers.training.job import evaluate_version, run_training_job

OLD = "tiny-00000000000000000000"  # a build that no longer exists: the base was rebuilt


def _write(artifacts: Path, bundle: Any, version: int, meta: dict[str, Any]) -> Path:
    """A version whose LoRA weights fit the current base's shapes (fresh, untrained)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=find_lora_targets(bundle.model), task_type="CAUSAL_LM")
    with quiet_peft():
        model = get_peft_model(bundle.model, lora)
        info = write_version(artifacts, "shared", version, meta=meta,
                             write_files=lambda tmp: model.save_pretrained(str(tmp)))
    model.unload()  # the bundle's base model without LoRA layers again
    return info.path


def test_version_of_another_build_is_refused(bundle: Any, suite: Suite, artifacts: Path,
                                             engine: Any) -> None:
    build = base_build(ensure_base(suite, artifacts))
    assert build.startswith("tiny-") and build != OLD
    tasks = sorted(suite.tasks)
    stale = _write(artifacts, bundle, 1, {"base_model": suite.base_model, "base_build": OLD,
                                          "tasks": tasks})
    legacy = _write(artifacts, bundle, 2, {"base_model": suite.base_model, "tasks": tasks})
    current = _write(artifacts, bundle, 3, {"base_model": suite.base_model, "base_build": build,
                                            "tasks": tasks})
    server = AdapterServer(suite, artifacts, device="cpu")
    with pytest.raises(ArtifactError, match=f"trained on base build '{OLD}'.*build '{build}'.*"
                                            "retrain the adapter"):
        server.generate("apology", ["帮我道个歉"], adapter="shared", version=1, path=stale,
                        sha256=verify_version(stale), max_new_tokens=4)
    # Written by older code (no build recorded): loads as before; the same build loads.
    for v, path in ((2, legacy), (3, current)):
        assert server.generate("apology", ["帮我道个歉"], adapter="shared", version=v, path=path,
                               sha256=verify_version(path), max_new_tokens=4)
    # ``adaptd eval NAME@VERSION`` refuses it too (before evaluating anything).
    with pytest.raises(ArtifactError, match=f"base build '{OLD}'"):
        evaluate_version(engine, artifacts_dir=artifacts, suite=suite, adapter="shared",
                         version=1, device="cpu")


def test_version_of_another_prompt_format_is_refused(bundle: Any, suite: Suite,
                                                    artifacts: Path) -> None:
    """Same build, other prompt format: the LoRA weights learnt prompts built differently."""
    build = base_build(ensure_base(suite, artifacts))
    meta = {"base_model": suite.base_model, "base_build": build, "tasks": sorted(suite.tasks)}
    other = _write(artifacts, bundle, 1, {**meta, "prompt_format": PROMPT_FORMAT + 1})
    legacy = _write(artifacts, bundle, 2, meta)  # before formats were recorded: format 1
    server = AdapterServer(suite, artifacts, device="cpu")
    with pytest.raises(ArtifactError, match=f"prompt format {PROMPT_FORMAT + 1} but this adaptd "
                                            f"builds prompts in format {PROMPT_FORMAT}"):
        server.generate("apology", ["帮我道个歉"], adapter="shared", version=1, path=other,
                        sha256=verify_version(other), max_new_tokens=4)
    assert PROMPT_FORMAT == 1  # bumping it makes ``legacy`` unservable too, by design
    assert server.generate("apology", ["帮我道个歉"], adapter="shared", version=2, path=legacy,
                           sha256=verify_version(legacy), max_new_tokens=4)


def test_job_records_its_build_and_starts_fresh_from_a_parent_of_another_build(
    engine: Any, suite: Suite, artifacts: Path, bundle: Any, routing_feed: RoutingFeed,
    train_cfg: Any, eval_cfg: Any,
) -> None:
    tasks = sorted(suite.tasks)
    v1 = _write(artifacts, bundle, 1, {"base_model": suite.base_model, "base_build": OLD,
                                       "tasks": tasks})
    v2 = _write(artifacts, bundle, 2, {"base_model": suite.base_model, "base_build": OLD,
                                       "tasks": tasks})
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        job = create_job(session, adapter="shared", kind="retrain")
        session.flush()
        # v1 serves every task; v2 is this job's candidate from an attempt before the rebuild.
        session.add(AdapterVersion(adapter="shared", version=1, path=str(v1),
                                   sha256=verify_version(v1), status="promoted"))
        session.add(AdapterVersion(adapter="shared", version=2, path=str(v2),
                                   sha256=verify_version(v2), status="candidate", job_id=job.id))
        set_routes(session, routes={t: {"adapter": "shared", "version": 1, "path": str(v1),
                                        "sha256": verify_version(v1)} for t in tasks},
                   reason="trained before the base was rebuilt")
        session.commit()
        job_id = job.id
    assert job_id is not None
    out = run_training_job(job_id, engine=engine, redis_client=routing_feed.client,
                           key_prefix=routing_feed.prefix, artifacts_dir=artifacts, suite=suite,
                           worker_id="w1", lease_seconds=30,
                           train_config=train_cfg(steps=4, affinity_measurements=0),
                           eval_config=eval_cfg, gate_config=LENIENT_GATE, device="cpu")
    # Neither adopted v2 nor continued from v1: trained v3 from fresh LoRA weights, compared
    # with the bare base model (v1 cannot run on this base), and promoted over v1.
    assert (out.status, out.version) == ("promoted", 3), out.error
    assert {s["baseline"] for s in out.eval["production"]["tasks"].values()} == {"base"}
    with Session(engine) as session:
        rows = {r.version: r for r in session.execute(
            select(AdapterVersion).where(col(AdapterVersion.adapter) == "shared")).scalars()}
        assert rows[2].status == "rejected" and OLD in rows[2].reason
        assert rows[3].parent_version == 1
    meta = read_meta(Path(rows[3].path))
    assert meta["base_build"] == base_build(ensure_base(suite, artifacts)) == bundle.build
    assert meta["base_model"] == suite.base_model
    assert meta["prompt_format"] == PROMPT_FORMAT
    assert (meta["init_from"], meta["parent_version"]) == ("", 1)


def test_checkpoints_of_another_build_are_not_resumed(tmp_path: Path) -> None:
    work = tmp_path / "job-1"
    work.mkdir()
    (work / META).write_text("{}")
    pin_build(work, "tiny-a")  # no marker yet (older code): the checkpoint is kept
    assert (work / META).is_file()
    pin_build(work, "tiny-a")
    assert (work / META).is_file()
    pin_build(work, "tiny-b")  # the base was rebuilt since: start over
    assert not (work / META).exists()
    assert (work / "base-build").read_text() == "tiny-b"


def test_expected_build_resolves_without_building(suite: Suite, artifacts: Path,
                                                  tmp_path: Path) -> None:
    """What the policy tick compares served versions with: the build a job would load."""
    built = ensure_base(suite, artifacts)
    assert expected_build(suite, artifacts) == base_build(built)
    # Never builds: another artifacts directory has no base yet, and still gets none.
    assert expected_build(suite, tmp_path) == base_build(built)
    assert not (tmp_path / "_base").exists()
    local = suite.model_copy(update={"base_model": str(built)})
    assert expected_build(local, tmp_path) == built.name
    missing = suite.model_copy(update={"base_model": "nobody/not-in-the-cache"})
    assert expected_build(missing, tmp_path) is None


def test_expected_build_loads_no_torch(suite: Suite, artifacts: Path) -> None:
    """The policy tick resolves the build inside the ingest/policy worker, which must not
    carry torch and transformers (~400 MB resident) for a hash; same build name as the
    process that built the base."""
    code = ("import sys; from pathlib import Path; from storage.suite import load_suite; "
            "from workers.training.base_model import expected_build; "
            "print(expected_build(load_suite(sys.argv[1]), Path(sys.argv[2]))); "
            "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(SUITE_PATH), str(artifacts)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == [base_build(ensure_base(suite, artifacts)), "[]"]
