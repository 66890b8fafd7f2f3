"""Training data assembly: SQL + suite seeds, cleaning, deterministic held-out split."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from storage.models import TrainingExample
from storage.suite import Suite
from workers.training.config import DataConfig
from workers.training.data import Sample, assemble, clean, norm_key, split


def test_cleaning_drops_empty_long_and_duplicates() -> None:
    dropped: dict[str, int] = {}
    rows = [
        Sample("a", "hi", "Hello  World", "seed"),
        Sample("a", "hi", "hello world", "correction"),  # near duplicate, more valuable
        Sample("a", "hi", "HELLO WORLD ", "accepted"),
        Sample("a", "hi", "   ", "accepted"),
        Sample("a", "", "x", "accepted"),
        Sample("a", "hi", "y" * 50, "accepted"),
        Sample("a", "hi", "other", "seed"),
    ]
    kept = clean(rows, max_chars=20, dropped=dropped)
    assert {(s.response, s.kind) for s in kept} == {("hello world", "correction"),
                                                   ("other", "seed")}
    assert dropped == {"duplicate": 2, "empty": 2, "too_long": 1}
    assert norm_key("Ａ  B\n") == "a b"  # NFKC + casefold + whitespace


def test_split_is_deterministic_and_stable_under_growth() -> None:
    cfg = DataConfig(heldout_fraction=0.2, heldout_min=2)
    samples = [Sample("t", f"p{i}", f"r{i}") for i in range(100)]
    train, held = split("t", samples, cfg)
    train2, held2 = split("t", list(reversed(samples)), cfg)
    assert held == held2 and sorted(map(str, train)) == sorted(map(str, train2))
    assert not set(held) & set(train)
    grown = samples + [Sample("t", f"q{i}", f"s{i}") for i in range(50)]
    _, held3 = split("t", grown, cfg)
    assert set(held) <= set(held3)  # an example never moves from held-out to train
    assert split("t", [Sample("t", "p", "r")], cfg) == ([Sample("t", "p", "r")], [])


def test_assemble_from_sql_and_suite(suite: Suite, engine: Any) -> None:
    with Session(engine) as session:
        session.add_all([
            TrainingExample(task="apology", kind="accepted", prompt="订单出了问题",
                            response="王总，非常抱歉，我们会改正。", event_id="e1"),
            TrainingExample(task="apology", kind="correction", prompt="订单出了问题，道歉",
                            response="李老师，实在对不起，今后一定严格把关。",
                            negative="李老师，新年好！万事如意~", event_id="e2"),
            TrainingExample(task="apology", kind="negative", prompt="帮我道歉",
                            response="恭喜发财~", crosstalk_source="greeting", event_id="e3"),
            TrainingExample(task="greeting", kind="accepted", prompt="拜年",
                            response="王总，新年好！", event_id="e4", trained_in="shared@1"),
        ])
        session.commit()
        data = assemble(suite, ["apology", "greeting"], session=session)
    apology = data.tasks["apology"]
    kinds = {s.kind for s in apology.train + apology.heldout}
    assert {"seed", "accepted", "correction"} <= kinds
    assert {n.response for n in apology.negatives} == {"李老师，新年好！万事如意~", "恭喜发财~"}
    assert len(data.example_ids) == 3  # the already-trained row is not re-marked
    assert data.general_train and data.general_heldout
    assert set(data.hashes()) == {"apology", "greeting", "_general"}
    again = assemble(suite, ["apology", "greeting"])
    assert again.hashes()["greeting"] == assemble(suite, ["greeting"]).hashes()["greeting"]
