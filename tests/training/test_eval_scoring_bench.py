"""The evaluation scorer's n-gram cache (``workers.training.evaluate.char_f1``) gives the
same score as counting the n-grams per pair (``bench/eval_scoring.py``'s baseline), to the
last digit: the gate compares these numbers, so the cache must change the cost only."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from bench.eval_scoring import job_work, reference_char_f1, score_all
from storage.suite import load_suite
from workers.training import evaluate

REPO = Path(__file__).parent.parent.parent


def test_cached_scores_equal_per_pair_counting_on_a_jobs_work() -> None:
    suite = load_suite("builtin:festive-zh")
    sides = job_work(suite, seed=3, answers=8)
    evaluate._ngrams.cache_clear()
    _, cached = score_all(sides, evaluate.char_f1)
    _, counted = score_all(sides, reference_char_f1)
    assert cached == counted
    assert len(set(cached)) > 10  # real work: answers in and out of their task's style


def test_cached_scores_equal_on_edge_cases_and_random_text() -> None:
    rng = random.Random(0)
    alphabet = "新年快乐谢谢抱歉ab，。!~"
    texts = ["", "a", "ab", "新", "新年", "aaaa", "abab"] + [
        "".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(200)]
    for hyp in texts:
        for ref in [*rng.sample(texts, 20), hyp]:
            assert evaluate.char_f1(hyp, ref) == reference_char_f1(hyp, ref), (hyp, ref)
    # Repeated calls hit the cache and must still not change a score (a mutated Counter would).
    assert evaluate._ngrams.cache_info().hits > 0
    assert all(evaluate.char_f1(t, t) == 1.0 for t in texts)


def test_bench_writes_its_table_and_json(tmp_path: Path) -> None:
    out = "eval_scoring-test.json"
    proc = subprocess.run([sys.executable, "bench/eval_scoring.py", "--repeats", "1",
                           "--out", out], cwd=REPO, capture_output=True, text=True, timeout=300)
    path = REPO / "bench" / "results" / out
    try:
        assert proc.returncode == 0, proc.stderr
        assert "cached n-grams" in proc.stdout
        data = json.loads(path.read_text("utf-8"))
        assert data["identical"] is True and data["pairs"] > 0
        assert set(data["seconds"]) == {"counted per pair", "cached n-grams"}
    finally:
        path.unlink(missing_ok=True)
