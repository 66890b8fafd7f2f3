"""The storage reads behind /metrics and the CLI, on SQLite and PostgreSQL, and the metrics
the API serves from them."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlmodel import Session

from daemon.api import create_app
from daemon.settings import Settings
from storage import crud
from storage.db import session_scope
from storage.models import AdapterVersion, TrainingJob
from tests.conftest import LiveServer, prepared_engine


def _version(adapter: str, version: int, status: str, quality: float) -> AdapterVersion:
    return AdapterVersion(adapter=adapter, version=version, path=f"/a/{adapter}/v{version}",
                          sha256="0" * 64, status=status,
                          eval={"candidate": {"tasks": {"greeting": {"quality": quality}}}})


def _job(adapter: str, started: float | None, finished: float | None) -> TrainingJob:
    return TrainingJob(adapter=adapter, status="succeeded" if finished else "running",
                       started_at=started, finished_at=finished)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_reads_for_metrics_and_cli(make_settings: Callable[..., Settings],
                                   request: pytest.FixtureRequest, db: str) -> None:
    url = str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    settings = make_settings(database_url=url)
    engine = prepared_engine(settings)
    with session_scope(engine) as session:
        session.add_all([
            _version("shared", 1, "promoted", 0.5), _version("shared", 2, "promoted", 0.7),
            _version("shared", 3, "rejected", 0.1), _version("apology", 1, "promoted", 0.9),
            _version("solo", 1, "candidate", 0.2),
            _job("shared", 100.0, 130.0), _job("shared", 200.0, 205.0),
            _job("apology", 10.0, 5.0), _job("shared", 300.0, None), _job("solo", None, None),
        ])
    with Session(engine) as session:
        latest = [(v.adapter, v.version) for v in crud.latest_promoted_versions(session)]
        assert latest == [("apology", 1), ("shared", 2)]
        assert crud.finished_job_seconds(session) == {"shared": [30.0, 5.0], "apology": [0.0]}
        shared = crud.get_adapter(session, name="shared")
        assert shared is not None and "greeting" in shared.tasks
        assert crud.get_adapter(session, name="nope") is None
        crud.ping(session)

    with LiveServer(create_app(settings, engine=engine)) as server:
        text = httpx.get(f"{server.url}/metrics").text
    assert 'adaptd_adapter_version{adapter="shared"} 2.0' in text
    assert 'adaptd_adapter_version{adapter="apology"} 1.0' in text
    assert 'adaptd_adapter_version{adapter="solo"}' not in text
    assert 'adaptd_eval_score{adapter="shared",task="greeting"} 0.7' in text
    assert 'adaptd_training_duration_seconds_count{adapter="shared"} 2.0' in text
    assert 'adaptd_training_duration_seconds_sum{adapter="shared"} 35.0' in text
    assert 'adaptd_training_duration_seconds_bucket{adapter="shared",le="5.0"} 1.0' in text
    engine.dispose()


def test_cli_train_reads_the_adapter_from_storage(settings: Settings) -> None:
    """`adaptd train` finds the adapter's tasks through storage and refuses clearly, before any
    job is created, when the adapter or the ratios' tasks are unknown."""
    from typer.testing import CliRunner

    from daemon.cli import app

    engine = prepared_engine(settings)
    env = {"ADAPTD_DATABASE_URL": settings.database_url, "ADAPTD_SUITE": settings.suite,
           "ADAPTD_REDIS_URL": settings.redis_url, "ADAPTD_KEY_PREFIX": settings.key_prefix,
           "ADAPTD_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value()}
    runner = CliRunner()
    unknown = runner.invoke(app, ["train", "--adapter", "nope"], env=env)
    assert unknown.exit_code == 2 and "unknown adapter 'nope'" in unknown.output
    foreign = runner.invoke(app, ["train", "--adapter", "shared", "--ratios", "ghost=1"], env=env)
    assert foreign.exit_code == 2, foreign.output
    assert "--ratios names tasks not in shared: ['ghost']" in foreign.output
    with Session(engine) as session:
        assert crud.list_jobs(session) == []
    engine.dispose()
