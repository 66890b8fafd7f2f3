"""A whole adaptd on one machine, as child processes: what `adaptd demo` and
`adaptd simulate` run. Redis is the machine's if it answers (under a fresh key prefix) or a
private one; SQL is a SQLite file in the work directory."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from daemon import procs
from daemon.live import JobWatcher, LiveView
from daemon.settings import Settings


def fresh_key_prefix() -> str:
    """A key prefix no other stack on the same Redis holds: stacks started together (a bench
    running runs side by side) share the machine's Redis, and one whose prefix matched
    another's would consume its Celery tasks and read its routing table.

    >>> len({fresh_key_prefix() for _ in range(1000)})
    1000
    """
    return f"adaptd-{secrets.token_hex(8)}:"


class LocalStack:
    """Start with ``with LocalStack(...) as stack:``; everything stops on exit."""

    def __init__(self, settings: Settings, workdir: Path, *, suite: str,
                 policy_mode: str = "adaptive", policy: dict[str, Any] | None = None,
                 train: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None,
                 train_workers: int = 1, say: Any = print, base_cache: Path | None = None,
                 serving_replicas: list[dict[str, str]] | None = None):
        self.settings, self.workdir, self.say = settings, workdir.resolve(), say
        self.suite, self.policy_mode = suite, policy_mode
        self.policy, self.train, self.evaluation = policy or {}, train or {}, evaluation or {}
        self.train_workers = train_workers
        self.base_cache = base_cache
        # Serving engines the stack's serving sync keeps loaded (docs/serving.md).
        self.serving_replicas = serving_replicas or []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.child: Settings | None = None
        # One client for the stack's life: ``httpx.get`` builds a client, and with it an SSL
        # context (the CA bundle parsed again), per call. ``wait_settled`` polls every 0.3 s
        # while a training job runs, and those contexts took a quarter of a core beside the job.
        self._http = httpx.Client(timeout=30)

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            procs.stop(proc)
        self.procs.clear()
        self._http.close()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis_url = self.settings.redis_url
        if not procs.redis_answers(redis_url):
            port = procs.free_port()
            self.say(f"no Redis at {redis_url}; starting a private one on port {port}")
            self.procs.append(procs.start_redis(port, self.workdir / "redis"))
            redis_url = f"redis://127.0.0.1:{port}/0"
        artifacts = self.workdir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        if self.base_cache is not None:  # share built base models between runs
            self.base_cache.mkdir(parents=True, exist_ok=True)
            link = artifacts / "_base"
            if not link.exists():
                link.symlink_to(self.base_cache.resolve(), target_is_directory=True)
        port = procs.free_port()
        env = {
            **os.environ,
            "ADAPTD_REDIS_URL": redis_url,
            "ADAPTD_DATABASE_URL": f"sqlite:///{self.workdir / 'adaptd.db'}",
            "ADAPTD_ARTIFACTS_DIR": str(artifacts),
            "ADAPTD_KEY_PREFIX": fresh_key_prefix(),
            "ADAPTD_SUITE": self.suite,
            "ADAPTD_API_PORT": str(port),
            "ADAPTD_WEBHOOK_SECRET": self.settings.webhook_secret.get_secret_value(),
            "ADAPTD_DRAIN_INTERVAL_SECONDS": "0.5",
            "ADAPTD_POLICY_INTERVAL_SECONDS": "1",
            "ADAPTD_POLICY_MODE": self.policy_mode,
            "ADAPTD_POLICY": json.dumps(self.policy),
            "ADAPTD_TRAIN": json.dumps(self.train),
            "ADAPTD_EVAL": json.dumps(self.evaluation),
            "ADAPTD_LOG_LEVEL": "INFO",
            "ADAPTD_SERVING_REPLICAS": json.dumps(self.serving_replicas),
            "ADAPTD_SERVING_SYNC_SECONDS": "2",
            "ADAPTD_SERVING_GRACE_SECONDS": "10",
        }
        env.pop("ADAPTD_ADMIN_TOKEN", None)
        self.child = Settings(redis_url=redis_url, database_url=env["ADAPTD_DATABASE_URL"],
                              key_prefix=env["ADAPTD_KEY_PREFIX"], api_port=port,
                              artifacts_dir=artifacts, suite=self.suite,
                              webhook_secret=self.settings.webhook_secret)
        logs = self.workdir / "logs"
        self.logs = logs
        init = procs.spawn(["init"], env, logs / "init.log")
        if init.wait(300) != 0:
            raise RuntimeError(f"adaptd init failed; see {logs / 'init.log'}")
        api = procs.spawn(["serve", "--port", str(port)], env, logs / "api.log")
        self.procs.append(api)
        # Workers get SIGQUIT (Celery's cold shutdown) if this process dies: SIGTERM's warm
        # shutdown would finish the running training job first, minutes of CPU for a stack
        # nobody uses any more. Their tasks are acks-late and leased, so none is lost.
        # A cold shutdown can still wait on a task it did not cancel: `--exit-with-parent`
        # ends the worker anyway soon after this process is gone.
        orphan = ["--exit-with-parent", str(os.getpid())]
        queues = "ingest,policy,serving" if self.serving_replicas else "ingest,policy"
        self.procs.append(procs.spawn(["worker", "--queues", queues, *orphan], env,
                                      logs / "worker.log", on_parent_death=signal.SIGQUIT))
        for i in range(self.train_workers):
            self.procs.append(procs.spawn(["worker", "--queues", "train", *orphan], env,
                                          logs / f"train-{i}.log",
                                          on_parent_death=signal.SIGQUIT))
        self.procs.append(procs.spawn(["beat"], env, logs / "beat.log"))
        self.url = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{self.url}/healthz", proc=api)

    def watch(self, view: LiveView) -> JobWatcher:
        """The training jobs' progress (``storage.progress``), shown on ``view`` while the
        returned watcher is entered."""
        assert self.child is not None, "the stack is not started"
        return JobWatcher(redis.Redis.from_url(self.child.redis_url), self.child.key_prefix,
                          view)

    def status(self) -> dict[str, Any]:
        return dict(self._http.get(f"{self.url}/v1/status").json())

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a daemon process exited ({proc.args!r}); logs in {self.logs}")

    def wait_settled(self, *, timeout: float, jobs: bool = True, poll: float = 0.3) -> None:
        """Until every posted event is drained and observed (and, if ``jobs``, no job runs and
        the policy engine has accounted every finished one, so what it decides next does not
        depend on whether the next events arrive before or after that tick)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            s = self.status()
            if s["ingest_lag"] == 0 and s["unobserved"] == 0 and (
                    not jobs or (s["jobs_active"] == 0 and s["jobs_unaccounted"] == 0)):
                return
            time.sleep(poll)
        raise RuntimeError(f"the daemon did not settle within {timeout:.0f}s: {self.status()}")
