"""What deploy/ may reference: metric names, settings, images, commands; shared helpers of
the deploy tests."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "adaptd.json"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
HEALTHCHECK = DEPLOY / "healthcheck.py"

_spec = importlib.util.spec_from_file_location(
    "deploy_dashboard_queries", Path(__file__).with_name("dashboard_queries.py")
)
assert _spec and _spec.loader
dq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dq)

# --------------------------------------------------------------------------- the contracts

# DESIGN section 6 (+ the dead-letter counter). Histograms expose _bucket/_sum/_count.
DESIGN_METRICS: dict[str, str] = {
    "adaptd_feedback_events_total": "counter",
    "adaptd_feedback_rejected_total": "counter",
    "adaptd_feedback_duplicates_total": "counter",
    "adaptd_crosstalk_events_total": "counter",
    "adaptd_ingest_lag_events": "gauge",
    "adaptd_buffer_examples": "gauge",
    "adaptd_task_info": "gauge",
    "adaptd_task_quality": "gauge",
    "adaptd_task_crosstalk_rate": "gauge",
    "adaptd_task_degraded": "gauge",
    "adaptd_task_ratio": "gauge",
    "adaptd_policy_decisions_total": "counter",
    "adaptd_training_runs_total": "counter",
    "adaptd_training_duration_seconds": "histogram",
    "adaptd_adapter_version": "gauge",
    "adaptd_eval_score": "gauge",
    "adaptd_eval_crosstalk_rate": "gauge",
}
# DESIGN section 11 (serving).
SERVING_METRICS: dict[str, str] = {
    "adaptd_serving_loaded": "gauge",
    "adaptd_serving_sync_errors_total": "counter",
    "adaptd_serving_promotion_seconds": "histogram",
}
EXTRA_METRICS = {"adaptd_dead_letter_events_total": "counter",
                 "adaptd_serving_pending_seconds": "gauge", **SERVING_METRICS}

# danihodovic/celery-exporter's metrics; `up` is Prometheus' own scrape health.
CELERY_EXPORTER_METRICS = {
    "celery_task_sent_total", "celery_task_received_total", "celery_task_started_total",
    "celery_task_succeeded_total", "celery_task_failed_total", "celery_task_rejected_total",
    "celery_task_revoked_total", "celery_task_retried_total", "celery_worker_up",
    "celery_worker_tasks_active", "celery_task_runtime_bucket", "celery_task_runtime_sum",
    "celery_task_runtime_count", "celery_queue_length", "celery_active_consumer_count",
    "celery_active_worker_count", "celery_active_process_count",
}  # fmt: skip


def _series_names(metrics: dict[str, str]) -> set[str]:
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


ALLOWED_METRICS = (
    _series_names(DESIGN_METRICS) | _series_names(EXTRA_METRICS) | CELERY_EXPORTER_METRICS | {"up"}
)

# Labels those metrics carry (DESIGN section 6, celery-exporter), plus Prometheus' own.
KNOWN_LABELS = {
    "task", "verdict", "reason", "source_task", "origin", "risk", "adapter", "action", "outcome",
    "le", "queue_name", "name", "hostname", "exception", "job", "instance", "replica", "version",
}  # fmt: skip

SETTINGS = {
    "ADAPTD_REDIS_URL", "ADAPTD_DATABASE_URL", "ADAPTD_ARTIFACTS_DIR", "ADAPTD_WEBHOOK_SECRET",
    "ADAPTD_ADMIN_TOKEN", "ADAPTD_SUITE", "ADAPTD_KEY_PREFIX", "ADAPTD_LOG_LEVEL",
    "ADAPTD_SERVING_REPLICAS", "ADAPTD_SERVING_SYNC_SECONDS", "ADAPTD_SERVING_GRACE_SECONDS",
}  # fmt: skip

# `adaptd` subcommands a deployment runs, and the flags each takes (DESIGN section 5).
SUBCOMMANDS: dict[str, set[str]] = {
    "serve": {"--host", "--port"},
    "worker": {"--queues", "--concurrency"},
    "beat": set(),
    "init": {"--example-suite"},
}
QUEUES = {"ingest", "policy", "train", "serving"}

BUILT_IMAGES = {"adaptd", "adaptd-cuda"}
WELL_KNOWN_IMAGES = {
    "redis", "postgres", "prom/prometheus", "grafana/grafana", "danihodovic/celery-exporter",
}  # fmt: skip


# ------------------------------------------------------------------------------- helpers


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: `make system-deps` installs it "
                    "(Debian's prometheus package)")
    return path


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def image_repo(image: str) -> str:
    """'grafana/grafana:11.3.0' -> 'grafana/grafana'; 'adaptd:${IMAGE_TAG:-local}' -> 'adaptd'."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name.removeprefix("docker.io/").removeprefix("library/")


def assert_image_allowed(image: str, where: str) -> None:
    repo = image_repo(image)
    assert repo in BUILT_IMAGES | WELL_KNOWN_IMAGES, f"{where}: unexpected image {image!r}"


def check_adaptd_argv(argv: list[str], where: str) -> str:
    """Assert argv is `adaptd <subcommand> [real flags]`; return the subcommand."""
    assert argv and argv[0] in {"adaptd", "/opt/adaptd/venv/bin/adaptd"}, f"{where}: {argv}"
    assert len(argv) >= 2 and argv[1] in SUBCOMMANDS, f"{where}: unknown subcommand in {argv}"
    sub, rest = argv[1], argv[2:]
    flags = SUBCOMMANDS[sub]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if "=" in arg:
            flag, value = arg.split("=", 1)
            i += 1
        else:
            flag = arg
            assert i + 1 < len(rest), f"{where}: {flag} needs a value"
            value = rest[i + 1]
            i += 2
        assert flag in flags, f"{where}: `adaptd {sub}` has no flag {flag!r}"
        if flag == "--queues":
            queues = set(value.split(","))
            assert queues <= QUEUES | {"%i"}, f"{where}: unknown queue(s) {queues - QUEUES}"
        if flag == "--port":
            assert value.isdigit(), f"{where}: bad port {value!r}"
    return sub


def check_settings(names: Any, where: str) -> None:
    for name in names:
        if str(name).startswith("ADAPTD_"):
            assert name in SETTINGS, f"{where}: {name} is not an adaptd setting"


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(PROM / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_docs(path):
            yield path, doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    return None


def label_names(expr: str) -> set[str]:
    """Label names used in grouping clauses and selectors of a PromQL expression."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    names: set[str] = set()
    for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        names |= {n.strip() for n in match.group(1).split(",") if n.strip()}
    for selector in re.findall(r"\{([^}]*)\}", text):
        names |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    return names


def design_md() -> Path | None:
    for candidate in (REPO / "DESIGN.md", REPO / "docs" / "DESIGN.md", REPO.parent / "shared" / "DESIGN.md"):
        if candidate.is_file():
            return candidate
    return None


