"""docs/configuration.md is generated from the settings models (daemon/config_docs.py) and must
match them: a knob added, removed or changed without regenerating the file fails here."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from daemon import config_docs
from daemon.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"


def test_committed_reference_matches_the_models() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == config_docs.render(), (
        f"docs/configuration.md is out of date: run `{config_docs.COMMAND}`")


def _field_names(model: type) -> list[str]:
    if issubclass(model, BaseModel):
        return list(model.model_fields)
    return [f.name for f in dataclasses.fields(model)]  # type: ignore[arg-type]


def test_every_setting_and_override_key_is_documented() -> None:
    text = config_docs.render()
    for name in Settings.model_fields:
        assert f"`ADAPTD_{name.upper()}`" in text, name
    for setting, ref in config_docs.JSON_OVERRIDES.items():
        if setting not in Settings.model_fields:
            continue
        model = config_docs._load(ref)
        section = text.split(f"\n## ADAPTD_{setting.upper()}\n", 1)[1].split("\n## ", 1)[0]
        for name in _field_names(model):
            # Nested models are documented by their keys (`ratios.cap`), mappings to models
            # by a table of their own (`risk.<low|medium|high>`).
            assert f"`{name}`" in section or f"`{name}." in section, (setting, name)


def test_cli_writes_the_reference_whatever_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ADAPTD_POLICY_INTERVAL_SECONDS": "7",
           "ADAPTD_TRAIN": '{"steps": 3}'}
    out = subprocess.run([sys.executable, "-m", "daemon.config_docs"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out == config_docs.render()
    default = f"`{Settings.model_fields['policy_interval_seconds'].default}`"
    [row] = [ln for ln in out.splitlines() if ln.startswith("| `ADAPTD_POLICY_INTERVAL_SECONDS` |")]
    assert default in row and "`7`" not in row  # the model's default, not the environment's
    stale = tmp_path / "configuration.md"
    stale.write_text(out.replace(row, row.replace(default, "`7.0`")), encoding="utf-8")
    check = subprocess.run([sys.executable, "-m", "daemon.config_docs", "--check", str(stale)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "out of date" in check.stderr
    stale.write_text(out, encoding="utf-8")
    ok = subprocess.run([sys.executable, "-m", "daemon.config_docs", "--check", str(stale)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr


class _Limits(BaseModel):
    """Test model: how descriptions are found."""

    explicit: int = Field(3, ge=1, description="from the Field")
    # From the comment block
    # above the field.
    above: float | None = None
    inline: bool = True  # from the end of its line

    # Group.
    grouped: str = "x"
    nothing: int = 0  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class _Level:
    # Smallest drop that counts.
    drop: float = 0.1


@dataclasses.dataclass(frozen=True)
class _Engine:
    """Test dataclass holding nested models."""

    limits: _Limits = dataclasses.field(default_factory=_Limits)
    levels: dict[str, _Level] = dataclasses.field(
        default_factory=lambda: {"low": _Level(0.2), "high": _Level(0.05)})


def test_descriptions_come_from_fields_and_comments() -> None:
    table = config_docs.knobs(_Engine)
    got = {k.key: k for k in table.knobs}
    assert got["limits.explicit"].description == "from the Field"
    assert got["limits.explicit"].type == "int (≥ 1)"
    assert got["limits.above"].description == "From the comment block above the field."
    assert got["limits.above"].type == "float | None"
    assert got["limits.inline"].description == "from the end of its line"
    assert got["limits.grouped"].description == ""  # a group header describes no field
    assert got["limits.nothing"].description == ""  # lint pragmas are not descriptions
    [(key, model, defaults)] = table.per_key
    assert key == "levels" and model is _Level
    assert {k: v.drop for k, v in defaults.items()} == {"low": 0.2, "high": 0.05}


class _WithUnknownJson(Settings):
    extra_knobs: dict[str, Any] = Field(default_factory=dict)


def test_a_json_setting_without_its_model_is_an_error() -> None:
    with pytest.raises(config_docs.ConfigDocsError, match="extra_knobs"):
        config_docs.render(_WithUnknownJson)


class _Serving(BaseModel):
    """Test model: a setting that holds a nested model."""

    replicas: list[str] = Field(default_factory=list, description="replica URLs")
    sync_seconds: float = 30.0  # how often the sync runs


class _WithNested(Settings):
    serving: _Serving = Field(default_factory=_Serving)


def test_a_nested_model_setting_gets_a_section_of_its_keys() -> None:
    text = config_docs.render(_WithNested)
    assert '| `ADAPTD_SERVING` | _Serving | `{"replicas": [], "sync_seconds": 30.0}` |' in text
    section = text.split("\n## ADAPTD_SERVING\n", 1)[1].split("\n## ", 1)[0]
    assert "`ADAPTD_SERVING__<KEY>`" in section
    assert "| `replicas` | list[str] | `[]` | replica URLs |" in section
    assert "| `sync_seconds` | float | `30.0` | how often the sync runs |" in section
