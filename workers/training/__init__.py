"""Training and evaluation of LoRA adapters (torch/transformers/peft live only here).

Importing this package is cheap: modules that need torch import it themselves. Entry points:
``job.run_training_job``, ``job.claim_job``, ``versions.evaluate_version``,
``versions.list_versions``, ``generate.AdapterServer``, ``gate.gate``.
"""
