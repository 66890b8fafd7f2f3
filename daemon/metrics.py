"""Prometheus metrics (docs/contracts.md section 6), correct across processes and hosts.

Nothing is counted in process memory. Each scrape of ``/metrics`` reads the authoritative
state:

- counters of stored effects (events, crosstalk, decisions, training runs) are SQL rows bumped
  in the same transaction as the rows they count, so a redelivered event is never counted
  twice and any worker on any host contributes;
- counters of things the API refused (signature, schema, ...) live in a Redis hash, since
  nothing reaches SQL for them;
- gauges are read from their source: the task table, adapter versions, the stream's lag.

If a store is down the scrape still answers with what it could read, plus
``adaptd_scrape_errors`` so a dashboard can tell.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage import crud
from storage import serving as serving_store
from storage.stream import FeedbackStream, read_metrics

log = logging.getLogger(__name__)

# Promotion to served: a load is ~0.1 s, a round waits for the slowest replica.
SERVING_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricDef, ...] = (
    MetricDef("adaptd_feedback_events_total", "counter", ("task", "verdict"),
              "Feedback events stored, by task and verdict."),
    MetricDef("adaptd_feedback_rejected_total", "counter", ("reason",),
              "Feedback requests or events refused by the API, by reason."),
    MetricDef("adaptd_feedback_duplicates_total", "counter", (),
              "Feedback events acknowledged and dropped because their id was already seen."),
    MetricDef("adaptd_crosstalk_events_total", "counter", ("task", "source_task", "origin"),
              "Outputs carrying another task's style, by origin (user flag or auto detector)."),
    MetricDef("adaptd_dead_letter_events_total", "counter", (),
              "Stream entries moved to the dead-letter stream."),
    MetricDef("adaptd_ingest_lag_events", "gauge", (),
              "Stream entries not yet acknowledged by the drain."),
    MetricDef("adaptd_buffer_examples", "gauge", ("task",),
              "Training examples per task not yet consumed by a training run."),
    MetricDef("adaptd_task_info", "gauge", ("task", "risk", "adapter"),
              "Always 1; joins a task to its risk level and current adapter."),
    MetricDef("adaptd_task_quality", "gauge", ("task",), "Rolling acceptance of a task."),
    MetricDef("adaptd_task_crosstalk_rate", "gauge", ("task",), "Rolling crosstalk rate."),
    MetricDef("adaptd_task_degraded", "gauge", ("task",), "1 while the degradation alarm is on."),
    MetricDef("adaptd_task_ratio", "gauge", ("adapter", "task"), "Mixture ratio of a task."),
    MetricDef("adaptd_policy_decisions_total", "counter", ("action", "task"),
              "Policy decisions, by action and task."),
    MetricDef("adaptd_training_runs_total", "counter", ("adapter", "outcome"),
              "Training runs, by outcome (promoted, rejected, failed)."),
    MetricDef("adaptd_training_duration_seconds", "histogram", ("adapter",),
              "Wall time of finished training runs."),
    MetricDef("adaptd_adapter_version", "gauge", ("adapter",), "Promoted version per adapter."),
    MetricDef("adaptd_eval_score", "gauge", ("task", "adapter"),
              "Eval quality of the promoted version, per task."),
    MetricDef("adaptd_eval_crosstalk_rate", "gauge", ("task", "adapter"),
              "Eval crosstalk rate of the promoted version, per task."),
    # Serving (docs/contracts.md section 11), written by the serving sync.
    MetricDef("adaptd_serving_loaded", "gauge", ("replica", "adapter", "version"),
              "1 while a serving replica holds an adapter version (as the last sync saw it)."),
    MetricDef("adaptd_serving_sync_errors_total", "counter", ("replica", "reason"),
              "Serving sync errors by replica and reason (refused, unreachable)."),
    MetricDef("adaptd_serving_promotion_seconds", "histogram", (),
              "Time from promotion to routed, once every reachable replica listed the version."),
    MetricDef("adaptd_serving_pending_seconds", "gauge", ("adapter", "version"),
              "Age of a promoted version still waiting for the serving replicas."),
)
BY_NAME = {m.name: m for m in METRICS}
REJECT_REASONS = ("signature", "replay", "schema", "too_large", "unknown_task", "unavailable")


def _family(defn: MetricDef) -> Any:
    base = defn.name.removesuffix("_total") if defn.kind == "counter" else defn.name
    if defn.kind == "counter":
        return CounterMetricFamily(base, defn.help, labels=list(defn.labels))
    if defn.kind == "histogram":
        return HistogramMetricFamily(base, defn.help, labels=list(defn.labels))
    return GaugeMetricFamily(base, defn.help, labels=list(defn.labels))


class StoreCollector(Collector):
    """Reads every adaptd metric from SQL and Redis at scrape time."""

    def __init__(self, *, engine: Engine, client: redis.Redis, prefix: str):
        self.engine, self.client, self.prefix = engine, client, prefix
        # Counted here when Redis itself is down, so "unavailable" is never lost from view.
        self.local_rejections: dict[str, float] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        families = {d.name: _family(d) for d in METRICS}
        errors = GaugeMetricFamily("adaptd_scrape_errors", "Stores that failed this scrape.",
                                   labels=["store"])
        try:
            self._from_sql(families)
        except Exception as exc:  # a scrape must answer even when SQL is down
            log.warning("metrics: SQL unavailable: %s", exc)
            errors.add_metric(["sql"], 1)
        try:
            self._from_redis(families)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            errors.add_metric(["redis"], 1)
            self._add_rejections(families, {})
        yield from families.values()
        yield errors

    def _add_rejections(self, families: dict[str, Any], stored: dict[str, float]) -> None:
        fam = families["adaptd_feedback_rejected_total"]
        for reason in REJECT_REASONS:
            value = stored.get(f"adaptd_feedback_rejected_total:{reason}", 0.0)
            fam.add_metric([reason], value + self.local_rejections.get(reason, 0.0))

    def _from_redis(self, families: dict[str, Any]) -> None:
        stored = read_metrics(self.client, self.prefix)
        self._add_rejections(families, stored)
        families["adaptd_feedback_duplicates_total"].add_metric(
            [], stored.get("adaptd_feedback_duplicates_total", 0.0))
        families["adaptd_dead_letter_events_total"].add_metric(
            [], stored.get("adaptd_dead_letter_events_total", 0.0))
        stream = FeedbackStream(self.client, self.prefix, dedupe_ttl=1, replay_ttl=1)
        families["adaptd_ingest_lag_events"].add_metric([], stream.lag())

    def _from_sql(self, families: dict[str, Any]) -> None:
        with Session(self.engine) as session:
            for name, labels, value in crud.read_counters(session):
                defn = BY_NAME.get(name)
                if defn is None or defn.kind != "counter":
                    continue
                families[name].add_metric([labels.get(k, "") for k in defn.labels], value)
            tasks = crud.list_tasks(session)
            buffers = crud.buffered_counts(session)
            for task in tasks:
                families["adaptd_task_info"].add_metric([task.name, task.risk, task.adapter], 1)
                families["adaptd_buffer_examples"].add_metric([task.name], buffers.get(task.name, 0))
                families["adaptd_task_ratio"].add_metric([task.adapter, task.name], task.ratio)
                families["adaptd_task_degraded"].add_metric([task.name], int(task.degraded))
                if task.quality is not None:
                    families["adaptd_task_quality"].add_metric([task.name], task.quality)
                if task.crosstalk_rate is not None:
                    families["adaptd_task_crosstalk_rate"].add_metric([task.name],
                                                                       task.crosstalk_rate)
            self._versions(session, families)
            self._durations(session, families)
            self._serving(session, families)

    def _versions(self, session: Session, families: dict[str, Any]) -> None:
        for row in crud.latest_promoted_versions(session):
            families["adaptd_adapter_version"].add_metric([row.adapter], row.version)
            # The trainer stores {"candidate": {"tasks": {task: {...}}, ...}, ...}; a task
            # without held-out examples has quality None and gets no sample.
            candidate = row.eval.get("candidate") or {}
            for task, res in (candidate.get("tasks") or {}).items():
                if not isinstance(res, dict):
                    continue
                if res.get("quality") is not None:
                    families["adaptd_eval_score"].add_metric([task, row.adapter], res["quality"])
                if res.get("crosstalk_rate") is not None:
                    families["adaptd_eval_crosstalk_rate"].add_metric(
                        [task, row.adapter], res["crosstalk_rate"])

    def _durations(self, session: Session, families: dict[str, Any]) -> None:
        for adapter, values in crud.finished_job_seconds(session).items():
            buckets = [(str(b), float(sum(v <= b for v in values))) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            families["adaptd_training_duration_seconds"].add_metric(
                [adapter], buckets=buckets, sum_value=sum(values))


    def _serving(self, session: Session, families: dict[str, Any]) -> None:
        for row in serving_store.held(session):
            if row.state == "loaded":
                families["adaptd_serving_loaded"].add_metric(
                    [row.replica, row.adapter, str(row.version)], 1)
        at = time.time()
        for rollout in serving_store.pending_rollouts(session):
            families["adaptd_serving_pending_seconds"].add_metric(
                [rollout.adapter, str(rollout.version)], max(0.0, at - rollout.requested_at))
        values = serving_store.routed_durations(session)
        if values:
            buckets = [(str(b), float(sum(v <= b for v in values))) for b in SERVING_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            families["adaptd_serving_promotion_seconds"].add_metric(
                [], buckets=buckets, sum_value=sum(values))


def build_registry(collector: StoreCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


