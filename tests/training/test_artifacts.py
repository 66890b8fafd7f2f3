"""storage.artifacts: atomic immutable versions, verification, names, no pickle (no torch)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from storage.artifacts import (
    ArtifactError,
    adapter_dir,
    cleanup_temp,
    list_versions,
    read_meta,
    verify_version,
    version_sha256,
    write_version,
)


def _fake_peft_files(tmp: Path) -> None:
    """A syntactically valid adapter: a config and a one-tensor safetensors file."""
    (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    body = struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)
    (tmp / "adapter_model.safetensors").write_bytes(body)


def test_write_verify_and_immutability(tmp_path: Path) -> None:
    info = write_version(tmp_path, "shared", 1, write_files=_fake_peft_files,
                         meta={"tasks": ["a"]}, tag="job1")
    assert info.path == tmp_path.resolve() / "shared" / "v1"
    assert verify_version(info.path, info.sha256) == info.sha256
    assert read_meta(info.path)["version"] == 1
    assert list_versions(tmp_path, "shared") == [1]
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ArtifactError, match="already exists"):
        write_version(tmp_path, "shared", 1, write_files=_fake_peft_files, meta={})


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_config", "bad_json"])
def test_corrupted_version_gives_clear_error(tmp_path: Path, damage: str) -> None:
    info = write_version(tmp_path, "shared", 1, write_files=_fake_peft_files, meta={})
    weights = info.path / "adapter_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-3])
        match = "truncated|does not match"
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        match = "sha256"
    elif damage == "drop_config":
        (info.path / "adapter_config.json").unlink()
        match = "missing adapter_config.json"
    else:
        (info.path / "adaptd.json").write_text("{not json")
        match = "corrupted JSON"
    with pytest.raises(ArtifactError, match=match):
        verify_version(info.path, info.sha256)


def test_pickle_files_refused(tmp_path: Path) -> None:
    def with_pickle(tmp: Path) -> None:
        _fake_peft_files(tmp)
        (tmp / "adapter_model.bin").write_bytes(b"\x80\x04pickle")

    with pytest.raises(ArtifactError, match="pickle"):
        write_version(tmp_path, "shared", 1, write_files=with_pickle, meta={})
    assert list_versions(tmp_path, "shared") == []  # nothing published, temp removed
    assert not list((tmp_path / "shared").iterdir())


@pytest.mark.parametrize("name", ["../evil", "Shared", "", "a/b", "_base", "x" * 70, ".."])
def test_bad_adapter_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactError, match="adapter name"):
        adapter_dir(tmp_path, name)


def test_bad_version_numbers(tmp_path: Path) -> None:
    for bad in (0, -1, True):
        with pytest.raises(ArtifactError):
            write_version(tmp_path, "shared", bad, write_files=_fake_peft_files, meta={})


def test_cleanup_of_half_written_versions(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    (base / ".tmp-v3-job7-abcd1234").mkdir(parents=True)
    (base / ".tmp-v4-job8-abcd1234").mkdir()
    removed = cleanup_temp(tmp_path, "shared", tag="job7")
    assert [p.name for p in removed] == [".tmp-v3-job7-abcd1234"]
    assert list_versions(tmp_path, "shared") == []
    assert len(cleanup_temp(tmp_path, "shared", older_than=-1)) == 1


def test_sha_covers_every_file(tmp_path: Path) -> None:
    info = write_version(tmp_path, "shared", 1, write_files=_fake_peft_files, meta={})
    before = version_sha256(info.path)
    (info.path / "README.md").write_text("extra")
    assert version_sha256(info.path) != before
