"""ExpertCache invariants with an in-memory reader: budget, pinning, LRU, resize, failed reads, slot contents."""

from __future__ import annotations

from concurrent.futures import Future

import mlx.core as mx
import numpy as np
import pytest

from moed.daemon.engine.cache import ExpertCache
from moed.daemon.store.format import RecordLayout, StoreError

LAYOUT = RecordLayout.build([("w.weight", "uint32", (4, 8)), ("w.scales", "bfloat16", (4, 2))])


def payload(layer: int, expert: int) -> np.ndarray:
    rng = np.random.default_rng(layer * 1000 + expert)
    return rng.integers(0, 255, LAYOUT.payload_bytes, dtype=np.uint8)


class FakeReader:
    """Serves deterministic payloads synchronously; can be told to fail an expert."""

    def __init__(self):
        self.reads: list[tuple[int, int]] = []
        self.fail: set[tuple[int, int]] = set()

    def read(self, layer, expert, sink, *, priority=0):
        self.reads.append((layer, expert))
        fut: Future = Future()
        if (layer, expert) in self.fail:
            fut.set_exception(StoreError(f"layer {layer} expert {expert}: checksum mismatch"))
        else:
            sink(payload(layer, expert))
            fut.set_result(None)
        return fut


def slot_bytes(cache: ExpertCache, slot: int) -> dict[str, bytes]:
    # bank bytes through MLX (bfloat16 has no numpy type: read it back as uint16)
    out = {}
    for name, v in cache.views.items():
        row = v[slot].view(mx.uint16) if v.dtype == mx.bfloat16 else v[slot]
        out[name] = np.array(row).tobytes()
    return out


def expected_bytes(layer: int, expert: int) -> dict[str, bytes]:
    p = payload(layer, expert)
    return {t.name: p[t.offset : t.offset + t.nbytes].tobytes() for t in LAYOUT.tensors}


def make(slots: int, policy: str = "lru") -> tuple[ExpertCache, FakeReader]:
    reader = FakeReader()
    return ExpertCache(LAYOUT, reader, slots * sum(t.nbytes for t in LAYOUT.tensors), policy=policy), reader


def test_slots_hold_exactly_the_record_bytes():
    cache, _ = make(4)
    slots = cache.acquire(1, np.array([3, 0, 2]))
    for e, s in zip([3, 0, 2], slots):
        assert slot_bytes(cache, int(s)) == expected_bytes(1, e)
    assert cache.views["w.scales"].dtype == mx.bfloat16 and cache.views["w.weight"].shape == (4, 4, 8)


def test_budget_is_never_exceeded_and_lru_evicts_oldest():
    cache, reader = make(3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        layer = int(rng.integers(0, 4))
        experts = np.unique(rng.integers(0, 8, size=int(rng.integers(1, 4))))
        slots = cache.acquire(layer, experts)
        assert len(set(slots.tolist())) == len(experts)  # distinct slots: nothing the step needs was evicted
        for e, s in zip(experts, slots):
            assert slot_bytes(cache, int(s)) == expected_bytes(layer, int(e))
        st = cache.stats()
        assert st.used_bytes <= st.budget_bytes and len(cache.resident()) <= 3
    cache.acquire(9, np.array([0, 1, 2]))
    cache.acquire(9, np.array([0]))  # touch 0: now 1 is the oldest
    cache.acquire(9, np.array([5]))
    assert not cache.contains(9, 1) and cache.contains(9, 0) and cache.contains(9, 2)


def test_hits_and_misses_are_counted():
    cache, reader = make(4)
    cache.acquire(0, np.array([1, 2]))
    cache.acquire(0, np.array([1, 2, 3]))
    st = cache.stats()
    assert (st.hits, st.misses) == (2, 3) and len(reader.reads) == 3
    assert st.hit_rate == pytest.approx(0.4)


def test_asking_for_more_than_capacity_is_refused():
    cache, _ = make(2)
    with pytest.raises(ValueError, match="2 slots"):
        cache.acquire(0, np.array([0, 1, 2]))


def test_failed_read_frees_its_slot_and_keeps_serving():
    cache, reader = make(2)
    reader.fail.add((0, 1))
    with pytest.raises(StoreError, match="expert 1"):
        cache.acquire(0, np.array([0, 1]))
    assert not cache.contains(0, 1)
    reader.fail.clear()
    slots = cache.acquire(0, np.array([1, 4]))
    assert slot_bytes(cache, int(slots[0])) == expected_bytes(0, 1)


def test_resize_shrinks_keeping_most_recent_and_grows():
    cache, reader = make(4)
    views = cache.views
    for e in range(4):
        cache.acquire(0, np.array([e]))
    cache.resize(2 * cache.expert_bytes)
    assert cache.capacity == 2 and sorted(cache.resident()) == [(0, 2), (0, 3)]
    assert cache.views is views  # live: no reallocation
    # (0, 2) and (0, 3) sat in rows 2 and 3, now retired: they were read back into rows 0 and 1
    assert reader.reads[4:] == [(0, 3), (0, 2)]
    assert cache.stats().used_bytes == 2 * cache.expert_bytes and cache.stats().slots == 2
    s = cache.acquire(0, np.array([3]))  # resident, with the right bytes
    assert int(s[0]) < 2 and slot_bytes(cache, int(s[0])) == expected_bytes(0, 3) and len(reader.reads) == 6
    cache.resize(4 * cache.expert_bytes)  # back up to the allocation: retired rows are free again
    assert cache.views is views and cache.capacity == 4
    got = cache.acquire(0, np.array([0, 1]))
    assert sorted(got.tolist()) == [2, 3] and all(slot_bytes(cache, int(x)) == expected_bytes(0, e)
                                                  for x, e in zip(got, (0, 1)))
    cache.resize(6 * cache.expert_bytes)  # past the allocation: reallocated, experts kept
    assert cache.views is not views and cache.capacity == 6 and len(cache.resident()) == 4
    cache.acquire(0, np.array([4, 5]))
    assert len(cache.resident()) == 6
    assert all(slot_bytes(cache, cache.slot_of(*k)) == expected_bytes(*k) for k in cache.resident())


def test_shrinking_never_reads_back_what_ranks_below_the_kept_set():
    cache, reader = make(4)
    for e in (2, 3, 0, 0, 1, 1):  # rows 0..3 hold 2, 3, 0, 1; 0 and 1 are the most recent
        cache.acquire(0, np.array([e]))
    cache.resize(2 * cache.expert_bytes)
    assert sorted(cache.resident()) == [(0, 0), (0, 1)] and reader.reads[4:] == [(0, 1), (0, 0)]
    cache.resize(3 * cache.expert_bytes)
    cache.acquire(0, np.array([5]))
    cache.resize(1 * cache.expert_bytes)  # only the best of the three stays
    assert cache.resident() == [(0, 5)] and cache.capacity == 1


def test_shrinking_returns_memory_to_the_os_without_reallocating():
    import sys

    if not sys.platform.startswith("linux") or mx.default_device() != mx.cpu:
        pytest.skip("memory is handed back by madvise on Linux with MLX's CPU backend only")
    big = RecordLayout.build([("w.weight", "uint32", (256, 1024))])  # 1 MiB per expert
    cache = ExpertCache(big, FakeReaderFor(big), 64 * big.payload_bytes, policy="lru")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    for e in range(64):
        cache.acquire(0, np.array([e]))
    full = rss()
    cache.resize(8 * big.payload_bytes)
    cache.wait_released()  # pages are handed back on a thread, off the step path
    assert full - rss() > 40 * 2**20  # 56 MiB of rows retired
    views = cache.views
    cache.resize(64 * big.payload_bytes)
    for e in range(64, 120):
        cache.acquire(0, np.array([e]))
    assert cache.views is views and len(cache.resident()) == 64
    row = np.array(cache.views["w.weight"][cache.slot_of(0, 100)]).view(np.uint8).reshape(-1)
    assert np.array_equal(row, FakeReaderFor.payload(big, 0, 100))


class FakeReaderFor(FakeReader):
    """FakeReader for another layout."""

    def __init__(self, layout: RecordLayout):
        super().__init__()
        self.layout = layout

    @staticmethod
    def payload(layout: RecordLayout, layer: int, expert: int) -> np.ndarray:
        return np.full(layout.payload_bytes, (layer * 31 + expert) % 251, dtype=np.uint8)

    def read(self, layer, expert, sink, *, priority=0):
        self.reads.append((layer, expert))
        fut: Future = Future()
        sink(self.payload(self.layout, layer, expert))
        fut.set_result(None)
        return fut


def test_budget_below_one_expert_is_an_error():
    with pytest.raises(ValueError, match="below one expert"):
        ExpertCache(LAYOUT, FakeReader(), 10)


class SlowReader(FakeReader):
    """Completes reads only when told to, so tests can see reads in flight."""

    def __init__(self):
        super().__init__()
        self.pending: list[tuple[Future, object, int, int]] = []

    def read(self, layer, expert, sink, *, priority=0):
        self.reads.append((layer, expert))
        fut: Future = Future()
        self.pending.append((fut, sink, layer, expert))
        return fut

    def finish_all(self):
        for fut, sink, layer, expert in self.pending:
            if not fut.done():
                sink(payload(layer, expert))
                fut.set_result(None)
        self.pending.clear()


def test_prefetch_never_evicts_the_current_step_and_is_counted():
    cache, reader = make(4)
    slots = cache.acquire(0, np.array([0, 1]))  # busy until the next acquire
    assert cache.prefetch(1, [0, 1, 2, 3]) == 2  # only the two free slots may be taken
    assert all(cache.contains(0, e) for e in (0, 1))
    cache.acquire(1, np.array([0]))  # a prefetched expert is used ...
    st = cache.stats()
    assert (st.prefetches, st.prefetch_used, st.hits, st.misses) == (2, 1, 1, 2)
    cache.acquire(2, np.array([5, 6, 7]))  # ... the other one is evicted unused
    assert cache.stats().prefetch_wasted == 1
    assert len(set(slots.tolist())) == 2


def test_acquire_waits_for_a_prefetch_in_flight_and_counts_it():
    reader = SlowReader()
    cache = ExpertCache(LAYOUT, reader, 4 * sum(t.nbytes for t in LAYOUT.tensors))
    cache.prefetch(3, [7])
    assert cache.contains(3, 7) and len(reader.reads) == 1
    import threading

    threading.Timer(0.05, reader.finish_all).start()
    slot = cache.acquire(3, np.array([7]))
    assert slot_bytes(cache, int(slot[0])) == expected_bytes(3, 7) and len(reader.reads) == 1
    assert cache.stats().inflight_hits == 1


def test_demand_reads_wait_for_prefetches_when_every_slot_is_loading():
    reader = SlowReader()
    cache = ExpertCache(LAYOUT, reader, 2 * sum(t.nbytes for t in LAYOUT.tensors))
    cache.prefetch(0, [0, 1])  # both slots loading
    import threading

    threading.Timer(0.05, reader.finish_all).start()
    timer = threading.Timer(0.2, reader.finish_all)
    timer.start()
    slots = cache.acquire(1, np.array([4]))
    timer.join()
    assert slot_bytes(cache, int(slots[0])) == expected_bytes(1, 4)


def test_lfu_keeps_a_hot_expert_through_a_scan_where_lru_loses_it():
    for policy, survives in (("lfu", True), ("lru", False)):
        cache, _ = make(3, policy)
        for _ in range(5):
            cache.acquire(0, np.array([0]))  # expert (0, 0) is hot
        for e in range(1, 6):
            cache.acquire(1, np.array([e]))  # a scan of one-off experts
        assert cache.contains(0, 0) is survives, policy


def test_usage_counts_every_request():
    cache, _ = make(2)
    cache.acquire(0, np.array([1, 2]))
    cache.acquire(0, np.array([1]))
    assert cache.usage() == {(0, 1): 2.0, (0, 2): 1.0}


@pytest.mark.parametrize("demand", [False, True])
@pytest.mark.parametrize("policy", ["lfu", "lru"])
def test_batched_victims_are_the_ones_picked_one_by_one(policy, demand):
    """SlotPool.victims ranks once for several new reads; it must choose exactly what successive victim calls (each slot
    loaded before the next call) would, including when the free slots run out partway and when it runs dry, for
    prefetches (unused prefetches spared) and demand reads (they may go)."""
    rng = np.random.default_rng(7)
    for trial in range(20):
        (a, _), (b, _) = make(12, policy), make(12, policy)
        calls = [(int(rng.integers(3)), rng.choice(10, size=int(rng.integers(1, 5)), replace=False),
                  rng.random() < 0.3) for _ in range(int(rng.integers(1, 12)))]
        for cache in (a, b):  # the same history: identical ranks, states, free and protected slots
            for layer, experts, prefetch in calls:
                if prefetch:  # unused prefetches stay protected from other prefetches
                    cache.prefetch(layer, experts)
                else:
                    cache.acquire(layer, np.sort(experts))
        pinned = a._pool.busy.copy()
        n = int(rng.integers(1, 14))
        batched = a._pool.victims(n, pinned, spare_prefetches=not demand)
        one_by_one = []
        # demand picks beyond what is evictable would finish a read in flight instead: compare the ready ones
        for i in range(len(batched) if demand else n):
            try:
                slot = b._pool.victim(np.concatenate([pinned, np.array(one_by_one, dtype=np.int64)]), wait=demand)
            except RuntimeError:
                break
            b._pool.load((9, 100 + i), slot, 1)  # a key no call uses
            one_by_one.append(slot)
        assert batched == one_by_one, (trial, calls, n)
        if len(batched) < n:  # it ran dry: nothing evictable is left
            rest = np.concatenate([pinned, np.array(batched, dtype=np.int64)])
            for i, slot in enumerate(batched):
                a._pool.load((9, 100 + i), slot, 1)
            assert a._pool.victims(1, rest, spare_prefetches=not demand) == []


def test_a_demand_read_may_evict_an_unused_prefetch():
    """Prefetches are spared only from other prefetches: a demand miss takes the lowest-ranked slot, and an unused
    prefetch (score 0) is that one."""
    cache, _ = make(3, "lfu")
    cache.acquire(0, np.array([0, 1]))
    assert cache.prefetch(1, [5]) == 1
    cache.acquire(0, np.array([2]))
    assert not cache.contains(1, 5) and cache.contains(0, 0) and cache.contains(0, 1) and cache.contains(0, 2)


def test_the_probe_sees_the_phases_of_acquire_and_is_a_no_op_by_default():
    from moed.daemon.engine.probe import Phase, PhaseTimer, Probe

    cache, _ = make(4)
    assert type(cache.probe) is Probe and cache.probe.lap(Phase.WAIT, cache.probe.now()) == 0.0
    timer = PhaseTimer()
    cache = ExpertCache(LAYOUT, FakeReader(), 4 * sum(t.nbytes for t in LAYOUT.tensors), probe=timer)
    cache.acquire(0, np.array([1, 2]))
    cache.acquire(0, np.array([2, 3]))
    assert set(timer.seconds) == {Phase.QUEUED, Phase.PREFETCH, Phase.WAIT, Phase.COUNTED}
    assert timer.snapshot() == {p.value: s for p, s in timer.seconds.items()}
    assert all(s >= 0 for s in timer.seconds.values())


def test_an_unknown_upload_path_is_refused():
    with pytest.raises(ValueError, match="fastest"):
        ExpertCache(LAYOUT, FakeReader(), 4 * sum(t.nbytes for t in LAYOUT.tensors), upload="fastest")
    cache = ExpertCache(LAYOUT, FakeReader(), 4 * sum(t.nbytes for t in LAYOUT.tensors), upload="copy")
    assert cache.upload == "plain"  # no CUDA driver here: the host writes the rows, whatever was asked
