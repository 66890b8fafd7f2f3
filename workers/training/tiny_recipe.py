"""What ``builtin:tiny`` is built from: the recipe and the suite texts.

Kept apart from the builder (``tiny.py``, which needs torch and transformers) because the
policy tick hashes them to know which base build training jobs use now, and that process
should not load torch for a hash.
"""

from __future__ import annotations

from storage.suite import Suite
from workers.training.data import assemble, pair_key

TINY_SPEC = {
    "builder": 4,  # bump when the recipe changes so cached bases are rebuilt
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    # Room for the longest builtin conversation: helpdesk-en's longest seed conversation with
    # its answer (about 700 tokens; its scenario trains on up to 768) and its longest prompt
    # (about 170) with the 600 new tokens its app allows. A serving engine refuses a request
    # longer than this.
    "max_position_embeddings": 1024,
    "pretrain_steps": 1000,
    # A pre-training step takes up to pretrain_batch sequences, only as many as fit in
    # pretrain_tokens: 32 x 48 tokens, the longest pre-training sequence of the short builtin
    # suites (desk-en), so those train on full batches of 32 and a suite of long chat answers
    # (helpdesk-en) on a few per step, at about the same cost per step.
    "pretrain_batch": 32,
    "pretrain_tokens": 1536,
    "pretrain_lr": 3e-3,
    "seed": 1234,
}


def suite_texts(suite: Suite) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(task, prompt, response) of every task's seed data, and (prompt, response) of general.

    General data leaves out the held-out split the training jobs measure general-ability
    retention on (``assemble``'s split): a base that memorised those examples made every
    adapter look like it forgot general ability, the longer it trained the more.
    """
    tasks = [(t, e.prompt, e.response) for t in sorted(suite.tasks) for e in suite.seed_examples(t)]
    held = {pair_key(s.prompt, s.response) for s in assemble(suite, []).general_heldout}
    general = [(e.prompt, e.response) for e in suite.general_examples()
               if pair_key(e.prompt, e.response) not in held]
    return tasks, general
