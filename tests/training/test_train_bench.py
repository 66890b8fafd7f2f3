"""bench.train's long profile: production lengths, the same examples on every call."""

from __future__ import annotations

import statistics

from bench.train_data import ANSWER, TRAIN_PER_TASK, long_profile
from storage.suite import Suite
from workers.training.tiny import train_tokenizer


def test_long_profile_lengths(suite: Suite) -> None:
    tok = train_tokenizer(suite, 2048)  # builtin:tiny's tokenizer, without its pre-training
    data = long_profile(suite, tok, seed=0)
    assert data.hashes() == long_profile(suite, tok, seed=0).hashes()
    assert data.hashes() != long_profile(suite, tok, seed=1).hashes()
    assert set(data.tasks) == set(suite.tasks)
    lo, hi = ANSWER[2], ANSWER[3]
    answers, prompts = [], []
    for task, td in data.tasks.items():
        assert len(td.train) == TRAIN_PER_TASK and td.heldout
        # One system prompt per task (an app screen), ahead of every request.
        systems = {s.prompt.split("\n\n")[0] for s in td.train + td.heldout}
        assert len(systems) == 1, task
        for s in td.train:
            answers.append(len(tok.encode(s.response, add_special_tokens=False)))
            prompts.append(len(tok.encode(s.prompt, add_special_tokens=False)))
    # Re-tokenising decoded text may merge a token or two at the cut.
    assert lo - 4 <= min(answers) and max(answers) <= hi + 4
    assert 180 <= statistics.median(answers) <= 360  # log-normal around 256
    assert statistics.median(prompts) >= 150  # the system prompt dominates the prompt
    assert max(answers) > 3 * min(answers)  # lengths vary: what makes padding costly
