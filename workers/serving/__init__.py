"""Serving: the routed versions reach the serving engine (docs/contracts.md section 11).

``backends`` talks to an engine's runtime LoRA API, ``sync`` reconciles every configured
replica with what should be served and routes a promoted version once every reachable
replica lists it, ``contract`` publishes how prompts are built, ``tasks`` is the Celery glue.
"""
