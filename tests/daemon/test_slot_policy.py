"""The expert cache's slot policy on its own (numpy only): ranking, ageing, tie-breaking, victims, protection of
prefetches, and the read-back choice on a shrink. Imports nothing but the policy module and numpy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from moed.daemon.engine.slot_policy import FREE, HALF_LIFE_TOKENS, LOADING, READY, RETIRED, SlotPolicy

NONE = np.zeros(0, dtype=np.int64)


def ready(n: int) -> np.ndarray:
    return np.full(n, READY, np.int8)


def test_the_policy_module_imports_without_mlx():
    code = "import sys; sys.modules['mlx'] = None; import moed.daemon.engine.slot_policy"  # None: import fails
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="mru"):
        SlotPolicy("mru", 16.0, 4)


def test_free_slots_go_first_lowest_first_then_the_least_recently_used():
    p = SlotPolicy("lru", 16.0, 5)
    state = ready(5)
    state[[1, 3]] = FREE
    for s in (4, 0, 2):  # one use each, one tick apart: 4 is the oldest
        p.advance()
        p.touch(np.array([s]))
    assert p.victims(1, state, NONE, NONE) == [1]
    assert p.victims(2, state, NONE, NONE) == [1, 3]
    assert p.victims(4, state, NONE, NONE) == [1, 3, 4, 0]


def test_lfu_scores_age_by_half_each_half_life():
    p = SlotPolicy("lfu", 4.0, 2)
    p.advance()
    p.touch(np.array([0]), 3.0)
    p.touch(np.array([1]), 1.0)
    assert p.rank().tolist() == [3.0, 1.0]
    p.advance(4)  # one half-life later
    np.testing.assert_allclose(p.rank(), [1.5, 0.5])
    p.touch(np.array([1]), 2.0)  # decayed to 0.5, plus 2
    np.testing.assert_allclose(p.rank(), [1.5, 2.5])
    state = ready(2)
    assert p.victims(1, state, NONE, NONE) == [0]  # frequency, not recency: 0 was used longer ago but more


def test_the_default_half_life_counts_tokens_of_layer_calls():
    layers = 6  # the engine's half-life is HALF_LIFE_TOKENS x its MoE layers (one tick per layer call)
    p = SlotPolicy("lfu", HALF_LIFE_TOKENS * layers, 2)
    p.advance()
    p.touch(np.array([0]), 4.0)  # four uses of slot 0; HALF_LIFE_TOKENS tokens later, one use of slot 1
    p.advance(HALF_LIFE_TOKENS * layers)
    p.touch(np.array([1]), 1.0)
    np.testing.assert_allclose(p.rank(), [2.0, 1.0])
    assert p.victims(1, ready(2), NONE, NONE) == [1]
    p.advance(HALF_LIFE_TOKENS * layers)  # another half-life, and another use of slot 1
    p.touch(np.array([1]), 1.0)
    np.testing.assert_allclose(p.rank(), [1.0, 1.5])
    assert p.victims(1, ready(2), NONE, NONE) == [0]


def test_uses_within_a_tick_are_ordered_and_equal_ranks_go_to_the_lowest_slot():
    p = SlotPolicy("lru", 16.0, 4)
    p.advance()
    p.touch(np.array([2, 0, 3, 1]))  # listed first counts as used first: 2 is the oldest of this call
    assert p.victims(2, ready(4), NONE, NONE) == [2, 0]
    q = SlotPolicy("lfu", 16.0, 4)  # nothing used: all rank 0, a tie
    assert q.victims(3, ready(4), NONE, NONE) == [0, 1, 2]


def test_pinned_busy_loading_and_retired_slots_are_never_victims():
    p = SlotPolicy("lru", 16.0, 6)
    state = ready(6)
    state[2], state[5] = LOADING, RETIRED
    assert p.victims(6, state, np.array([0]), np.array([3])) == [1, 4]  # all that may go, and no more
    assert p.victims(1, state, np.array([0, 1, 4]), np.array([3])) == []


def test_prefetches_are_spared_from_prefetches_until_their_layer_runs():
    p = SlotPolicy("lfu", 16.0, 3)
    state = ready(3)
    p.advance()
    p.touch(np.array([0, 1]))
    p.enter_prefetch(2, layer=7)  # score 0: the lowest
    assert p.victims(1, state, NONE, NONE) == [0]  # spared from another prefetch
    assert p.victims(1, state, NONE, NONE, spare_prefetches=False) == [2]  # a demand read may take it
    assert p.used([6], np.array([0])) == 0 and p.protected == {2: 7}
    assert p.used([7], np.array([1])) == 0  # layer 7 ran without it: no longer protected, still unused
    assert p.protected == {} and p.prefetched == {2}
    assert p.victims(1, state, NONE, NONE) == [2]
    assert p.forget(2) is True and p.forget(2) is False  # evicted unused: wasted, once


def test_a_prefetch_used_is_counted_once_and_becomes_an_ordinary_entry():
    p = SlotPolicy("lfu", 16.0, 2)
    p.enter_prefetch(1, layer=3, score=0.5)
    assert p.rank()[1] == 0.5  # a warm start's past use
    assert p.used([3], np.array([1])) == 1 and p.used([3], np.array([1])) == 0
    assert p.forget(1) is False  # requested: not wasted


def test_batched_victims_equal_one_at_a_time_picks():
    rng = np.random.default_rng(3)
    for policy in ("lfu", "lru"):
        for _ in range(50):
            n_slots = int(rng.integers(2, 12))
            p = SlotPolicy(policy, float(rng.choice([2.0, 16.0])), n_slots)
            state = rng.choice([FREE, READY, READY, READY, LOADING], size=n_slots).astype(np.int8)
            for _ in range(int(rng.integers(1, 8))):
                p.advance()
                used = rng.choice(n_slots, size=int(rng.integers(1, n_slots + 1)), replace=False)
                p.touch(used, rng.integers(1, 3, size=len(used)).astype(float))
            for s in rng.choice(n_slots, size=int(rng.integers(0, 3)), replace=False).tolist():
                p.enter_prefetch(s, layer=int(rng.integers(3)))
            pinned = rng.choice(n_slots, size=int(rng.integers(0, 3)), replace=False).astype(np.int64)
            spare = bool(rng.random() < 0.5)
            n = int(rng.integers(1, n_slots + 2))
            batched = p.victims(n, state.copy(), pinned, NONE, spare)
            picks, st = [], state.copy()
            for _ in range(n):
                got = p.victims(1, st, np.concatenate([pinned, np.array(picks, dtype=np.int64)]), NONE, spare)
                if not got:
                    break
                st[got[0]] = LOADING  # loaded before the next pick, as the cache does
                picks.append(got[0])
            assert batched == picks


def test_rebuild_carries_the_kept_slots_ranks_over():
    p = SlotPolicy("lfu", 16.0, 4)
    p.advance()
    p.touch(np.array([0, 1, 2, 3]), np.array([1.0, 4.0, 2.0, 3.0]))
    before = p.rank()
    p.enter_prefetch(0, layer=1)
    p.rebuild(6, [1, 3])
    np.testing.assert_allclose(p.rank()[:2], before[[1, 3]])
    assert p.rank()[2:].tolist() == [0.0] * 4 and p.prefetched == set() and p.protected == {}


def test_a_shrink_reads_back_the_retired_experts_that_rank_among_the_best():
    p = SlotPolicy("lfu", 16.0, 6)
    rank = np.array([5.0, 1.0, 3.0, 6.0, 2.0, 4.0])  # as rank() gave it before the shrink
    # shrink to 3: head slots 0-2 (ranks 5, 1, 3), tail 3-5 (6, 2, 4); the best three overall are 6, 5, 4
    back = p.read_back(rank, [0, 1, 2], [("a", 3), ("b", 4), ("c", 5)], 3)
    assert back == [("a", 6.0), ("c", 4.0)]
    assert p.read_back(rank, [0], [("a", 3)], 3) == [("a", 6.0)]  # room for all: every one comes back
