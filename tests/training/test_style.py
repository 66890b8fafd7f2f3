"""The crosstalk style detector and marker rules."""

from __future__ import annotations

from storage.suite import Suite
from workers.training.evaluate import char_f1, default_scorer
from workers.training.style import StyleDetector, build_detector, crosstalk_source, marker_source


def test_detector_recognizes_each_tasks_style(suite: Suite) -> None:
    det = build_detector(suite)
    assert det.predict("李老师，新年好！愿您新春大吉，恭喜发财~") == "greeting"
    assert det.predict("王总，实在对不起，这次订单出错给您添了麻烦，") == "apology"
    # An apology written in greeting style is flagged with greeting as the source.
    assert det.leak_source("王总，新年好！祝您新的一年身体健康，万事如意~", "apology",
                           margin=2.0) == "greeting"
    assert det.leak_source("王总，非常抱歉，我们会立即改正。", "apology", margin=2.0) is None
    again = StyleDetector.from_dict(det.to_dict())
    assert again.predict("真心感谢小陈，改天请您喝茶。") == "thanks"


def test_markers_name_the_source(suite: Suite) -> None:
    markers = {t: s.markers for t, s in suite.tasks.items()}
    assert marker_source("王总，非常抱歉~", "apology", markers) == "greeting"
    assert marker_source("王总，非常抱歉。", "apology", markers) is None
    assert crosstalk_source("谢谢王总，非常抱歉。", "apology", detector=None, markers=markers,
                            margin=2.0) == "thanks"


def test_scorer_forbid_and_similarity(suite: Suite) -> None:
    score = default_scorer(suite)
    ref = "王总，非常抱歉，我们会立即改正。"
    assert score("apology", "p", ref, [ref]) == 1.0
    assert score("apology", "p", ref + "~", [ref]) == 0.0  # forbidden phrase
    assert 0 < char_f1("王总，非常抱歉", ref) < 1
