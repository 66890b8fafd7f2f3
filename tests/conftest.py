"""Shared fixtures: real Redis, real SQLite/PostgreSQL, real HTTP, real Celery workers.

Every test gets its own Redis key prefix and its own database, so tests never see each
other's data. ``ADAPTD_TEST_PG_URL`` points at the PostgreSQL server (default: the local one,
trust auth, database ``test``); each test that asks for PostgreSQL gets a fresh database.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from daemon import procs
from daemon.api import create_app
from daemon.settings import Settings
from storage.crud import sync_suite
from storage.db import make_engine, migrate, session_scope
from storage.suite import load_suite
from tests.helpers import SECRET

# A test that needs the built tiny base model (the session builds it once, about a minute of
# CPU) trains or generates with it: slow, so `pytest -m "not slow"` (`make test-fast`) leaves
# it out. Other slow tests carry the marker themselves.
NEEDS_A_BASE = "base_root"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if NEEDS_A_BASE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


PG_URL = os.environ.get("ADAPTD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SUITE = "builtin:festive-zh"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis if it answers, else a private one for the session."""
    url = os.environ.get("ADAPTD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if procs.redis_answers(url):
        yield url
        return
    port = procs.free_port()
    proc = procs.start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    procs.stop(proc)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix; its keys are deleted afterwards."""
    value = f"t{uuid.uuid4().hex[:10]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{value}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'adaptd.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    admin = make_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"adaptd_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run a test on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def make_settings(redis_url: str, prefix: str, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url, "key_prefix": prefix, "webhook_secret": SECRET,
            "database_url": f"sqlite:///{tmp_path / 'adaptd.db'}", "suite": SUITE,
            "artifacts_dir": tmp_path / "artifacts", "admin_token": "admin-token-for-tests",
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def share_base_cache(artifacts_dir: Path, tmp_path: Path) -> None:
    """Point ``artifacts_dir``'s built base models at the session's cache (what
    ``adaptd simulate``'s ``base_cache`` does for the loop tests), so a test that trains with
    the suite's builtin base reuses the one an earlier test built instead of building its own."""
    cache = tmp_path.parent / "adaptd-base-cache"
    cache.mkdir(parents=True, exist_ok=True)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    (artifacts_dir / "_base").symlink_to(cache.resolve(), target_is_directory=True)


def prepared_engine(settings: Settings) -> Engine:
    """Migrate the settings' database and register the suite's tasks."""
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        sync_suite(session, suite=load_suite(settings.suite))
    return engine


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = prepared_engine(settings)
    yield eng
    eng.dispose()


class LiveServer:
    """uvicorn serving the real app on a free port in a background thread."""

    def __init__(self, app: Any):
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_api(settings: Settings, engine: Engine) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings, engine=engine)) as server:
        yield server
