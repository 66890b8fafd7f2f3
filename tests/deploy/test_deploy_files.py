"""Static checks of deploy/: compose, Kubernetes, systemd, the image and its health probe.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_contracts import (
    BUILT_IMAGES,
    COMPOSE,
    DEPLOY,
    HEALTHCHECK,
    K8S,
    QUEUES,
    REPO,
    SETTINGS,
    SUBCOMMANDS,
    SYSTEMD,
    assert_image_allowed,
    check_adaptd_argv,
    check_settings,
    image_repo,
    k8s_docs,
    load_yaml,
    load_yaml_docs,
    pod_spec,
    run,
)

# -------------------------------------------------------------------------------- compose

ADAPTD_SERVICES = {"init", "api", "worker-ingest", "worker-policy", "worker-train",
                   "worker-serving", "beat"}


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
    assert "global_keyprefix" in celery_app.read_text("utf-8")
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
        "worker-serving": ("worker", "serving"),
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
    assert analyze is not None, "systemd-analyze is required (`make system-deps` installs it)"
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


@pytest.mark.slow
def test_real_cli_knows_the_commands_used() -> None:
    """Every subcommand and flag used here is in the real CLI's --help."""
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


@pytest.mark.slow
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
    socket.create_connection(("127.0.0.1", 6379), timeout=1).close()  # CI starts Redis
    assert _probe("redis", "redis://127.0.0.1:6379/0") == 0


@pytest.mark.slow
def test_healthcheck_celery_finds_the_worker_on_this_host(tmp_path: Path) -> None:
    """`adaptd-healthcheck celery` against a real `adaptd worker` (isolated Redis db + prefix)."""
    socket.create_connection(("127.0.0.1", 6379), timeout=1).close()  # CI starts Redis
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
