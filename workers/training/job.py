"""One training job, end to end: claim -> data -> train -> audit -> eval -> write -> gate -> commit.

Crash safety (a SIGKILL can land anywhere):
- training checkpoints go to ``<artifacts>/<adapter>/.work/job-<id>/``; the next claim (after
  the lease expired) resumes from there, unless the base was rebuilt in between;
- a version is written to a temporary sibling and renamed; leftovers of this job are removed
  at the start of its next attempt, and any temporary directory older than a day as well;
- a complete version whose SQL row is missing, or a ``candidate`` row of this job, is adopted
  by the next attempt (verified by sha256, not retrained);
- promotion, routing, job result and example marking are one transaction that first checks
  the job is still ours and has no result, so a job never promotes twice.
The routing table is published on Redis after the commit (best effort).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from policies.ratios import RatioConfig
from storage.artifacts import (
    ArtifactError,
    adapter_dir,
    check_adapter_name,
    cleanup_temp,
    read_meta,
    verify_version,
    write_version,
)
from storage.artifacts import list_versions as disk_versions
from storage.crud import routing_table
from storage.models import Adapter, AdapterVersion, TrainingJob
from storage.progress import JobProgress
from storage.suite import Suite, SuiteError
from storage.versions import highest_version, job_candidates, recorded_versions
from workers.serving.contract import prompt_contracts
from workers.training.audit import audit_adapter
from workers.training.base_model import (
    BaseModelError,
    base_model_type,
    build_mismatch,
    load_base,
    quiet_peft,
)
from workers.training.checkpoint import pin_build
from workers.training.config import DataConfig, EvalConfig, GateConfig, TrainConfig
from workers.training.data import accepted_texts, assemble
from workers.training.encode import PROMPT_FORMAT
from workers.training.eval_run import side_by_side
from workers.training.evaluate import Scorer
from workers.training.gate import gate
from workers.training.lease import Heartbeat, claim_job
from workers.training.lineage import init_source
from workers.training.promote import LeaseLost, finalize, mark_failed, publish_routing
from workers.training.sampler import default_ratios
from workers.training.style import build_detector
from workers.training.trainer import Progress, TrainingAborted, train_adapter
from workers.training.versions import evaluate_version, list_versions

__all__ = ["JobOutcome", "claim_job", "evaluate_version", "list_versions", "preload",
           "run_training_job"]
log = logging.getLogger("adaptd.training")


def preload(base_model: str | None = None) -> list[str]:
    """Import now what every job imports on its way to its first training step; return the
    transformers classes imported.

    A `train` worker runs each job in a fresh child process forked from its main process,
    which calls this first so that every child inherits the imports: this module (torch,
    peft), the transformers classes ``load_base`` resolves lazily (transformers scans its
    model registry on first use) and the configuration and modelling classes of
    ``base_model``'s architecture (``base_model.base_model_type``: a builtin base's, or what a
    local directory's or cached hub model's ``config.json`` says), seconds that would
    otherwise delay every job. Only that architecture's module is imported. Nothing is loaded
    onto a device and no torch thread pool starts, so forking afterwards is safe.
    """
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = ["AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast"]
    model_type = base_model_type(base_model) if base_model else None
    if model_type is not None and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        names += [CONFIG_MAPPING_NAMES[model_type], MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    imported = []
    for name in names:
        with contextlib.suppress(AttributeError):  # a class transformers does not export
            getattr(transformers, name)
            imported.append(name)
    return imported


@dataclass
class JobOutcome:
    job_id: int
    adapter: str | None
    status: str  # promoted | rejected | failed | not_claimed | lease_lost
    version: int | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    affinity: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    revision: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_training_job(
    job_id: int, *, engine: Engine, redis_client: Any, key_prefix: str, artifacts_dir: Path,
    suite: Suite, worker_id: str, lease_seconds: int = 120, progress: Progress | None = None,
    train_config: TrainConfig | None = None, eval_config: EvalConfig | None = None,
    gate_config: GateConfig | None = None, scorer: Scorer | None = None, max_attempts: int = 5,
    device: str = "auto", data_config: DataConfig | None = None, two_step: bool = False,
    ratio_config: RatioConfig | None = None,
) -> JobOutcome:
    """Run job ``job_id`` if it can be claimed. Never raises for job-level failures: they are
    recorded on the row (status ``failed``, ``error``) and returned.

    What the job is doing (base build, training steps, audit rounds, evaluation) goes to
    Redis for other processes to show (``storage.progress``) and to ``progress``, which
    hears the job's whole progress state at every step. ``two_step``: serving replicas are
    configured, a promotion is routed once they list it (promote.finalize). ``ratio_config``
    (the engine's, ``PolicyConfig.ratios``) gives an adapter without ratios the prior the
    engine would give it."""
    t0 = time.monotonic()
    artifacts_dir = Path(artifacts_dir)
    with Session(engine) as session:
        if not claim_job(session, job_id, worker_id, lease_seconds):
            job = session.get(TrainingJob, job_id)
            status = "not_claimed" if job is not None else "failed"
            if job is not None and job.status not in ("queued", "running"):
                # Finished, but the worker may have died before removing its checkpoints.
                shutil.rmtree(_work_dir(artifacts_dir, job.adapter, job_id), ignore_errors=True)
            return JobOutcome(job_id, job.adapter if job else None, status,
                              error=None if job else f"job {job_id} does not exist")
        job = session.get(TrainingJob, job_id)
        assert job is not None
        adapter, attempts = job.adapter, job.attempts
    if attempts > max_attempts:
        msg = f"gave up after {attempts - 1} interrupted attempts"
        mark_failed(engine, job_id=job_id, worker_id=worker_id, error=msg, requeue=False)
        return JobOutcome(job_id, adapter, "failed", error=msg)
    tracker = JobProgress(redis_client, key_prefix, job_id, listener=progress)
    with Heartbeat(engine, job_id, worker_id, lease_seconds) as beat:
        try:
            tracker.update(phase="prepare", adapter=adapter, base=suite.base_model,
                           version=_next_version(engine, artifacts_dir, adapter))
            outcome = _run(
                job_id, engine=engine, artifacts_dir=artifacts_dir, suite=suite,
                worker_id=worker_id, should_stop=beat.lost.is_set, progress=tracker,
                tcfg=train_config or TrainConfig(), ecfg=eval_config or EvalConfig(),
                gcfg=gate_config or GateConfig(), dcfg=data_config or DataConfig(),
                scorer=scorer, device=device, two_step=two_step, ratio_config=ratio_config,
            )
        except (TrainingAborted, LeaseLost) as exc:
            tracker.update(phase="done", status="lease_lost", error=str(exc))
            return JobOutcome(job_id, adapter, "lease_lost", error=str(exc),
                              seconds=time.monotonic() - t0)
        except (BaseModelError, ArtifactError, SuiteError, ValueError, KeyError,
                RuntimeError, OSError) as exc:
            log.exception("job %s failed", job_id)
            msg = f"{type(exc).__name__}: {exc}"
            mark_failed(engine, job_id=job_id, worker_id=worker_id, error=msg, requeue=False)
            tracker.update(phase="done", status="failed", error=msg)
            return JobOutcome(job_id, adapter, "failed", error=msg, seconds=time.monotonic() - t0)
    if outcome.status in ("promoted", "rejected"):
        publish_routing(engine, redis_client, key_prefix)
        shutil.rmtree(_work_dir(artifacts_dir, adapter, job_id), ignore_errors=True)
    outcome.seconds = round(time.monotonic() - t0, 3)
    tracker.update(phase="done", status=outcome.status, version=outcome.version)
    return outcome


def _work_dir(artifacts_dir: Path, adapter: str, job_id: int) -> Path:
    return adapter_dir(artifacts_dir, adapter) / ".work" / f"job-{job_id}"


def _run(
    job_id: int, *, engine: Engine, artifacts_dir: Path, suite: Suite, worker_id: str,
    should_stop: Callable[[], bool], progress: JobProgress, tcfg: TrainConfig,
    ecfg: EvalConfig, gcfg: GateConfig, dcfg: DataConfig, scorer: Scorer | None, device: str,
    two_step: bool = False, ratio_config: RatioConfig | None = None,
) -> JobOutcome:
    from peft import PeftModel

    # 1. Base model (built once for builtin:tiny) on the chosen device. Its build decides
    #    which versions and checkpoints may be continued from, adopted, compared with or
    #    resumed: never those of another build.
    bundle = load_base(suite, artifacts_dir, device=device, progress=progress.phase("base"))
    progress.update(phase="prepare")
    build = bundle.build
    # 2. What to train: the adapter's tasks, ratios, targeted tasks, config overrides.
    with Session(engine) as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        adapter = check_adapter_name(job.adapter)
        params = dict(job.params or {})
        kind = job.kind
        row = session.get(Adapter, adapter)
        tasks = _tasks(params, row, suite, adapter)
        if params.get("train"):
            tcfg = TrainConfig.model_validate({**tcfg.model_dump(), **params["train"]})
        tcfg = tcfg.for_tasks(len(tasks))
        if params.get("gate"):
            gcfg = GateConfig.model_validate({**gcfg.model_dump(), **params["gate"]})
        # 3. Data: SQL rows + suite seeds, cleaned and split; the style detector's texts.
        data = assemble(suite, tasks, session=session, cfg=dcfg)
        observed = _observed(params, suite, tasks)
        probe_only = assemble(suite, observed, session=session, cfg=dcfg) if observed else None
        detector = build_detector(suite, accepted_texts(session, list(suite.tasks)))
        _, all_routes = routing_table(session)
        routes = {t: r for t, r in all_routes.items() if t in tasks}
        init, parent = init_source(params, row, adapter, all_routes, kind, tasks, build)
        ratios = _ratios(params, row, data.sizes(), tasks, ratio_config)
        candidate = _adoptable(session, artifacts_dir, adapter, job_id, build)  # may commit
    risks = {t: suite.tasks[t].risk for t in tasks}
    targeted = [t for t in params.get("targeted", [params.get("task")]) if t in tasks]
    tag = f"job{job_id}"
    cleanup_temp(artifacts_dir, adapter, tag=tag)
    cleanup_temp(artifacts_dir, adapter, older_than=86400)
    _sweep_work_dirs(engine, artifacts_dir, adapter)
    general_share = tcfg.general_share_or(suite.general_share)
    train_summary: dict[str, Any] = {}
    if candidate is not None:
        # 4a. A previous attempt already wrote this job's version: evaluate it, don't retrain.
        version_id, version, vpath = candidate
        progress.update(version=version)
        with quiet_peft():
            model = PeftModel.from_pretrained(bundle.model, str(vpath))
        train_summary = read_meta(vpath).get("train", {})
    else:
        # 4b. Train (resuming from this job's checkpoint if a previous attempt left one).
        pin_build(work := _work_dir(artifacts_dir, adapter, job_id), build)
        result = train_adapter(
            bundle, data, ratios=ratios, config=tcfg, general_share=general_share,
            init_adapter=init, checkpoint_dir=work,
            progress=progress.phase("train"), should_stop=should_stop,
            observe={t: d.train for t, d in probe_only.tasks.items()} if probe_only else None,
        )
        # 4c. Self-audit: high-risk tasks and the ones the engine flagged (their users saw
        #     them leak) answer fresh requests; their leaks are trained away.
        model, audit = audit_adapter(
            bundle, result.model, data, suite=suite, ratios=ratios, config=tcfg,
            general_share=general_share, detector=detector, ecfg=ecfg, checkpoint_dir=work,
            progress=progress.phase("audit"), should_stop=should_stop,
            flagged=params.get("audit", ()),
        )
        train_summary = {"steps": result.steps, "tokens": result.tokens,
                         "seconds": round(result.seconds, 3), "task_loss": result.task_loss,
                         "affinity": result.affinity, "drawn": result.drawn,
                         "resumed_from": result.resumed_from, "audit": audit,
                         "history": result.history[-20:]}
    for _ in range(3):
        # 5. Candidate vs production, side by side, then the gate.
        ev = side_by_side(model, bundle.tokenizer, data, suite, tasks=tasks, routes=routes,
                          detector=detector, cfg=ecfg, scorer=scorer, build=build,
                          progress=progress.phase("eval"))
        progress.update(phase="write")
        verdict = gate(ev["candidate"], ev["production"], risks=risks, targeted=targeted,
                       config=gcfg)
        if candidate is None:
            # 6. Write the version atomically, then record it as a candidate.
            meta = {
                "base_model": suite.base_model, "base_build": build,
                "prompt_format": PROMPT_FORMAT, "tasks": tasks, "ratios": ratios,
                "general_share": general_share, "data_hashes": data.hashes(),
                "data_sizes": data.sizes(), "parent_version": parent, "init_from": str(init or ""),
                "job_id": job_id, "job_kind": kind, "targeted": targeted,
                "eval": {k: ev[k] for k in ("candidate", "production", "compare")},
                "train_config": tcfg.model_dump(mode="json"),
                "eval_config": ecfg.model_dump(mode="json"),
                "gate_config": gcfg.model_dump(mode="json"), "train": train_summary,
                "created_at": time.time(),
            }
            candidate = _write_candidate(engine, artifacts_dir, adapter, model, meta, job_id,
                                         ratios, parent, tag)
        version_id, version, vpath = candidate
        # 7. One transaction: promote/reject, routing + revision, job result, examples.
        ev["gate"] = {"promote": verdict.promote, "reasons": verdict.reasons}
        ev["train"] = {k: v for k, v in train_summary.items() if k != "history"}
        done = finalize(
            engine, job_id=job_id, worker_id=worker_id, version_id=version_id,
            promote=verdict.promote, tasks=tasks,
            baseline_routes={t: (r["adapter"], int(r["version"])) for t, r in routes.items()},
            eval_result=ev, reason=verdict.summary(), example_ids=data.example_ids,
            prompts=prompt_contracts(bundle.tokenizer, tasks), two_step=two_step,
        )
        if done is not None:
            return JobOutcome(job_id, adapter, "promoted" if done.promoted else "rejected",
                              version=version, reasons=verdict.reasons, eval=ev,
                              affinity=train_summary.get("affinity", {}), revision=done.revision)
        # Production changed while we evaluated (another job promoted): compare again.
        with Session(engine) as session:
            routes = {t: r for t, r in routing_table(session)[1].items() if t in tasks}
    raise RuntimeError("production kept changing during evaluation; giving up")


def _sweep_work_dirs(engine: Engine, artifacts_dir: Path, adapter: str) -> None:
    """Remove checkpoint directories of this adapter's jobs that are finished."""
    root = adapter_dir(artifacts_dir, adapter) / ".work"
    if not root.is_dir():
        return
    with Session(engine) as session:
        for path in root.iterdir():
            name = path.name.removeprefix("job-")
            job = session.get(TrainingJob, int(name)) if name.isdigit() else None
            if job is None or job.status not in ("queued", "running"):
                shutil.rmtree(path, ignore_errors=True)


def _tasks(params: Mapping[str, Any], row: Adapter | None, suite: Suite, adapter: str) -> list[str]:
    tasks = params.get("tasks") or (row.tasks if row is not None else None) \
        or suite.adapters.get(adapter)
    if not tasks:
        raise ValueError(f"adapter {adapter!r} has no tasks (no Adapter row, no suite entry)")
    unknown = [t for t in tasks if t not in suite.tasks]
    if unknown:
        raise ValueError(f"adapter {adapter!r} lists tasks not in the suite: {unknown}")
    return sorted(tasks)


def _observed(params: Mapping[str, Any], suite: Suite, tasks: list[str]) -> list[str]:
    """The tasks the engine asked this run to probe for affinity only (``observe``)."""
    observed = sorted(set(params.get("observe") or ()) - set(tasks))
    if unknown := [t for t in observed if t not in suite.tasks]:
        raise ValueError(f"the job asks to observe tasks not in the suite: {unknown}")
    return observed


def _ratios(params: Mapping[str, Any], row: Adapter | None, sizes: Mapping[str, int],
            tasks: list[str], config: RatioConfig | None) -> dict[str, float]:
    """Job params, else the adapter row's ratios, else temperature sampling over sizes."""
    given = params.get("ratios") or (row.ratios if row is not None else None) or {}
    given = {t: float(given.get(t, 0.0)) for t in tasks}
    if sum(given.values()) <= 0:
        return default_ratios({t: sizes.get(t, 0) for t in tasks}, config)
    total = sum(given.values())
    return {t: v / total for t, v in given.items()}


def _adoptable(
    session: Session, artifacts_dir: Path, adapter: str, job_id: int, build: str
) -> tuple[int, int, Path] | None:
    """A complete version an earlier attempt of this job wrote on base ``build``, if any."""
    for r in job_candidates(session, adapter=adapter, job_id=job_id):
        try:
            verify_version(Path(r.path), r.sha256)
            if why := build_mismatch(Path(r.path), build):
                raise ArtifactError(why)
            assert r.id is not None
            return r.id, r.version, Path(r.path)
        except ArtifactError as exc:
            log.warning("job %s: discarding unusable candidate v%s: %s", job_id, r.version, exc)
            r.status, r.reason = "rejected", f"unusable: {exc}"
            session.commit()
    known = recorded_versions(session, adapter=adapter)
    for v in disk_versions(artifacts_dir, adapter):
        path = adapter_dir(artifacts_dir, adapter) / f"v{v}"
        if v in known:
            continue
        try:
            sha = verify_version(path)
            meta = read_meta(path)
        except ArtifactError:
            continue
        if meta.get("job_id") != job_id or build_mismatch(path, build, meta):
            continue
        # Renamed into place but the attempt died before recording it: record it now.
        vrow = AdapterVersion(adapter=adapter, version=v, path=str(path), sha256=sha,
                              status="candidate", parent_version=meta.get("parent_version"),
                              job_id=job_id, ratios=meta.get("ratios", {}),
                              eval=meta.get("eval", {}))
        session.add(vrow)
        session.commit()
        assert vrow.id is not None
        return vrow.id, v, path
    return None


def _next_version(engine: Engine, artifacts_dir: Path, adapter: str) -> int:
    """The number the adapter's next version gets (above every recorded and written one)."""
    with Session(engine) as session:
        top = highest_version(session, adapter=adapter)
    return max([top, *disk_versions(artifacts_dir, adapter)]) + 1


def _write_candidate(
    engine: Engine, artifacts_dir: Path, adapter: str, model: Any, meta: dict[str, Any],
    job_id: int, ratios: Mapping[str, float], parent: int | None, tag: str,
) -> tuple[int, int, Path]:
    def files(tmp: Path) -> None:
        model.save_pretrained(str(tmp), selected_adapters=["default"], safe_serialization=True)

    for _ in range(5):  # another job may take the same number: try the next one
        version = _next_version(engine, artifacts_dir, adapter)
        try:
            info = write_version(artifacts_dir, adapter, version, write_files=files, meta=meta,
                                 tag=tag)
        except ArtifactError as exc:
            if "already exists" in str(exc):
                continue
            raise
        with Session(engine) as session:
            row = AdapterVersion(adapter=adapter, version=version, path=str(info.path),
                                 sha256=info.sha256, status="candidate", parent_version=parent,
                                 job_id=job_id, ratios=dict(ratios), eval=meta["eval"])
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                continue
            assert row.id is not None
            return row.id, version, info.path
    raise ArtifactError(f"could not allocate a version number for adapter {adapter!r}")
