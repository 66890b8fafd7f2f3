"""Serving settings and options: bad input is a clear error, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.celery_app import make_celery
from daemon.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_replicas_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTD_SERVING_REPLICAS",
                       '[{"url": "http://gpu-1:8000/", "backend": "vllm"}, {"url": "http://gpu-2:8000"}]')
    monkeypatch.setenv("ADAPTD_SERVING_SYNC_SECONDS", "5")
    s = Settings()
    assert [(r.url, r.backend) for r in s.serving_replicas] == [
        ("http://gpu-1:8000", "vllm"), ("http://gpu-2:8000", "vllm")]
    app = make_celery(s)
    assert app.conf.beat_schedule["serving"]["schedule"] == 5.0
    assert app.conf.task_routes["adaptd.serving.*"] == {"queue": "serving"}
    assert app.adaptd_context.serving_replicas[0]["url"] == "http://gpu-1:8000"
    # No replicas: no serving round on the timer.
    assert "serving" not in make_celery(Settings(serving_replicas=[])).conf.beat_schedule


@pytest.mark.parametrize(("replicas", "message"), [
    ([{"url": "ftp://gpu-1"}], "must be http(s)://host[:port]"),
    ([{"url": "http://a:1", "backend": "sglang"}], "vllm"),
    ([{"url": "http://a:1"}, {"url": "http://a:1/"}], "each url at most once"),
    ([{"url": "http://a:1", "extra": 1}], "Extra inputs"),
])
def test_bad_replicas_are_refused_clearly(replicas: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        Settings(serving_replicas=replicas)  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "message"), [
    (["--serving", "sglang"], "serving 'sglang': one of inprocess, vllm"),
    (["--serving-url", "http://127.0.0.1:9"], "--serving-url needs --serving vllm"),
    (["--serving", "vllm", "--serving-url", "gpu:8000"], "must be http(s)://host:port"),
])
def test_simulate_refuses_bad_serving_options(args: list[str], message: str,
                                              tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTD_")}
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "simulate", "--report",
                           str(tmp_path / "r.json"), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_missing_vllm_environment_names_the_fix(tmp_path: Path) -> None:
    from daemon.vllm import VLLMNotInstalled, VLLMServer

    with pytest.raises(VLLMNotInstalled, match="make vllm"):
        VLLMServer(tmp_path / "nowhere", tmp_path, log_path=tmp_path / "log")
