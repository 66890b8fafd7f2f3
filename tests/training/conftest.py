"""Shared fixtures: a small suite, its builtin:tiny base built once per session, SQLite DBs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from storage.suite import Suite, load_suite
from tests.training.fast import fast_eval_config, fast_train_config

HERE = Path(__file__).parent
SUITE_PATH = HERE / "suite.yaml"
REPO = HERE.parent.parent


class RoutingFeed:
    """A real Redis client for the job plus a subscription to its routing channel."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.channel = f"{prefix}routing"
        self._sub = self.client.pubsub(ignore_subscribe_messages=True)
        self._sub.subscribe(self.channel)
        self._sub.get_message(timeout=1.0)  # the subscribe confirmation

    def published(self, wait: float = 0.5) -> list[tuple[str, str]]:
        """(channel, message) pairs published since the last call."""
        out = []
        while (msg := self._sub.get_message(timeout=wait)) is not None:
            out.append((msg["channel"].decode(), msg["data"].decode()))
        return out

    def close(self) -> None:
        self._sub.close()
        self.client.close()


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
def routing_feed(redis_url: str, prefix: str) -> Iterator[RoutingFeed]:
    feed = RoutingFeed(redis_url, prefix)
    yield feed
    feed.close()


@pytest.fixture()
def train_cfg() -> Any:
    """Factory: a small, fast TrainConfig with overrides."""
    return fast_train_config


@pytest.fixture()
def eval_cfg() -> Any:
    return fast_eval_config()
