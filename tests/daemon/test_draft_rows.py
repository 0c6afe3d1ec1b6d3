"""A verification pass asks the expert cache for what its kept tokens need (draft_rows.py): rejected drafts' experts
are not credited as uses, accepted drafts' are credited as plain steps credit them, and the pass prefetches no more
than a plain step would. On the trained fixture (real routing) at a 25 % budget, where reads and evictions happen."""

from __future__ import annotations

import numpy as np
import pytest

from moed.daemon.config import engine_config
from moed.daemon.engine.draft_rows import DraftRows
from moed.daemon.engine.model import load_engine
from moed.daemon.engine.prefetch import _agreed
from moed.daemon.engine.speculative import GreedyPicker, verify
from moed.daemon.engine.speculative_loop import prefill
from mlx_lm.models.cache import make_prompt_cache

PROMPT = "It was the best of times, it was the worst of times, it was the age of"


class Started:
    """A fresh engine at 25 % with the prompt prefilled; `last` is the first generated token, not yet cached."""

    def __init__(self, store):
        self.engine = load_engine(engine_config(str(store), cache_budget="25%"))
        self.kv = make_prompt_cache(self.engine.model)
        ids = self.engine.tokenizer.encode(PROMPT)
        prefill(self.engine.model, self.kv, ids[:-1])
        (self.last,), _ = verify(self.engine.model, self.kv, ids[-1], [], GreedyPicker(), 0)
        self.engine.cache.wait_loads()

    def step(self, drafts=(), rows: DraftRows | None = None) -> tuple[list[int], int]:
        tokens, n = verify(self.engine.model, self.kv, self.last, list(drafts), GreedyPicker(), 1, rows)
        self.engine.cache.wait_loads()
        self.last = tokens[-1]
        return tokens, n

    def close(self):
        self.engine.close()


@pytest.fixture
def started(trained_store):
    made = []

    def start() -> Started:
        made.append(Started(trained_store))
        return made[-1]

    yield start
    for s in made:
        s.close()


def wrong(token: int, n: int, vocab: int) -> list[int]:
    """n drafts, the first of which is not `token` (so all are rejected)."""
    return [(token + 1 + i) % vocab for i in range(n)]


def test_rejected_drafts_are_not_credited_as_uses(started):
    plain, spec, uncounted = started(), started(), started()
    vocab = plain.engine.manifest.config["vocab_size"]
    (target,), _ = plain.step()
    drafts = wrong(target, 3, vocab)
    assert spec.step(drafts, spec.engine.draft_rows) == ([target], 0)
    assert spec.engine.cache.usage() == plain.engine.cache.usage()  # row 0's experts only, as the plain step
    # without telling the cache which rows are drafts, the rejected rows' experts count too (the test can fail)
    assert uncounted.step(drafts) == ([target], 0)
    assert uncounted.engine.cache.usage() != plain.engine.cache.usage()


def test_accepted_drafts_are_credited_as_the_plain_steps_that_make_the_same_tokens(started):
    plain, spec = started(), started()
    tokens = [plain.step()[0][0] for _ in range(3)]
    assert spec.step(tokens[:2], spec.engine.draft_rows) == (tokens, 2)
    assert spec.engine.cache.usage() == plain.engine.cache.usage()


def test_a_verification_pass_prefetches_no_more_than_a_plain_step(started):
    plain, spec, uncapped = started(), started(), started()
    k, layers = plain.engine.manifest.config["num_experts_per_tok"], len(plain.engine.manifest.layers)
    vocab = plain.engine.manifest.config["vocab_size"]
    (target,), _ = plain.step()
    drafts = wrong(target, 4, vocab)
    before = spec.engine.cache.stats().prefetches
    spec.step(drafts, spec.engine.draft_rows)
    read = spec.engine.cache.stats().prefetches - before
    assert read <= k * (layers - 1)  # depth 1: at most one row's top-k for each layer after the first
    before = uncapped.engine.cache.stats().prefetches
    uncapped.step(drafts)
    assert uncapped.engine.cache.stats().prefetches - before > read  # every row's predictions, as before


def test_agreed_takes_the_experts_two_rows_predicted_most_votes_first_then_the_earlier_row():
    rows = np.array([5, 1, 9,   # row 0
                     9, 2, 5,   # row 1
                     7, 9, 3,   # row 2
                     3, 6, 4])  # row 3
    assert _agreed(rows, 3).tolist() == [9, 5, 3]  # 9 thrice; 5 and 3 twice, 5 first seen earlier; 1 2 7 6 4 once
    assert _agreed(rows, 2).tolist() == [9, 5]  # at most k
    assert _agreed(rows[:3], 3).tolist() == []  # one row agrees with no other


class Credits:
    def __init__(self):
        self.calls = []

    def credit(self, layer, experts, uses):
        self.calls.append((layer, experts.tolist(), uses.tolist()))


def test_draft_rows_credit_row_zero_now_and_each_accepted_row_at_the_end():
    cache = Credits()
    rows = DraftRows(cache)
    rows.begin()
    idx = np.array([[[1, 2], [2, 3], [3, 4], [8, 9]]])  # [1, rows, k]: row 0, then three drafts
    experts = np.unique(idx)
    assert rows.uses(0, idx, experts).tolist() == [1, 1, 0, 0, 0, 0]  # 1 2 | 3 4 8 9 drafts only
    rows.end(2)
    assert not rows.open
    assert cache.calls == [(0, [2, 3, 4], [1, 2, 1])]  # rows 1 and 2: 3 twice, 2 and 4 once; row 3 rejected
    rows.begin()
    rows.uses(0, idx, experts)
    rows.abort()
    assert not rows.open and len(cache.calls) == 1


def test_verify_closes_the_pass_when_the_model_raises():
    class Broken:
        def __call__(self, x, cache):
            raise RuntimeError("boom")

    rows = DraftRows(Credits())
    with pytest.raises(RuntimeError):
        verify(Broken(), [], 1, [2, 3], GreedyPicker(), 0, rows)
    assert not rows.open
