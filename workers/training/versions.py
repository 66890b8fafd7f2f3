"""Read side of adapter versions: ``adaptd adapters`` and ``adaptd eval NAME@VERSION``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.artifacts import ArtifactError, read_meta, verify_version, version_dir
from storage.crud import list_versions as list_rows
from storage.crud import routing_table
from storage.suite import Suite
from storage.versions import get_version
from workers.training.config import EvalConfig


def list_versions(engine: Engine, adapter: str | None = None) -> list[dict[str, Any]]:
    """Every recorded version (newest first per adapter) with the tasks routed to it."""
    with Session(engine) as session:
        rows = sorted(list_rows(session, adapter=adapter), key=lambda r: (r.adapter, -r.version))
        _, routes = routing_table(session)
    out = []
    for r in rows:
        served = sorted(t for t, rt in routes.items()
                        if rt["adapter"] == r.adapter and int(rt["version"]) == r.version)
        out.append({
            "adapter": r.adapter, "version": r.version, "status": r.status, "path": r.path,
            "sha256": r.sha256, "parent_version": r.parent_version, "job_id": r.job_id,
            "ratios": r.ratios, "reason": r.reason, "created_at": r.created_at,
            "promoted_at": r.promoted_at, "serving": served,
        })
    return out


def evaluate_version(
    engine: Engine, *, artifacts_dir: Path, suite: Suite, adapter: str, version: int,
    eval_config: EvalConfig | None = None, device: str = "auto",
) -> dict[str, Any]:
    """Evaluate ``adapter@version`` on its tasks' held-out data (and the base for reference).

    Raises :class:`storage.artifacts.ArtifactError` for a missing or corrupted version, or
    one trained on another base build than the suite's base resolves to now.
    """
    from peft import PeftModel

    from workers.training.base_model import check_build, load_base, quiet_peft
    from workers.training.data import accepted_texts, assemble
    from workers.training.evaluate import evaluate_model
    from workers.training.style import build_detector

    path = version_dir(artifacts_dir, adapter, version)
    with Session(engine) as session:
        row = get_version(session, adapter=adapter, version=version)
        sha = verify_version(Path(row.path) if row else path, row.sha256 if row else None)
        if row is not None:
            path = Path(row.path)
        meta = read_meta(path)
        tasks = [t for t in meta.get("tasks", []) if t in suite.tasks]
        if not tasks:
            raise ArtifactError(f"{path}: none of its tasks {meta.get('tasks')} is in the suite")
        data = assemble(suite, tasks, session=session)
        detector = build_detector(suite, accepted_texts(session, list(suite.tasks)))
    bundle = load_base(suite, artifacts_dir, device=device)
    check_build(path, bundle.build, meta)
    with quiet_peft():
        model = PeftModel.from_pretrained(bundle.model, str(path))
    result = evaluate_model(model, bundle.tokenizer, data, suite, tasks=tasks, detector=detector,
                            cfg=eval_config)
    with model.disable_adapter():
        base = evaluate_model(model, bundle.tokenizer, data, suite, tasks=tasks,
                              detector=detector, cfg=eval_config)
    return {"adapter": adapter, "version": version, "sha256": sha, "path": str(path),
            "status": row.status if row else None, "eval": result, "base_model": base}
