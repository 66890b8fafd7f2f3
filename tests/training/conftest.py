"""Shared fixtures: a small suite, its builtin:tiny base built once per session, SQLite DBs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.suite import Suite, load_suite
from tests.training.fast import fast_eval_config, fast_train_config

HERE = Path(__file__).parent
SUITE_PATH = HERE / "suite.yaml"
REPO = HERE.parent.parent


class FakeRedis:
    """Records publish() calls (the job only publishes)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish(self, channel: str, message: str) -> int:
        self.published.append((channel, message))
        return 1


@pytest.fixture(scope="session")
def suite() -> Suite:
    return load_suite(SUITE_PATH)


@pytest.fixture(scope="session")
def base_root(tmp_path_factory: pytest.TempPathFactory, suite: Suite) -> Path:
    """An artifacts dir whose ``_base`` holds the suite's builtin:tiny (built once)."""
    from workers.training.base_model import ensure_base

    root = tmp_path_factory.mktemp("base-artifacts")
    ensure_base(suite, root)
    return root


@pytest.fixture()
def artifacts(tmp_path: Path, base_root: Path) -> Path:
    """A fresh artifacts dir sharing the session's base model (symlinked ``_base``)."""
    path = tmp_path / "artifacts"
    path.mkdir()
    os.symlink(base_root / "_base", path / "_base")
    return path


@pytest.fixture()
def db_url(tmp_path: Path) -> Iterator[str]:
    from storage.db import migrate

    url = f"sqlite:///{tmp_path / 'adaptd.db'}"
    migrate(url)
    yield url


@pytest.fixture()
def engine(db_url: str) -> Iterator[Any]:
    from storage.db import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def bundle(base_root: Path, suite: Suite) -> Any:
    """A freshly loaded base model (training wraps it in place, so one per test)."""
    from workers.training.base_model import load_base

    return load_base(suite, base_root, device="cpu")


@pytest.fixture()
def fake_redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture()
def train_cfg() -> Any:
    """Factory: a small, fast TrainConfig with overrides."""
    return fast_train_config


@pytest.fixture()
def eval_cfg() -> Any:
    return fast_eval_config()
