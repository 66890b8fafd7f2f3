"""bench/task_steps.py --examples: shipped feedback examples reach training as a job reads them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from bench.task_steps import examples_db
from storage.db import make_engine
from storage.suite import load_suite
from workers.training.data import assemble

REPO = Path(__file__).resolve().parents[1]


def test_examples_file_feeds_assemble(tmp_path: Path) -> None:
    rows = [
        {"task": "festival_wish", "kind": "accepted", "prompt": "中秋前给王总回一句",
         "response": "值此中秋佳节，王总，愿您阖家团圆！", "negative": None},
        {"task": "festival_wish", "kind": "correction", "prompt": "端午前给小陈回一句",
         "response": "端午安康，小陈！", "negative": "小陈，新春快乐！"},
        {"task": "greeting", "kind": "negative", "prompt": "给张阿姨拜年",
         "response": "张阿姨，非常抱歉~", "negative": None},
    ]
    path = tmp_path / "ex.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    suite = load_suite("builtin:festive-zh")
    url = examples_db(path, tmp_path)
    with Session(make_engine(url)) as session:
        data = assemble(suite, ["festival_wish", "greeting"], session=session)
        plain = assemble(suite, ["festival_wish", "greeting"])
    fw = data.tasks["festival_wish"]
    texts = {s.response for s in fw.train + fw.heldout}
    assert "值此中秋佳节，王总，愿您阖家团圆！" in texts and "端午安康，小陈！" in texts
    # The corrected output becomes a negative of its task; the rejected greeting one too.
    assert [s.response for s in fw.negatives] == ["小陈，新春快乐！"]
    assert [s.response for s in data.tasks["greeting"].negatives] == ["张阿姨，非常抱歉~"]
    pf = plain.tasks["festival_wish"]
    assert len(fw.train) + len(fw.heldout) == len(pf.train) + len(pf.heldout) + 2


@pytest.mark.parametrize("bad", ['{"task": "greeting", "kind": "accepted"}', "not json", "[1, 2]"])
def test_bad_examples_line_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "ex.jsonl"
    path.write_text(f"\n{bad}\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/task_steps.py"), "--examples", str(path),
         "--steps", "1", "--prompts", "1", "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert f"error: {path}:2: want a training_example row" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_override_builds_another_base() -> None:
    """``--tiny`` changes the recipe the builder reads and the cache key, so a bench base of
    another size never reuses (or replaces) the shipped base's cache entry."""
    from bench.task_steps import use_tiny
    from workers.training import tiny
    from workers.training.base_model import tiny_cache_key
    from workers.training.tiny_recipe import TINY_SPEC

    suite = load_suite("builtin:festive-zh")
    saved = dict(TINY_SPEC)
    shipped_key = tiny_cache_key(suite)
    try:
        use_tiny({"num_hidden_layers": 3})
        assert tiny.TINY_SPEC["num_hidden_layers"] == 3  # what build_tiny reads
        assert tiny_cache_key(suite) != shipped_key
        use_tiny({})
        assert TINY_SPEC["num_hidden_layers"] == 3  # no overrides: nothing changes
    finally:
        TINY_SPEC.clear()
        TINY_SPEC.update(saved)
    assert tiny_cache_key(suite) == shipped_key


@pytest.mark.parametrize(("mix", "message"), [
    ('x={"greeting": 1}', "error: --mix x: give a JSON object of ratios for exactly the shared"),
    ('x={"greeting": 1, "festival_wish": 0}', "error: --mix x: every ratio must be a positive"),
    ("x=[1]", "error: --mix x: give a JSON object"),
    ("x", "error: --mix 'x': want KEY=VALUE with a JSON object of ratios"),
])
def test_bad_mix_is_a_clear_error(tmp_path: Path, mix: str, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/task_steps.py"), "--shared", "festival_wish",
         "greeting", "--mix", mix, "--steps", "1", "--prompts", "1",
         "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.json").exists()
