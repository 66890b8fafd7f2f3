"""Suites for tests: a builtin suite rewritten as a file suite."""

from __future__ import annotations

import json
from pathlib import Path

from storage.suite import Suite, TaskSpec


def as_file_suite(suite: Suite, root: Path) -> Suite:
    """``suite``'s tasks with their seed data written to JSONL under ``root``: no prompt
    generators."""
    tasks = {}
    for name, spec in suite.tasks.items():
        rows = [json.dumps({"prompt": e.prompt, "response": e.response}, ensure_ascii=False)
                for e in suite.seed_examples(name)]
        (root / f"{name}.jsonl").write_text("\n".join(rows) + "\n", "utf-8")
        tasks[name] = TaskSpec(risk=spec.risk, tone=spec.tone, data=f"{name}.jsonl",
                               markers=spec.markers, forbid=spec.forbid)
    return Suite(name=f"{suite.name}-files", base_model=suite.base_model, tasks=tasks,
                 base_dir=root, general=suite.general, slots=suite.slots,
                 general_share=suite.general_share)
