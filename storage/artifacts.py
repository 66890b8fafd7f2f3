"""Adapter artifact store: immutable versions on disk (docs/contracts.md section 7). No torch needed.

``<artifacts>/<adapter>/v<N>/`` holds PEFT's ``adapter_config.json`` and
``adapter_model.safetensors`` plus ``adaptd.json`` (base model and the resolved base build it
was trained on, tasks, ratios, data hashes, parent version, eval results, train config). A
version is written into a temporary sibling (``.tmp-v<N>-<tag>``), every file and the directory
are fsync'ed, and only then is it renamed to ``v<N>``: a reader (or a crash) never sees half a
version. Pickle files are refused: a version holding ``.bin``/``.pt``/``.pkl``/... cannot be
written or verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.suite import NAME_RE

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "adaptd.json"
REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, META_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")
TMP_PREFIX = ".tmp-"


class ArtifactError(ValueError):
    """A bad adapter name/path or a missing, corrupted or unsafe version; says which."""


@dataclass(frozen=True)
class VersionInfo:
    adapter: str
    version: int
    path: Path
    sha256: str


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ArtifactError(
            f"adapter name {name!r} must match {NAME_RE.pattern} "
            "(lowercase letters, digits, '_' or '-', starting with a letter)"
        )
    return name


def adapter_dir(artifacts_dir: Path, adapter: str) -> Path:
    """The adapter's directory, guaranteed to be inside ``artifacts_dir``."""
    check_adapter_name(adapter)
    root = Path(artifacts_dir).resolve()
    path = (root / adapter).resolve()
    if path.parent != root:
        raise ArtifactError(f"adapter path {path} escapes the artifacts directory {root}")
    return path


def version_dir(artifacts_dir: Path, adapter: str, version: int) -> Path:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"version must be a positive integer, got {version!r}")
    return adapter_dir(artifacts_dir, adapter) / f"v{version}"


def list_versions(artifacts_dir: Path, adapter: str) -> list[int]:
    """Complete versions on disk (temporary siblings are not versions)."""
    base = adapter_dir(artifacts_dir, adapter)
    if not base.is_dir():
        return []
    found = (_VERSION_RE.match(p.name) for p in base.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_sha256(path: Path) -> str:
    """sha256 over the version's files: name and content hash of each, sorted by name."""
    lines = [f"{p.name}\x00{_file_sha(p)}" for p in sorted(Path(path).iterdir()) if p.is_file()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _refuse_pickle(path: Path) -> None:
    for p in Path(path).rglob("*"):
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise ArtifactError(f"{p}: pickle-format file refused (adaptd stores safetensors only)")


def _check_safetensors(path: Path) -> None:
    """Parse the header (8-byte length + JSON) and check the data offsets match the size."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ArtifactError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or 8 + n > size:
            raise ArtifactError(f"{path}: corrupted safetensors header")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ArtifactError(f"{path}: corrupted safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
              default=0)
    if 8 + n + end != size:
        raise ArtifactError(f"{path}: size {size} does not match its header (truncated?)")


def verify_version(path: Path, expected_sha256: str | None = None) -> str:
    """Check a version directory; return its sha256 or raise :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: adapter version not found")
    _refuse_pickle(path)
    for name in REQUIRED:
        if not (path / name).is_file():
            raise ArtifactError(f"{path}: missing {name} (incomplete or corrupted version)")
    for name in (CONFIG_FILE, META_FILE):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path / name}: corrupted JSON ({exc})") from None
    _check_safetensors(path / WEIGHTS_FILE)
    sha = version_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ArtifactError(
            f"{path}: sha256 {sha[:12]}… does not match the recorded {expected_sha256[:12]}… "
            "(files changed or corrupted)"
        )
    return sha


def read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read {META_FILE} ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: {META_FILE} is not a JSON object")
    return data


def fsync_path(path: Path) -> None:
    """fsync one file or directory (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_version(
    artifacts_dir: Path, adapter: str, version: int, *, write_files: Callable[[Path], None],
    meta: dict[str, Any], tag: str = "",
) -> VersionInfo:
    """Write a version atomically: ``write_files(tmp)`` puts the PEFT files into a temporary
    sibling, ``meta`` becomes ``adaptd.json``; fsync, verify, rename to ``v<N>``.

    ``tag`` (e.g. ``job7``) names the temporary directory so its owner can clean it up.
    Raises :class:`ArtifactError` if ``v<N>`` exists (versions are immutable).
    """
    final = version_dir(artifacts_dir, adapter, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise ArtifactError(f"{final}: version already exists (versions are immutable)")
    suffix = f"{tag}-" if tag else ""
    tmp = final.parent / f"{TMP_PREFIX}v{version}-{suffix}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_files(tmp)
        body = {**meta, "adapter": adapter, "version": version}
        (tmp / META_FILE).write_text(
            json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8"
        )
        for p in tmp.iterdir():
            fsync_path(p)
        fsync_path(tmp)
        sha = verify_version(tmp)
        try:
            # rename() onto an existing empty dir would succeed on POSIX: check right before.
            if final.exists():
                raise ArtifactError(f"{final}: version already exists (versions are immutable)")
            os.rename(tmp, final)
        except OSError as exc:
            raise ArtifactError(f"{final}: cannot publish version ({exc})") from None
        fsync_path(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return VersionInfo(adapter, version, final, sha)


def cleanup_temp(
    artifacts_dir: Path, adapter: str, *, tag: str | None = None, older_than: float | None = None
) -> list[Path]:
    """Remove half-written versions: those of ``tag``, or any older than ``older_than`` s."""
    base = adapter_dir(artifacts_dir, adapter)
    if not base.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for p in base.iterdir():
        if not p.name.startswith(TMP_PREFIX):
            continue
        mine = tag is not None and f"-{tag}-" in p.name
        stale = older_than is not None and now - p.stat().st_mtime > older_than
        if mine or stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
