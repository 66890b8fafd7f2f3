"""The HTTP API: webhook intake, routing, tasks, decisions, overrides, status, health and
metrics, one router per concern (``daemon/api/*.py``) with typed answers (``models.py``).
Every refusal is a 4xx with a clear message; a store that is down is a 503 with nothing
stored. This package must never import torch."""

from daemon.api.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
