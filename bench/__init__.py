"""Benchmarks a maintainer reruns, each run from the repository root as ``python -m bench.<name>``
(``--quick`` for the short form, ``--out PATH`` for where its JSON goes)."""
