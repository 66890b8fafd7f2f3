"""What each pre-training step of a builtin base trains on (``tiny.pretrain_batches``): up to
``pretrain_batch`` sequences of an epoch-wise shuffle, only as many as fit in
``pretrain_tokens``."""

from __future__ import annotations

import random
from itertools import chain, islice

import pytest

from storage.suite import load_suite
from tests.training.conftest import SUITE_PATH
from workers.training.tiny import _pretrain_seqs, pretrain_batches, train_tokenizer
from workers.training.tiny_recipe import TINY_SPEC


def _steps(lengths: list[int], n: int, *, batch: int = 4, tokens: int = 100,
           seed: int = 0) -> list[list[int]]:
    return list(islice(pretrain_batches(lengths, random.Random(seed), batch=batch,
                                        tokens=tokens), n))


def test_short_sequences_fill_whole_batches_of_the_epoch_shuffle() -> None:
    steps = _steps([10] * 10, 5)  # 4 x 10 tokens fit in 100
    assert [len(s) for s in steps] == [4] * 5
    rng, order = random.Random(0), []
    for _ in range(2):  # epoch-wise: a new shuffle of all of them once fewer than 4 are left
        epoch = list(range(10))
        rng.shuffle(epoch)
        order += epoch
    assert list(chain(*steps)) == order[:20]
    assert sorted(order[:10]) == list(range(10))


def test_long_sequences_take_as_many_as_fit_and_none_is_skipped() -> None:
    lengths = [60, 30, 30, 150, 10, 45, 45, 5]
    steps = _steps(lengths, 6)
    for step in steps:
        assert len(step) == 1 or sum(lengths[i] for i in step) <= 100
        assert len(step) <= 4
    assert any(len(step) == 1 and lengths[step[0]] == 150 for step in steps)  # alone, too long
    first_epoch = list(chain(*steps))[:len(lengths)]
    assert sorted(first_epoch) == list(range(len(lengths)))
    assert steps == _steps(lengths, 6)  # seeded


@pytest.mark.parametrize("ref", ["builtin:festive-zh", "builtin:office-en", "builtin:cheer-en",
                                 "builtin:desk-en", str(SUITE_PATH), "builtin:helpdesk-en"])
def test_builtin_suites_under_the_recipe(ref: str) -> None:
    """The short suites train on full batches whatever the shuffle (their longest
    ``pretrain_batch`` sequences fit the budget); helpdesk-en's long answers on a few."""
    suite = load_suite(ref)
    seqs = _pretrain_seqs(suite, train_tokenizer(suite, int(TINY_SPEC["vocab_size"])))
    lengths = sorted((len(s.ids) for s in seqs), reverse=True)
    batch, tokens = int(TINY_SPEC["pretrain_batch"]), int(TINY_SPEC["pretrain_tokens"])
    if suite.name == "helpdesk-en":
        steps = _steps(lengths, 100, batch=batch, tokens=tokens)
        assert max(len(s) for s in steps) < batch and min(len(s) for s in steps) >= 2
    else:
        assert sum(lengths[:batch]) <= tokens
