"""Static checks of deploy/: alert rules (promtool), compose, Kubernetes, systemd, Grafana.

promtool is required (CI installs Debian's `prometheus` package): without it these tests fail.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
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
EXTRA_METRICS = {"adaptd_dead_letter_events_total": "counter"}

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
    "le", "queue_name", "name", "hostname", "exception", "job", "instance",
}  # fmt: skip

SETTINGS = {
    "ADAPTD_REDIS_URL", "ADAPTD_DATABASE_URL", "ADAPTD_ARTIFACTS_DIR", "ADAPTD_WEBHOOK_SECRET",
    "ADAPTD_ADMIN_TOKEN", "ADAPTD_SUITE", "ADAPTD_KEY_PREFIX", "ADAPTD_LOG_LEVEL",
}  # fmt: skip

# `adaptd` subcommands a deployment runs, and the flags each takes (DESIGN section 5).
SUBCOMMANDS: dict[str, set[str]] = {
    "serve": {"--host", "--port"},
    "worker": {"--queues", "--concurrency"},
    "beat": set(),
    "init": {"--example-suite"},
}
QUEUES = {"ingest", "policy", "train"}

BUILT_IMAGES = {"adaptd", "adaptd-cuda"}
WELL_KNOWN_IMAGES = {
    "redis", "postgres", "prom/prometheus", "grafana/grafana", "danihodovic/celery-exporter",
}  # fmt: skip


# ------------------------------------------------------------------------------- helpers


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: install it (Debian: apt-get install -y prometheus)")
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


# ------------------------------------------------------------------------ metric contract


def test_metric_list_matches_design_section_6() -> None:
    path = design_md()
    if path is None:
        pytest.skip("DESIGN.md not found beside the repository; using the list in this file")
    text = path.read_text(encoding="utf-8")
    section = text.split("## 6.", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or "`adaptd_" not in cells[0]:
            continue
        kind = cells[1].split()[0]
        for name in re.findall(r"`(adaptd_\w+)`", cells[0]):
            found[name] = kind
    assert found == DESIGN_METRICS


# ----------------------------------------------------------------------------- Prometheus


def test_promtool_is_installed() -> None:
    promtool()


def test_alert_rules_pass_promtool_check() -> None:
    result = run([promtool(), "check", "rules", "alerts.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_config_is_valid() -> None:
    result = run([promtool(), "check", "config", "prometheus.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(PROM / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["adaptd-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["celery"]["static_configs"][0]["targets"] == ["celery-exporter:9808"]
    assert config["rule_files"] == ["alerts.yml"]


def test_alerts_use_only_known_metrics() -> None:
    for rule in alert_rules():
        unknown = dq.metric_names(rule["expr"]) - ALLOWED_METRICS
        assert not unknown, f"{rule['alert']}: unknown metrics {unknown}"


def test_queries_use_only_known_labels() -> None:
    exprs = [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    exprs += [(title, dq.substitute(e)) for title, e in dq.dashboard_targets(DASHBOARD)]
    for where, expr in exprs:
        unknown = label_names(expr) - KNOWN_LABELS
        assert not unknown, f"{where}: unknown labels {unknown}"
    assert label_names('sum by (task, risk) (x{a="1", b=~"2"}) > on () group_left (c) y') == {
        "task", "risk", "a", "b", "c",
    }  # fmt: skip


def test_metrics_match_the_daemons_definitions() -> None:
    """Once daemon/metrics.py exists: what the daemon exports is what deploy/ expects."""
    if not (REPO / "daemon" / "metrics.py").is_file():
        pytest.skip("daemon/metrics.py not written yet")
    metrics = importlib.import_module("daemon.metrics")
    defined = {m.name: (m.kind, set(m.labels)) for m in metrics.METRICS}
    expected = {**DESIGN_METRICS, **EXTRA_METRICS}
    assert {name: kind for name, (kind, _labels) in defined.items()} == expected
    for name, (_kind, labels) in defined.items():
        assert labels <= KNOWN_LABELS, f"{name}: labels {labels - KNOWN_LABELS}"
    assert defined["adaptd_task_info"][1] == {"task", "risk", "adapter"}
    assert defined["adaptd_crosstalk_events_total"][1] == {"task", "source_task", "origin"}


def test_required_alerts_exist_with_runbooks() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    crosstalk = rules["AdaptdTaskCrosstalkHigh"]["expr"]
    # a ratio of counter sums per task, a volume guard, thresholds by risk via adaptd_task_info
    assert re.search(r"sum by \(task\) \(rate\(adaptd_crosstalk_events_total\[", crosstalk)
    assert re.search(r"/\s*sum by \(task\) \(rate\(adaptd_feedback_events_total\[", crosstalk)
    assert re.search(r"increase\(adaptd_feedback_events_total\[\w+\]\)\) >= \d+", crosstalk)
    for risk, threshold in (("high", "0.02"), ("medium", "0.05")):
        assert f'{threshold} * max by (task, risk) (adaptd_task_info{{risk="{risk}"}})' in crosstalk
    assert "0.10 * max by (task, risk) (adaptd_task_info" in crosstalk
    assert "avg" not in crosstalk  # never an average of ratios
    degraded = rules["AdaptdHighRiskTaskDegraded"]["expr"]
    assert "adaptd_task_degraded" in degraded and 'risk="high"' in degraded
    assert "adaptd_ingest_lag_events" in rules["AdaptdIngestLagGrowing"]["expr"]
    assert 'outcome="failed"' in rules["AdaptdTrainingRunsFailing"]["expr"]
    assert "adaptd_dead_letter_events_total" in rules["AdaptdDeadLetteredEvents"]["expr"]
    assert "adaptd_feedback_events_total" in rules["AdaptdNoFeedback"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"], name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        runbook = annotations["runbook"]
        assert re.search(r"`adaptd [a-z]+|GET /|/v1/|/readyz|/healthz", runbook), (
            f"{name}: the runbook should name an adaptd command or endpoint to check"
        )


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    tests = load_yaml(PROM / "alerts_test.yml")["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


# -------------------------------------------------------------------------------- Grafana


def test_dashboard_parses_with_stable_uid() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "adaptd-overview"
    assert dashboard["title"]
    panels = list(dq.iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "task", "adapter"} <= variables


def test_dashboard_covers_the_loop() -> None:
    exprs = " ".join(dq.dashboard_queries(DASHBOARD))
    for needle in (
        "adaptd_task_quality",  # per-task quality
        "adaptd_crosstalk_events_total",  # crosstalk rate ...
        "source_task",  # ... and its sources
        "adaptd_task_ratio",  # ratios per adapter
        "adaptd_policy_decisions_total",  # decisions over time
        "adaptd_training_runs_total",  # training runs
        "adaptd_ingest_lag_events",  # ingest lag
        "adaptd_feedback_events_total",  # ingest rate
    ):
        assert needle in exprs, f"dashboard misses {needle}"


def test_dashboard_queries_use_only_known_metrics() -> None:
    for title, expr in dq.dashboard_targets(DASHBOARD):
        unknown = dq.metric_names(dq.substitute(expr)) - ALLOWED_METRICS
        assert not unknown, f"panel {title!r}: unknown metrics {unknown}"


def test_dashboard_queries_have_no_unsubstituted_variables() -> None:
    queries = dq.dashboard_queries(DASHBOARD)
    assert queries
    for query in queries:
        assert "$" not in query and "[[" not in query, query
    assert any('task=~"greeting"' in q for q in dq.dashboard_queries(DASHBOARD, {"task": "greeting"}))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"adaptd_dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(dq.dashboard_queries(DASHBOARD))
    ]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool(), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_promtool_check_catches_a_typo(tmp_path: Path) -> None:
    """The check above is real: a broken query fails it."""
    rules_file = tmp_path / "bad.yml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (task (up)"}]}]})
    )
    assert run([promtool(), "check", "rules", str(rules_file)]).returncode != 0


def test_grafana_provisioning_matches_compose_mounts() -> None:
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/adaptd.yml")["providers"]
    dashboards_path = providers[0]["options"]["path"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./grafana/dashboards"] == dashboards_path
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# -------------------------------------------------------------------------------- compose

ADAPTD_SERVICES = {"init", "api", "worker-ingest", "worker-policy", "worker-train", "beat"}


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_services_and_images() -> None:
    services = compose()["services"]
    assert ADAPTD_SERVICES | {"redis", "postgres", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert "image" in service, name
        assert_image_allowed(service["image"], f"compose service {name}")
        if "build" in service:
            build = service["build"]
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
                DEPLOY / "Dockerfile"
            )
            assert image_repo(service["image"]) in BUILT_IMAGES, name


def test_compose_commands_are_lists_of_strings() -> None:
    """Catches YAML surprises such as an unquoted `--opt=a:b:` turning into a mapping."""
    for name, service in compose()["services"].items():
        for key in ("command", "entrypoint"):
            value = service.get(key, [])
            assert isinstance(value, list) and all(isinstance(a, str) for a in value), (name, key)
        test = service.get("healthcheck", {}).get("test", [])
        assert all(isinstance(a, str) for a in test), name


def test_celery_exporter_sees_adaptds_broker_keys() -> None:
    celery_app = REPO / "daemon" / "celery_app.py"
    if not celery_app.is_file() or "global_keyprefix" not in celery_app.read_text("utf-8"):
        pytest.skip("adaptd's Celery app sets no broker key prefix")
    command = compose()["services"]["celery-exporter"]["command"]
    assert any(a.startswith("--broker-transport-option=global_keyprefix=") for a in command)
    for _path, doc in k8s_docs():
        spec = pod_spec(doc)
        for container in spec["containers"] if spec else []:
            if image_repo(container["image"]) == "danihodovic/celery-exporter":
                assert any("global_keyprefix=" in a for a in container["args"])


def test_compose_commands_are_real_adaptd_commands() -> None:
    services = compose()["services"]
    expected = {
        "init": ("init", None),
        "api": ("serve", None),
        "worker-ingest": ("worker", "ingest"),
        "worker-policy": ("worker", "policy"),
        "worker-train": ("worker", "train"),
        "worker-train-cpu": ("worker", "train"),
        "beat": ("beat", None),
    }
    for name, (sub, queue) in expected.items():
        command = services[name]["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        assert check_adaptd_argv(argv, f"compose {name}") == sub
        if queue:
            assert argv[argv.index("--queues") + 1] == queue
    beats = [n for n, s in services.items() if "adaptd" in str(s.get("command")) and "beat" in s["command"]]
    assert beats == ["beat"], "exactly one beat"
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_settings_are_adaptd_settings() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    check_settings(re.findall(r"\$\{(ADAPTD_\w+?)(?::?[-?+].*?)?\}", text), "compose interpolation")
    services = compose()["services"]
    for name in ADAPTD_SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict), name
        check_settings(env, f"compose {name}")
        assert set(env) <= SETTINGS, f"compose {name}: non-adaptd variables {set(env) - SETTINGS}"
        assert env["ADAPTD_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["ADAPTD_REDIS_URL"].startswith("redis://redis:6379"), name
        assert {"ADAPTD_WEBHOOK_SECRET", "ADAPTD_SUITE", "ADAPTD_ARTIFACTS_DIR"} <= set(env)
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    check_settings(re.findall(r"^(\w+)=", example, re.M), "deploy/.env.example")


def test_compose_migrations_run_once_before_services() -> None:
    services = compose()["services"]
    assert services["init"]["command"] == ["adaptd", "init"]
    assert services["init"].get("restart") == "no"
    for name in ADAPTD_SERVICES - {"init"}:
        depends = services[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name


def test_compose_healthchecks_everywhere() -> None:
    for name, service in compose()["services"].items():
        check = service.get("healthcheck")
        assert check, f"compose service {name} has no healthcheck"
        if name == "init":  # one-shot: completion is its health
            assert check == {"disable": True}
            continue
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        if name.startswith("worker-"):
            assert check["test"] == ["CMD", "adaptd-healthcheck", "celery"], name


def test_compose_redis_train_and_monitoring() -> None:
    services = compose()["services"]
    redis_cmd = " ".join(map(str, services["redis"]["command"]))
    assert "--appendonly yes" in redis_cmd
    assert "--appendfsync everysec" in redis_cmd
    assert "--maxmemory-policy noeviction" in redis_cmd
    train = services["worker-train"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert image_repo(train["image"]) == "adaptd-cuda"
    assert services["worker-train-cpu"]["profiles"] == ["cpu"]
    prometheus_mounts = services["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus_mounts
    for service in services.values():  # bind mounts point at files that exist
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), volume


# ----------------------------------------------------------------------------- Kubernetes


def test_k8s_manifests_parse_and_reference_known_things() -> None:
    kinds: dict[str, int] = {}
    for path, doc in k8s_docs():
        where = f"{path.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if doc["kind"] in {"ConfigMap", "Secret"}:
            data = doc.get("data") or doc.get("stringData") or {}
            assert set(data) <= SETTINGS, f"{where}: {set(data) - SETTINGS}"
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert_image_allowed(container["image"], where)
            check_settings([e["name"] for e in container.get("env", [])], where)
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                assert ref["name"] in {"adaptd-config", "adaptd-secrets"}, where
            argv = container.get("command", []) + container.get("args", [])
            assert all(isinstance(a, str) for a in argv), where
            if image_repo(container["image"]) in BUILT_IMAGES:
                check_adaptd_argv(argv, where)
    assert kinds.get("Job") == 1 and kinds.get("Service", 0) >= 1


def test_k8s_workloads() -> None:
    deployments: dict[str, dict[str, Any]] = {}
    jobs: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for _path, doc in k8s_docs():
        if doc["kind"] == "Deployment":
            deployments[doc["metadata"]["name"]] = doc
        elif doc["kind"] == "Job":
            jobs.append(doc)
        elif doc["kind"] == "Service":
            services.append(doc)

    def argv(name: str) -> list[str]:
        return deployments[name]["spec"]["template"]["spec"]["containers"][0]["command"]

    # one Deployment per queue
    for queue in sorted(QUEUES):
        assert argv(f"adaptd-worker-{queue}") == ["adaptd", "worker", "--queues", queue]
    train = deployments["adaptd-worker-train"]["spec"]["template"]["spec"]
    resources = train["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert train["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in train["tolerations"])
    assert image_repo(train["containers"][0]["image"]) == "adaptd-cuda"
    # a single beat, never two during an upgrade
    beat = deployments["adaptd-beat"]
    assert argv("adaptd-beat") == ["adaptd", "beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    # the API behind a Service, probed on /healthz and /readyz
    api = deployments["adaptd-api"]["spec"]["template"]
    assert argv("adaptd-api")[:2] == ["adaptd", "serve"]
    container = api["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (api_service,) = [s for s in services if s["metadata"]["name"] == "adaptd-api"]
    assert api_service["spec"]["selector"].items() <= api["metadata"]["labels"].items()
    # migrations as a Job
    (job,) = jobs
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["adaptd", "init"]
    # every adaptd pod reads the ConfigMap and the Secret
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        if name == "adaptd-celery-exporter":
            continue
        refs = {
            (s.get("configMapRef") or s.get("secretRef"))["name"] for s in pod["containers"][0]["envFrom"]
        }
        assert refs == {"adaptd-config", "adaptd-secrets"}, name


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # optional extra check
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    listed = sum(len(load_yaml_docs(K8S / name)) for name in kustomization["resources"])
    assert len(rendered) == listed
    assert all(d["metadata"].get("namespace", "adaptd") == "adaptd" for d in rendered)


# -------------------------------------------------------------------------------- systemd


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        key, value = line.split("=", 1)
        sections[current].append((key.strip(), value.strip()))
    return sections


def test_systemd_units() -> None:
    units = {p.name: unit_entries(p) for p in SYSTEMD.glob("*.service")}
    assert {"adaptd-api.service", "adaptd-worker@.service", "adaptd-beat.service"} <= set(units)
    subs = {}
    for name, sections in units.items():
        service = dict(sections["Service"])
        assert service["EnvironmentFile"] == "/etc/adaptd/adaptd.env", name
        assert service["User"] == "adaptd", name
        subs[name] = check_adaptd_argv(shlex.split(service["ExecStart"]), name)
    assert subs["adaptd-api.service"] == "serve"
    assert subs["adaptd-beat.service"] == "beat"
    assert dict(units["adaptd-worker@.service"]["Service"])["ExecStart"].endswith("--queues %i")
    for name in ("adaptd-api.service", "adaptd-worker@.service", "adaptd-beat.service"):
        assert dict(units[name]["Unit"])["Requires"] == "adaptd-init.service", name
    example = (SYSTEMD / "adaptd.env.example").read_text(encoding="utf-8")
    keys = re.findall(r"^(\w+)=", example, re.M)
    assert set(keys) <= SETTINGS and {"ADAPTD_REDIS_URL", "ADAPTD_DATABASE_URL"} <= set(keys)


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    fake = tmp_path / "adaptd"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    for unit in list(SYSTEMD.glob("*.service")) + list(SYSTEMD.glob("*.target")):
        text = unit.read_text(encoding="utf-8").replace("/opt/adaptd/venv/bin/adaptd", str(fake))
        (tmp_path / unit.name).write_text(text)
    names = [
        "adaptd-init.service", "adaptd-api.service", "adaptd-beat.service",
        "adaptd-worker@ingest.service", "adaptd-worker@train.service", "adaptd.target",
    ]  # fmt: skip
    result = run([analyze, "verify", "--man=no", *[str(tmp_path / n) for n in names]])
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# ------------------------------------------------------------------------ image + probe


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
    assert "ARG TORCH_VERSION=2.13.0" in text and '"torch==${TORCH_VERSION}"' in text
    assert "ARG EXTRAS=train" in text and 'pip install "/src${EXTRAS:+[$EXTRAS]}"' in text
    assert "adaptd-healthcheck" in text and "USER adaptd" in text
    check_settings(re.findall(r"\b(ADAPTD_\w+)=", text), "Dockerfile")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "!deploy/healthcheck.py"} <= set(ignore)


def test_real_cli_knows_the_commands_used() -> None:
    """Once daemon/cli.py exists: every subcommand and flag used here is in its --help."""
    if not (REPO / "daemon" / "cli.py").is_file():
        pytest.skip("daemon/cli.py not written yet")
    for sub, flags in SUBCOMMANDS.items():
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
             sub, "--help"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, f"adaptd {sub} --help: {result.stderr[-2000:]}"
        for flag in flags:
            assert flag in result.stdout, f"`adaptd {sub} --help` does not list {flag}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _probe(*args: str, env: dict[str, str] | None = None) -> int:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, timeout=60, env=env
    ).returncode


def test_healthcheck_http() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert _probe("http", f"{base}/healthz") == 0
        assert _probe("http", f"{base}/broken") == 1
    finally:
        server.shutdown()
    assert _probe("http", base + "/healthz") == 1  # nothing listens any more
    assert _probe("bogus") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthcheck_redis() -> None:
    assert _probe("redis", f"redis://127.0.0.1:{_free_port()}/0") == 1
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return  # no local Redis: the failing case above is all we can show
    assert _probe("redis", "redis://127.0.0.1:6379/0") == 0


def test_healthcheck_celery_finds_the_worker_on_this_host(tmp_path: Path) -> None:
    """`adaptd-healthcheck celery` against a real `adaptd worker` (isolated Redis db + prefix)."""
    if not (REPO / "daemon" / "celery_app.py").is_file():
        pytest.skip("daemon/celery_app.py not written yet")
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ADAPTD_")},
        "PYTHONPATH": str(REPO),
        "ADAPTD_REDIS_URL": "redis://127.0.0.1:6379/15",
        "ADAPTD_KEY_PREFIX": f"deploytest{os.getpid()}:",
        "ADAPTD_DATABASE_URL": f"sqlite:///{tmp_path}/adaptd.db",
        "ADAPTD_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    other = {**env, "ADAPTD_KEY_PREFIX": f"elsewhere{os.getpid()}:"}
    assert _probe("celery", env=env) == 1  # no worker yet
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
         "worker", "--queues", "policy"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _probe("celery", env=env) != 0:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        assert _probe("celery", env=other) == 1  # another deployment's broker keys
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        import redis

        client = redis.Redis.from_url(env["ADAPTD_REDIS_URL"])
        for prefix in (env["ADAPTD_KEY_PREFIX"], other["ADAPTD_KEY_PREFIX"]):
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
