"""The simulator's feedback model (docs/contracts.md section 9, ``feedback:``).

Rates are checked on a long seeded draw against a rule fixed before the draw: each observed
share lies in its 99.99 % Wilson interval around the configured rate (z = 3.89), so a correct
model fails this test about once in 10,000 seeds per check and a model off by a point or
more on these counts fails it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.sim.feedback import FeedbackModel, FeedbackSpec
from daemon.sim.judge import Verdict
from daemon.sim.scenario import load_scenario
from storage.suite import SuiteError

Z = 3.89
THIN = FeedbackSpec(rated=0.05, false_reject=0.05, false_accept=0.10, names_source=0.2,
                          delay=200, post_unrated=True)
GOOD = Verdict(True, None, "ok")
BAD = Verdict(False, "greeting", "carries the style of greeting")


def within(k: int, n: int, p: float) -> bool:
    """``p`` lies in the Wilson interval of ``k`` successes in ``n`` at ``Z``."""
    phat = k / n
    centre = (phat + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(phat * (1 - phat) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half <= p <= centre + half


def test_rates_hold_on_a_long_draw() -> None:
    users = FeedbackModel(THIN, seed=11)
    n = 400_000
    ratings = [users.rate(GOOD if i % 2 else BAD) for i in range(n)]
    rated = [(i, r) for i, r in enumerate(ratings) if r is not None]
    on_good = [r for i, r in rated if i % 2]
    on_bad = [r for i, r in rated if not i % 2]
    false_accepts = [r for r in on_bad if r.accepted]
    rejects = [r for r in on_bad if not r.accepted]
    checks = {
        "rated": (len(rated), n, THIN.rated),
        "false_reject": (sum(not r.accepted for r in on_good), len(on_good),
                         THIN.false_reject),
        "false_accept": (len(false_accepts), len(on_bad), THIN.false_accept),
        "names_source": (sum(r.crosstalk_source == "greeting" for r in rejects), len(rejects),
                         THIN.names_source),
    }
    for name, (k, total, p) in checks.items():
        assert total > 1000 and within(k, total, p), (name, k, total, p)
    # A good answer rejected and a bad one accepted never name a source.
    assert all(r.crosstalk_source is None for r in on_good + false_accepts)
    # Delays: whole requests from 0 to 200, uniform (mean 100, each end reached).
    delays = [r.delay for _, r in rated]
    assert min(delays) == 0 and max(delays) == THIN.delay
    mean, sd = sum(delays) / len(delays), math.sqrt((201**2 - 1) / 12)
    assert abs(mean - 100) <= Z * sd / math.sqrt(len(delays)), mean


def test_the_same_answers_are_rated_whatever_the_judge_said() -> None:
    # Common random numbers: two policies on one seed see the same answers rated, with the
    # same delays, however differently their answers are judged; another seed differs.
    spec = THIN
    a, b, c = FeedbackModel(spec, seed=3), FeedbackModel(spec, seed=3), FeedbackModel(spec, seed=4)
    ra = [a.rate(GOOD) for _ in range(5000)]
    rb = [b.rate(BAD) for _ in range(5000)]
    rc = [c.rate(GOOD) for _ in range(5000)]
    assert [(r is None, r and r.delay) for r in ra] == [(r is None, r and r.delay) for r in rb]
    assert [r is None for r in ra] != [r is None for r in rc]


def test_the_default_is_the_perfect_user() -> None:
    users = FeedbackModel(FeedbackSpec(), seed=0)
    for _ in range(1000):
        assert users.rate(GOOD) == (True, None, 0)
        assert users.rate(BAD) == (False, "greeting", 0)


def _scenario(tmp_path: Path, feedback: dict[str, Any]) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 1, "suite": "builtin:festive-zh", "feedback": feedback,
        "phases": [{"name": "only", "events": 10, "traffic": {"greeting": 1.0}}]}), "utf-8")
    return path


def test_a_feedback_block_loads(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path, THIN.model_dump()))[0]
    assert scenario.feedback == THIN
    partial = load_scenario(_scenario(tmp_path, {"rated": 0.1}))[0].feedback
    assert partial == FeedbackSpec(rated=0.1)


@pytest.mark.parametrize(("block", "message"), [
    ({"rated": 1.5}, "feedback.rated: Value error, a share of answers must be between 0 and 1, got 1.5"),
    ({"false_reject": -0.1}, "feedback.false_reject: Value error, a share of answers must be "
                             "between 0 and 1, got -0.1"),
    ({"names_source": 2}, "feedback.names_source: Value error, a share"),
    ({"delay": -3}, "feedback.delay: Value error, a delay in requests must be 0 or more, got -3"),
    ({"delay": 2.5}, "feedback.delay: Input should be a valid integer"),
    ({"rate": 0.1}, "feedback.rate: Extra inputs are not permitted"),
])
def test_a_bad_feedback_block_is_refused_clearly(tmp_path: Path, block: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(SuiteError) as err:
        load_scenario(_scenario(tmp_path, block))
    assert message in str(err.value), str(err.value)
