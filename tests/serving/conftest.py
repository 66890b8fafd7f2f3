"""Session fixtures of the serving tests: the builtin suite's base model, one adapter version
trained by the real job runner, and one real vLLM replica shared by every test (``make vllm``
builds its environment; ``ADAPTD_VLLM_VENV`` points elsewhere)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from daemon.settings import Settings
from daemon.vllm import VLLMServer
from storage.crud import create_job, sync_suite
from storage.db import make_engine, migrate
from storage.suite import Suite, load_suite
from tests.training.fast import LENIENT_GATE, fast_eval_config
from workers.training.config import TrainConfig

SUITE = "builtin:festive-zh"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def serving_suite() -> Suite:
    return load_suite(SUITE)


@pytest.fixture(scope="session")
def base_root(tmp_path_factory: pytest.TempPathFactory, serving_suite: Suite) -> Path:
    """An artifacts dir whose ``_base`` is the session's base cache (tests/conftest.py's
    ``share_base_cache``: the loop tests build the same suite's base there)."""
    from workers.training.base_model import ensure_base

    cache = Path(os.environ.get("ADAPTD_TEST_BASE_CACHE") or
                 tmp_path_factory.getbasetemp() / "adaptd-base-cache")
    cache.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("serving-artifacts")
    (root / "_base").symlink_to(cache.resolve(), target_is_directory=True)
    ensure_base(serving_suite, root)
    return root


@pytest.fixture(scope="session")
def bundle(base_root: Path, serving_suite: Suite) -> Any:
    from workers.training.base_model import load_base

    return load_base(serving_suite, base_root, device="cpu")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, base_root: Path,
            serving_suite: Suite) -> Path:
    """One version of the suite's shared adapter, trained briefly by the real job runner."""
    return train_version(serving_suite, base_root, tmp_path_factory.mktemp("serving-train"))


def train_version(suite: Suite, base_root: Path, work: Path) -> Path:
    """Train ``shared@1`` of ``suite`` in ``work`` (sharing ``base_root``'s built bases) with
    the real job runner; return the version's directory."""
    from workers.training.job import run_training_job

    artifacts = work / "artifacts"
    artifacts.mkdir(parents=True)
    (artifacts / "_base").symlink_to((base_root / "_base").resolve(), target_is_directory=True)
    url = f"sqlite:///{work / 'train.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        sync_suite(session, suite=suite)
        job = create_job(session, adapter="shared", kind="retrain", params={})
        session.commit()
        assert job.id is not None
        job_id = job.id
    out = run_training_job(
        job_id, engine=engine, redis_client=None, key_prefix="t:", artifacts_dir=artifacts,
        suite=suite, worker_id="w", train_config=TrainConfig(
            steps=6, batch_examples=8, checkpoint_every=6, affinity_measurements=0,
            warmup_steps=1, audit={"rounds": 0}),
        eval_config=fast_eval_config(), gate_config=LENIENT_GATE, device="cpu")
    assert out.status == "promoted", out
    engine.dispose()
    return artifacts / "shared" / "v1"


@pytest.fixture(scope="session")
def wide(tmp_path_factory: pytest.TempPathFactory, base_root: Path, serving_suite: Suite) -> Path:
    """PEFT files of a rank-32 LoRA on the base: above the replica's --max-lora-rank 16."""
    from peft import LoraConfig, get_peft_model

    from workers.training.base_model import find_lora_targets, load_base

    model = load_base(serving_suite, base_root, device="cpu").model
    peft = get_peft_model(model, LoraConfig(r=32, target_modules=find_lora_targets(model)))
    out = tmp_path_factory.mktemp("wide")
    peft.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory, base_root: Path,
         serving_suite: Suite) -> Iterator[VLLMServer]:
    from workers.training.base_model import ensure_base

    venv = Settings().vllm_venv
    if not venv.is_absolute():
        venv = REPO / venv
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(venv, ensure_base(serving_suite, base_root), log_path=log) as server:
        yield server


@pytest.fixture
def serving_db(tmp_path: Path, serving_suite: Suite) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'adaptd.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        sync_suite(session, suite=serving_suite)
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path
