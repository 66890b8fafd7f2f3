"""Static checks of the metric contract, Prometheus rules (promtool) and the Grafana dashboard.

promtool is required (`make system-deps` installs Debian's `prometheus` package): without it
these tests fail.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import yaml

from tests.deploy.deploy_contracts import (
    ALLOWED_METRICS,
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    DESIGN_METRICS,
    EXTRA_METRICS,
    KNOWN_LABELS,
    PROM,
    alert_rules,
    design_md,
    dq,
    label_names,
    load_yaml,
    promtool,
    run,
)

# ------------------------------------------------------------------------ metric contract


def test_metric_list_matches_design_section_6() -> None:
    path = design_md()
    assert path is not None, "DESIGN.md not found (expected ../shared/DESIGN.md beside the repo)"
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
    """What the daemon exports is what deploy/ expects."""
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
