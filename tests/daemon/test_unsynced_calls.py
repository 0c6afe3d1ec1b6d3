"""The no-sync path through its interfaces: DeferredCalls (defer, flush, gathering, bookkeeping off) with a
recording counter, and ExpertCache's lookup / defer / flush with an in-memory reader (no model)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from moed.daemon.engine.unsynced import GATHER_STEPS, DeferredCalls

from test_cache import make


class Counted:
    """The count callback: every (layer, routed experts) call it was handed, in order."""

    def __init__(self):
        self.calls: list[tuple[int, list[int]]] = []
        self.flushes = 0

    def __call__(self, layers, sizes, flat):
        self.flushes += 1
        cuts = np.cumsum(sizes)[:-1]
        self.calls += [(int(layer), part.tolist()) for layer, part in zip(layers, np.split(flat, cuts))]


def run_steps(calls: DeferredCalls, steps: int, layers: int = 3, start: int = 0):
    """Defer `steps` steps of `layers` calls; call (step s, layer l) routes to [s, l]. Returns what was deferred."""
    made = []
    for s in range(start, start + steps):
        for layer in range(layers):
            indices = mx.array([[s, layer]], dtype=mx.uint32)
            out = calls.defer(layer, indices, indices.astype(mx.float32) + 1)
            mx.eval(out)  # computed, as a step would be
            made.append((layer, [s, layer]))
    return made


def test_a_forced_flush_counts_every_call_in_order_once():
    counted = Counted()
    calls = DeferredCalls(counted)
    made = run_steps(calls, 3)
    assert len(calls) == 3 and len(calls.outputs()) == 9
    calls.flush()
    assert counted.calls == made and counted.flushes == 1 and len(calls) == 0 and calls.outputs() == []
    calls.flush()
    assert counted.flushes == 1  # nothing left: the callback is not called


def test_an_unforced_flush_counts_only_gathered_blocks_and_keeps_the_newest_steps():
    counted = Counted()
    calls = DeferredCalls(counted)
    made = run_steps(calls, GATHER_STEPS + 2)  # step GATHER_STEPS gathered the ones before it
    calls.flush(keep=1, force=False)
    assert counted.calls == made[: GATHER_STEPS * 3]
    assert len(calls) == 2  # the step after the block (loose) and the kept one
    calls.flush()
    assert counted.calls == made


def test_deferred_outputs_keep_their_values_when_a_gather_is_attached():
    calls = DeferredCalls(Counted())
    run_steps(calls, GATHER_STEPS)
    x = mx.array([[1, 2]], dtype=mx.uint32)
    out = calls.defer(0, x, x.astype(mx.float32) * 3)  # first call of a new step: carries the gather
    assert out.tolist() == [[3.0, 6.0]]


def test_the_number_of_steps_held_is_bounded_without_any_flush():
    counted = Counted()
    calls = DeferredCalls(counted)
    made = run_steps(calls, 4 * GATHER_STEPS)
    assert len(calls) <= 3 * GATHER_STEPS and counted.calls == made[: len(counted.calls)] and counted.calls
    calls.flush()
    assert counted.calls == made


def test_bookkeeping_off_records_nothing():
    counted = Counted()
    calls = DeferredCalls(counted, bookkeeping=False)
    run_steps(calls, 2)
    calls.flush()
    assert len(calls) == 0 and counted.calls == []


# -- through ExpertCache ------------------------------------------------------------------------------------------
def test_lookup_answers_only_for_a_wholly_resident_layer_as_a_run_or_a_table():
    cache, _ = make(8, "lfu")
    assert cache.lookup(0, 4) is None
    cache.acquire(0, np.arange(3))
    assert cache.lookup(0, 4) is None  # one expert missing: the call must synchronise
    cache.acquire(0, np.array([3]))
    assert cache.lookup(0, 4) == 0  # slots 0-3 hold experts 0-3 in order: the rows themselves
    cache.acquire(1, np.array([3, 2, 1, 0]))
    table = cache.lookup(1, 4)
    assert isinstance(table, mx.array) and table.tolist() == [7, 6, 5, 4]
    cache.unsynced = False
    assert cache.lookup(0, 4) is None


def test_deferred_calls_are_counted_as_hits_with_usage_and_an_eviction_changes_the_epoch():
    cache, reader = make(8, "lfu")
    cache.acquire(0, np.arange(4))
    cache.acquire(1, np.array([3, 2, 1, 0]))
    cache.reset_stats()
    usage0, reads0 = cache.usage(), len(reader.reads)
    for _ in range(2):
        for layer in (0, 1):
            assert cache.lookup(layer, 4) is not None
            idx = mx.array([[0, 2]], dtype=mx.uint32)
            cache.defer(layer, idx, idx.astype(mx.float32))
    assert cache.deferred_steps == 2
    cache.flush()
    st = cache.stats()
    assert st.unsynced == 4 and st.hits == 8 and st.acquires == 0 and st.misses == 0
    assert len(reader.reads) == reads0 and cache.deferred_steps == 0
    usage = cache.usage()
    for layer in (0, 1):
        assert usage[(layer, 0)] == usage0[(layer, 0)] + 2 and usage[(layer, 1)] == usage0[(layer, 1)]
    epoch = cache.epoch
    cache.acquire(2, np.array([0]))  # a miss evicts the lowest-ranked: expert 1 or 3 of layer 0 (used least, first)
    assert cache.epoch != epoch and cache.lookup(0, 4) is None and cache.lookup(1, 4) is not None
    assert all(cache.contains(layer, e) for layer in (0, 1) for e in (0, 2))  # routed by the deferred calls


@pytest.mark.parametrize("on", [False, True])
def test_copied_rows_are_the_same_numbers_and_change_the_epoch(on):
    cache, _ = make(4, "lru")
    cache.acquire(0, np.arange(4))
    epoch = cache.epoch
    cache.copied_rows = on
    assert cache.epoch == epoch + 1
    rows = cache.rows(0, 4)
    for name, v in cache.views.items():
        assert mx.array_equal(rows[name], v[0:4]).item()
