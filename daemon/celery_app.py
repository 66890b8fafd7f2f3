"""The Celery app and beat schedule. JSON only (no pickle), late acks, prefetch 1."""

from __future__ import annotations

from celery import Celery

from daemon.settings import Settings
from workers.context import WorkerContext

QUEUES = ("ingest", "policy", "train", "serving")


def worker_context(settings: Settings) -> WorkerContext:
    return WorkerContext(
        redis_url=settings.redis_url,
        database_url=settings.database_url,
        key_prefix=settings.key_prefix,
        artifacts_dir=settings.artifacts_dir,
        suite_ref=settings.suite,
        drain_batch=settings.drain_batch,
        drain_claim_idle_ms=settings.drain_claim_idle_ms,
        drain_max_deliveries=settings.drain_max_deliveries,
        train_lease_seconds=settings.train_lease_seconds,
        policy_mode=settings.policy_mode,
        policy=dict(settings.policy),
        train=dict(settings.train),
        eval=dict(settings.eval),
        data=dict(settings.data),
        gate=dict(settings.gate),
        train_device=settings.train_device,
        serving_replicas=[r.model_dump() for r in settings.serving_replicas],
        serving_grace_seconds=settings.serving_grace_seconds,
        serving_timeout_seconds=settings.serving_timeout_seconds,
    )


def make_celery(settings: Settings) -> Celery:
    """A Celery app wired to ``settings``; tasks find their context on ``app.adaptd_context``."""
    app = Celery("adaptd", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Task events feed celery-exporter (deploy/prometheus); they carry no payloads.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        # Broker keys live under the adaptd prefix so two deployments can share a Redis.
        broker_transport_options={"global_keyprefix": f"{settings.key_prefix}celery:",
                                  "visibility_timeout": settings.train_time_limit_seconds + 600},
        task_default_queue="ingest",
        task_routes={
            "adaptd.ingest.*": {"queue": "ingest"},
            "adaptd.policy.*": {"queue": "policy"},
            "adaptd.train.*": {"queue": "train"},
            "adaptd.serving.*": {"queue": "serving"},
        },
        task_time_limit=settings.train_time_limit_seconds,
        beat_schedule={
            "drain": {"task": "adaptd.ingest.drain", "schedule": settings.drain_interval_seconds,
                      "options": {"expires": max(1.0, settings.drain_interval_seconds * 5)}},
            "policy": {"task": "adaptd.policy.tick", "schedule": settings.policy_interval_seconds,
                       "options": {"expires": max(1.0, settings.policy_interval_seconds * 2)}},
            **({"serving": {"task": "adaptd.serving.sync",
                            "schedule": settings.serving_sync_seconds,
                            "options": {"expires": max(1.0, settings.serving_sync_seconds)}}}
               if settings.serving_replicas else {}),
        },
    )
    app.adaptd_context = worker_context(settings)
    import workers.tasks  # noqa: F401  (registers the tasks on this app)

    return app
