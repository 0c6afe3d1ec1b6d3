"""ExpertCache: a hard byte budget of expert slots shared by every MoE layer, filled from the expert store.

How it works
- The cache owns one *slot bank* per expert tensor (e.g. `gate_proj.weight`, `gate_proj.scales`, ...): an
  MLX array of shape [slots, *per-expert shape]. An expert of any layer can sit in any slot, so the budget is
  global across layers. The streaming layer maps routed expert ids to slot ids and runs `gather_qmm` over the
  bank directly: a cache hit costs no copy.
- Reads land in MLX-owned memory: each bank is allocated as raw bytes (its rows page-aligned) and written
  through a numpy view of its buffer on the reader's threads: where it can, the reader reads a record straight
  into the slot's rows with one preadv (no copy in Python); otherwise one memcpy per tensor from its buffer.
  On CUDA, where the banks are managed memory, the rows are filled by the driver's copy engine from the
  reader's page-locked buffer instead (managed.py: no page faults on either side).
- A layer whose experts are all resident cannot miss: `lookup` gives the streaming layer its bank rows (or a
  device-side expert->slot table) so it runs with no host synchronisation; `defer` keeps its lazy routing and
  output, `flush` counts them later from computed steps (unsynced.py). Evicting first evaluates every such
  output.
- Writing into MLX memory is safe because a slot is only handed to a read when no pending MLX graph can read
  it: every output computed from the banks is registered (`guard`) and evaluated before the next acquire
  refills anything; the slots of the current call are *busy* until then, the experts of the current call are
  *pinned*, and loading slots are never victims.
- Demand reads (`acquire`) block until their experts are resident; `prefetch` starts reads and returns at once
  (lower priority in the reader's queue), and a later `acquire` of an expert still in flight just waits for it.
- Eviction policy, per slot in numpy arrays (the victim is one argmin):
  "lru" (least recently used) or "lfu" (frequency with exponential ageing: a use adds 1 to a score that halves
  every `half_life` calls; the lowest score goes). Prefetched experts enter with score 0, so a misprediction is
  the first to go. Trace simulations on the teacher-forced workload (bench/results/notebook.md) chose these: LFU with a
  16-token half-life beats LRU at 12.5-50 % budgets with and without prefetch; entering prefetches at one use
  instead made it lose to LRU once prefetch was on.
- Memory: slots * expert_bytes, where slots = budget // expert_bytes (at least 1). Nothing else grows.
  `resize(budget)` is live: within the rows the banks were allocated with it retires or revives rows with no
  reallocation and no copy, and a shrink returns the retired rows' memory to the OS at once on Linux/CPU
  (madvise); only growing past the allocation reallocates (a transient copy of both banks, a pause).
- Usage statistics (decayed use counts per (layer, expert)) persist across restarts via `usage()` and
  `warm(order)`; see model.Engine.save_state / warm_start.

Everything here runs on the one thread that owns MLX, except the sinks, which run on reader threads and only
write the slot they were given.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import mlx.core as mx
import numpy as np

from ..store.format import RecordLayout
from . import managed
from .banks import page_aligned_bank, release_rows
from .unsynced import ResidentLayers

log = logging.getLogger(__name__)

_MLX_DTYPES = {
    "uint32": mx.uint32, "uint8": mx.uint8, "int8": mx.int8,
    "float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16,
}
POLICIES = ("lru", "lfu")
FREE, READY, LOADING, RETIRED = 0, 1, 2, 3  # RETIRED: a bank row beyond the current budget (see resize)
DEMAND, PREFETCH, WARM = 0, 1, 2  # reader priorities: lower is more urgent


class Reader(Protocol):
    """What the cache needs of moed.daemon.store.reader.ExpertReader."""

    def read(self, layer: int, expert: int, sink, *, priority: int = 0) -> Future: ...


@dataclass
class CacheStats:
    """Counters since start (or the last reset). A hit is a requested expert already resident; an in-flight hit
    was being read (by a prefetch) when requested; a miss had to be read on demand."""

    hits: int = 0
    inflight_hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_loaded: int = 0
    prefetches: int = 0  # prefetch reads issued
    prefetch_used: int = 0  # prefetched experts later requested
    prefetch_wasted: int = 0  # prefetched experts evicted before any request
    wait_seconds: float = 0.0  # time acquire spent waiting for reads
    acquires: int = 0  # layer calls served with a host synchronisation (routing read back at the layer)
    unsynced: int = 0  # layer calls served without one: every expert of the layer was resident (see lookup)
    budget_bytes: int = 0
    used_bytes: int = 0
    slots: int = 0

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.inflight_hits + self.misses
        return (self.hits + self.inflight_hits) / n if n else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "hit_rate": self.hit_rate}


class ExpertCache(ResidentLayers):
    """A budgeted cache of experts in slot banks; see the module docstring."""

    def __init__(self, layout: RecordLayout, reader: Reader, budget_bytes: int, *, policy: str = "lfu",
                 half_life: float = 256.0, driver: managed.Driver | None = None):
        """`driver`: upload through this CUDA driver (the copy path) instead of what managed.py finds here."""
        if policy not in POLICIES:
            raise ValueError(f"cache policy {policy!r}: expected one of {POLICIES}")
        self.layout, self.reader, self.policy = layout, reader, policy
        self.expert_bytes = sum(t.nbytes for t in layout.tensors)  # bank bytes per expert (no record padding)
        self._decay = 0.5 ** (1.0 / half_life)
        self._stats = CacheStats(budget_bytes=budget_bytes)
        self._lock = threading.Lock()  # stats() may be read from other threads
        self._tick = 0  # one per acquire call
        self._where: dict[tuple[int, int], int] = {}  # (layer, expert) -> slot
        self._futures: dict[int, Future] = {}  # slot -> read in flight
        self._prefetched: set[int] = set()  # slots filled by prefetch and not requested yet
        self._protected: dict[int, int] = {}  # unused prefetched slot -> the layer it was read for
        self._busy = np.zeros(0, dtype=np.int64)  # slots the pending graph reads
        self._usage: dict[int, np.ndarray] = {}  # layer -> use count per expert id, for warm restarts
        self._pending: list[mx.array] = []  # lazy outputs that read the banks (see guard)
        self._ready: dict[int, int] = {}  # layer -> resident (READY) experts
        self._luts: dict[int, int | mx.array] = {}  # layer -> first slot or expert->slot table (see lookup)
        self._tables: dict[int, np.ndarray] = {}  # layer -> [E] slot of each expert, while in _luts
        self._slices: dict[tuple[int, int], dict[str, mx.array]] = {}  # (first slot, n) -> bank rows as views
        self._deferred: list = []  # unsynced calls by step (unsynced._Step)
        self._last_layer = -1
        self._releasing: threading.Thread | None = None  # see _resize_within
        self.phases: dict[str, float] = {}  # seconds spent in each phase of the synced layer calls (see lap)
        self.epoch = 0  # changes whenever a lookup result may change (eviction, reallocation, unsynced toggled)
        self._unsynced = True
        self._upload, self._driver = ("copy", driver) if driver is not None else (managed.upload_path(),
                                                                                   managed.driver())
        self._pinned = False  # the reader's buffers are page-locked (copies from them are only queued)
        if self._upload == "copy":
            self._pin_reader_buffers()
        self._allocate(self._slots_for(budget_bytes), [])

    @property
    def upload(self) -> str:
        """How reads reach the banks: "copy" (the CUDA driver's copy engine) or "plain" (the host writes them)."""
        return self._upload

    @property
    def unsynced(self) -> bool:
        """Serve wholly resident layers without a host sync (False: always synchronise, to compare)."""
        return self._unsynced

    @unsynced.setter
    def unsynced(self, on: bool) -> None:
        self._unsynced = bool(on)
        self.epoch += 1

    def _pin_reader_buffers(self) -> None:
        region = getattr(self.reader, "buffer_region", None)
        if region is None:
            return
        addr, nbytes = region()
        try:
            self._driver.pin(addr, nbytes)
        except managed.CudaError as e:  # copies still work from pageable memory, staged by the driver
            log.warning("page-locking the reader's buffers failed (%s): uploads copy from pageable memory", e)
            return
        self._pinned = True
        self.reader.on_close(lambda: self._driver.unpin(addr))

    # -- sizing -----------------------------------------------------------------------------------------------
    def _slots_for(self, budget_bytes: int) -> int:
        if budget_bytes < self.expert_bytes:
            raise ValueError(f"cache budget {budget_bytes} bytes is below one expert ({self.expert_bytes} bytes)")
        return budget_bytes // self.expert_bytes

    @property
    def capacity(self) -> int:
        """Number of expert slots within the budget."""
        return self._capacity

    def _allocate(self, slots: int, keep: list[tuple[tuple[int, int], int]]) -> None:
        """(Re)build the banks with `slots` slots, copying the (key, old slot) pairs in `keep` over."""
        banks, host = {}, {}
        for t in self.layout.tensors:
            banks[t.name], host[t.name] = page_aligned_bank(slots, t.nbytes)
        state, key_of = np.full(slots, FREE, np.int8), [None] * slots
        score, last = np.zeros(slots), np.zeros(slots)
        where: dict[tuple[int, int], int] = {}
        for new, (key, old) in enumerate(keep):
            for name in host:
                host[name][new] = self._host[name][old]
            state[new], key_of[new], score[new], last[new] = READY, key, self._score[old], self._last[old]
            where[key] = new
        self._banks, self._host, self._where = banks, host, where
        # per tensor, in record order: (address of its bank's row 0, bytes per row, tensor); a sink needs these
        self._rows = [(host[t.name].ctypes.data, host[t.name].strides[0], t)
                      for t in sorted(self.layout.tensors, key=lambda t: t.offset)]
        self._state, self._key_of, self._score, self._last = state, key_of, score, last
        self._prefetched, self._protected, self._busy = set(), {}, np.zeros(0, dtype=np.int64)
        self._luts, self._tables, self._ready, self._slices = {}, {}, {}, {}
        self.epoch += 1
        for layer, _ in where:
            self._ready[layer] = self._ready.get(layer, 0) + 1
        # Typed views the compute reads: [slots, *per-expert shape]; they share the banks' buffers.
        self.views = {t.name: banks[t.name].view(_MLX_DTYPES[t.dtype]).reshape((slots,) + t.shape)
                      for t in self.layout.tensors}
        mx.eval(list(self.views.values()))
        if self._upload == "copy":  # the banks' pages start on the GPU, where the copies then land
            self._driver.to_device([(row0, width * slots) for row0, width, _ in self._rows])
        self._capacity = slots
        with self._lock:
            self._stats.slots, self._stats.used_bytes = slots, len(where) * self.expert_bytes

    def resize(self, budget_bytes: int) -> None:
        """Change the budget live; call on the MLX thread, between steps.

        Within the rows the banks were allocated with (the start budget, or the largest since), nothing is
        reallocated or copied: shrinking retires the bank rows beyond the new budget (their experts are evicted;
        those that rank among the best `slots` are read back into the rows that remain, in the background, in
        place of the worst there) and hands their memory back to the OS at once where it can (madvise, see
        release_rows); growing turns retired rows into free slots. Only growing past the allocation reallocates,
        which copies the kept experts and pauses generation for as long."""
        slots = self._slots_for(budget_bytes)
        self._settle_graphs()
        self.flush()
        if slots <= len(self._state):
            self._resize_within(slots)
        else:
            self._reallocate(slots)
        with self._lock:
            self._stats.budget_bytes, self._stats.slots = budget_bytes, slots
            self._stats.used_bytes = len(self._where) * self.expert_bytes

    def _resize_within(self, slots: int) -> None:
        self.wait_released()
        if slots >= self._capacity:  # grow: retired rows become free (their pages fault back in on first write)
            self._state[self._capacity : slots] = FREE
            self._capacity = slots
            return
        tail = range(slots, self._capacity)
        self._busy = np.zeros(0, dtype=np.int64)  # the graphs were settled: nothing pending reads a row
        for s in tail:
            if s in self._futures:
                self._settle(s)  # a read into a row about to retire: let it land (it is at most a few reads)
        rank = self._rank()
        head_ready = [s for s in range(slots) if self._state[s] == READY]
        moved = [(self._key_of[s], rank[s]) for s in tail if self._state[s] == READY]
        for s in tail:
            if self._state[s] == READY:
                self._evict(s)
            self._state[s] = RETIRED
        self._capacity = slots
        # the tail experts that rank among the best `slots` overall are read back into the head, at prefetch
        # priority, in place of the worst there (the prefetch victim rule): no copy, no wait
        ranks = sorted([float(rank[s]) for s in head_ready] + [r for _, r in moved], reverse=True)
        threshold = ranks[slots - 1] if len(ranks) > slots else -np.inf
        back: dict[int, list[tuple[int, float]]] = {}
        for (layer, expert), r in sorted(moved, key=lambda kr: -kr[1]):
            if r >= threshold:
                back.setdefault(layer, []).append((expert, r))
        for layer, items in back.items():
            self.prefetch(layer, [e for e, _ in items], score=float(np.mean([r for _, r in items])))
        # handing pages back takes ~50 ms per GB: off the step path, on a thread; a later grow or reallocation
        # waits for it first, so a revived row is never written while its pages are being dropped
        self._releasing = threading.Thread(target=release_rows, args=(self._host, slots, len(self._state)),
                                           name="moed-release", daemon=True)
        self._releasing.start()

    def wait_released(self) -> None:
        """Wait until the memory of rows retired by the last shrink has been handed back."""
        if self._releasing is not None:
            self._releasing.join()
            self._releasing = None

    def _reallocate(self, slots: int) -> None:
        self.wait_released()
        self._drain()
        rank = self._rank()
        ready = sorted(self._where.items(), key=lambda ks: rank[ks[1]], reverse=True)  # best first
        self._allocate(slots, ready)
        mx.clear_cache()  # hand the old banks' memory back instead of keeping it in MLX's buffer cache

    def guard(self, output: mx.array) -> None:
        """Register a lazy output computed from the banks: it is evaluated before any slot is refilled.

        The next layer's routing sync usually evaluates it anyway; this covers the outputs nothing downstream
        forces in time (e.g. the last layer's under teacher forcing, where the next token does not depend on it).
        """
        self._pending.append(output)

    def _settle_graphs(self) -> None:
        unsynced = [out for step in self._deferred for _, _, out in step.calls]
        if self._pending or unsynced:
            mx.eval(self._pending, unsynced)  # a no-op for outputs already evaluated
            self._pending.clear()

    def _reap(self) -> None:
        """Settle reads that have finished, so their slots become ready (and evictable). Slots of the current
        call are left to its own wait: a failed read there must be seen (and retried) by that call, not freed
        and reused behind its back."""
        busy = set(self._busy.tolist())
        for slot in [s for s, f in self._futures.items() if f.done() and s not in busy]:
            self._settle(slot)

    def _drain(self) -> None:
        """Wait for reads in flight (before the banks they write into are replaced)."""
        for slot in list(self._futures):
            self._settle(slot)

    # -- policy -----------------------------------------------------------------------------------------------
    def _rank(self) -> np.ndarray:
        """Per-slot keep-priority now: higher is more worth keeping."""
        if self.policy == "lru":
            return self._last.copy()
        return self._score * self._decay ** (self._tick - self._last)

    def _touch(self, slots: np.ndarray, uses: np.ndarray | float = 1.0) -> None:
        # distinct slots, used `uses` times each; i/len in [0, 1) breaks ties: slots listed first count as used first
        if not len(slots):
            return
        now = self._tick + np.arange(len(slots)) / len(slots)
        if self.policy == "lfu":
            self._score[slots] = self._score[slots] * self._decay ** (now - self._last[slots]) + uses
        self._last[slots] = now

    def _victims(self, n: int, pinned: np.ndarray, spare_prefetches: bool = True) -> list[int]:
        """Up to `n` slots for new reads, ranking once: free slots first, then the lowest-ranked evictable ones,
        evicted; the same slots as `n` one-at-a-time picks, each loaded before the next. Never a slot being read
        into, a pinned or busy one, nor (with `spare_prefetches`, as prefetches ask) an unused prefetch whose layer
        has not run yet. The caller loads every slot returned before asking again."""
        free = np.flatnonzero(self._state == FREE)[:n].tolist()
        if len(free) == n:
            return free
        rank = self._rank()
        rank[self._state != READY] = np.inf  # free slots are taken above; loading ones are never evicted
        rank[pinned] = np.inf
        rank[self._busy] = np.inf
        if spare_prefetches and self._protected:
            rank[list(self._protected)] = np.inf
        order = np.argsort(rank, kind="stable")[: n - len(free)]  # ties: lowest slot first, as argmin
        chosen = [int(s) for s in order if np.isfinite(rank[s])]
        for slot in chosen:
            self._evict(slot)
        return free + chosen

    def _victim(self, pinned: np.ndarray, wait: bool = False) -> int:
        """One slot as `_victims` gives it; with wait=True (demand reads) unused prefetches may go too, and if
        nothing is evictable the oldest unpinned read in flight is finished first. Raises RuntimeError if no
        slot can be had."""
        while True:
            got = self._victims(1, pinned, spare_prefetches=not wait)
            if got:
                return got[0]
            pinned_set = set(pinned.tolist())
            loading = [s for s in self._futures if s not in pinned_set]
            if not wait or not loading:
                raise RuntimeError("no evictable slot: every slot is pinned, busy or loading")
            self._settle(loading[0])  # a prefetch the current step does not need: let it land, then evict it

    def _evict(self, slot: int) -> None:
        # An unsynced layer call may still be pending on this slot (its lookup table has it): finish it first.
        self._settle_graphs()
        key = self._key_of[slot]
        del self._where[key]
        self._ready[key[0]] -= 1
        if self._luts.pop(key[0], None) is not None:
            self.epoch += 1  # a layer's rows or table, handed out by lookup, no longer hold
        self._tables.pop(key[0], None)
        self._key_of[slot], self._state[slot] = None, FREE
        with self._lock:
            self._stats.evictions += 1
            if slot in self._prefetched:
                self._stats.prefetch_wasted += 1
        self._forget_prefetch(slot)

    def _forget_prefetch(self, slot: int) -> None:
        self._prefetched.discard(slot)
        self._protected.pop(slot, None)

    # -- loads ------------------------------------------------------------------------------------------------
    def _load(self, key: tuple[int, int], slot: int, priority: int) -> None:
        self._key_of[slot], self._state[slot], self._where[key] = key, LOADING, slot
        # scored by the uses that follow: a prefetch that is never used is the first to go
        self._score[slot], self._last[slot] = 0.0, self._tick
        self._futures[slot] = self.reader.read(key[0], key[1], self._sink(slot), priority=priority)

    def _sink(self, slot: int):
        """The function a read of `slot` hands the record to (it writes only that slot's rows)."""
        # Made on the MLX thread once per read (~70 per token at a 25 % budget): row addresses come from _rows, as
        # numpy's .ctypes costs ~1 µs per access
        if self._upload == "copy":
            drv, pinned = self._driver, self._pinned
            pieces = [(row0 + slot * width, t.offset, t.nbytes) for row0, width, t in self._rows]

            def copy_into_slot(payload: np.ndarray) -> None:  # the reader's buffer -> rows, by the copy engine
                base = payload.ctypes.data
                drv.copy([(dst, base + offset, n) for dst, offset, n in pieces], pinned=pinned)

            return copy_into_slot

        host = self._host
        rows = [(t.offset, host[t.name][slot]) for _, _, t in self._rows]  # (offset in the record, slot's row)

        def copy_into_slot(payload: np.ndarray) -> None:
            for offset, row in rows:  # record -> bank, one memcpy per tensor
                row[...] = payload[offset : offset + row.nbytes]

        # where the reader can, it reads the record straight into the slot's rows instead (no staging copy)
        copy_into_slot.targets = rows  # type: ignore[attr-defined]
        return copy_into_slot

    def _settle(self, slot: int) -> BaseException | None:
        """Wait for the read into `slot`; on failure free the slot and return the error."""
        fut = self._futures.pop(slot)
        try:
            fut.result()
        except BaseException as e:  # the slot holds garbage: forget it
            self._where.pop(self._key_of[slot], None)
            self._key_of[slot], self._state[slot] = None, FREE
            self._forget_prefetch(slot)
            return e
        self._state[slot] = READY
        layer = self._key_of[slot][0]
        self._ready[layer] = self._ready.get(layer, 0) + 1
        with self._lock:
            self._stats.bytes_loaded += self.layout.record_bytes
            self._stats.used_bytes = len(self._where) * self.expert_bytes
        return None

    # -- the two entry points -----------------------------------------------------------------------------------
    def acquire(self, layer: int, experts: np.ndarray, before_wait=None) -> np.ndarray:
        """Make the given distinct experts of one layer resident and return their slot ids (same order).

        Waits for reads still needed; `before_wait()` runs once the demand reads are queued and the slots are
        claimed (the streaming layer starts its prefetches there, so they queue behind the demand reads). At most
        `capacity` experts may be asked for at once (callers split larger sets into waves). The returned slots
        stay busy until the next acquire. Raises the reader's StoreError if a read fails (its slot is freed).
        """
        if len(experts) > self.capacity:
            raise ValueError(f"asked for {len(experts)} experts at once, the cache has {self.capacity} slots")
        t = time.perf_counter()
        self._tick += 1
        self._settle_graphs()
        self._busy = np.zeros(0, dtype=np.int64)  # no pending graph reads the banks now
        self.flush()  # unsynced calls so far are computed now (their outputs were guarded): count them first
        self._reap()
        slots = np.array([self._where.get((layer, int(e)), -1) for e in experts], dtype=np.int64)
        hits = int(np.sum(slots >= 0))
        inflight = [int(s) for s in slots if s >= 0 and self._state[s] == LOADING and not self._futures[s].done()]
        missing = np.flatnonzero(slots < 0)
        victims = self._victims(len(missing), slots[slots >= 0], spare_prefetches=False) if len(missing) else []
        for i, slot in zip(missing, victims):
            slots[i] = slot
            self._load((layer, int(experts[i])), slot, DEMAND)
        for i in np.flatnonzero(slots < 0):  # nothing evictable left: finish a read in flight first (see _victim)
            slots[i] = self._victim(slots[slots >= 0], wait=True)
            self._load((layer, int(experts[i])), int(slots[i]), DEMAND)
        self._busy = slots.copy()  # from here on nothing may evict them
        t = self.lap("acquire: bookkeeping, demand reads queued", t)
        if before_wait is not None:
            before_wait()
        t = self.lap("acquire: prefetch issued", t)
        waited = self._wait_all(slots, layer, experts)
        t = self.lap("acquire: waiting for reads", t)
        self._record_use([layer], slots)
        self._count_usage(layer, experts)
        with self._lock:
            self._stats.hits += hits - len(inflight)
            self._stats.inflight_hits += len(inflight)
            self._stats.misses += len(experts) - hits
            self._stats.wait_seconds += waited
            self._stats.acquires += 1
        self.lap("acquire: use counted", t)
        return slots

    def lap(self, phase: str, t0: float) -> float:
        """Add the time since t0 to phase `phase` of the synced layer calls (`phases`, read by the benchmarks to
        split a step); returns now. MLX thread."""
        t = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + t - t0
        return t

    def _record_use(self, layers, slots: np.ndarray, uses: np.ndarray | float = 1.0) -> None:
        """Policy bookkeeping after calls of `layers` (synced or not): the distinct `slots` were used, `uses`
        times each."""
        self._touch(np.asarray(slots, dtype=np.int64), uses)
        if self._prefetched:
            for s in np.asarray(slots).tolist():
                if s in self._prefetched:
                    self._forget_prefetch(s)
                    with self._lock:
                        self._stats.prefetch_used += 1
        if self._protected:
            done = set(layers)
            for slot in [s for s, target in self._protected.items() if target in done]:
                del self._protected[slot]  # its layer ran without it: an ordinary (score-0) entry from now on

    def _count_usage(self, layer: int, experts: np.ndarray, amount: np.ndarray | float = 1.0) -> None:
        """Add `amount` to the use counts of `experts` (distinct ids) of `layer` (for warm restarts)."""
        experts = np.asarray(experts, dtype=np.int64)
        if not experts.size:
            return
        counts = self._usage.get(layer)
        if counts is None or len(counts) <= experts.max():
            grown = np.zeros(int(experts.max()) + 1)
            if counts is not None:
                grown[: len(counts)] = counts
            counts = self._usage[layer] = grown
        counts[experts] += amount

    def wait_loads(self) -> None:
        """Wait for every read in flight (e.g. a preload before a benchmark times anything). MLX thread."""
        self._drain()

    def _wait_all(self, slots: np.ndarray, layer: int, experts: np.ndarray) -> float:
        t0, error = time.perf_counter(), None
        for i, s in enumerate(slots):
            if int(s) in self._futures:
                err = self._settle(int(s))
                if err is not None and self._retry_once(int(s), layer, int(experts[i])):
                    continue
                error = error or err
        if error is not None:
            for s in slots:  # leave nothing of this call half-claimed
                if self._state[int(s)] == LOADING:
                    self._settle(int(s))
            raise error
        return time.perf_counter() - t0

    def _retry_once(self, slot: int, layer: int, expert: int) -> bool:
        """A failed read is retried once as a demand read (a transient error must not fail a request); a second
        failure raises."""
        if (layer, expert) in self._where or self._state[slot] != FREE:
            return False
        self._load((layer, expert), slot, DEMAND)
        again = self._settle(slot)
        if again is not None:
            raise again
        return True

    def prefetch(self, layer: int, experts, *, priority: int = PREFETCH, limit: int | None = None,
                 score: float = 0.0) -> int:
        """Start reads of experts not resident or in flight, without waiting; returns how many were started.

        Never evicts a slot the current step needs (busy), a slot being read, or an expert asked for in the same
        call; stops when no slot may be taken or `limit` reads were started. `score` is the LFU score the experts
        enter with (a warm start passes their past use)."""
        if not self._busy.size:  # outside a layer call (warm start): finish every graph first
            self._settle_graphs()
        self._reap()
        asked = list(dict.fromkeys(int(e) for e in experts))  # distinct, in order
        held = np.array([self._where[(layer, e)] for e in asked if (layer, e) in self._where], dtype=np.int64)
        todo = [e for e in asked if (layer, e) not in self._where]
        if limit is not None:
            todo = todo[: max(limit, 0)]
        chosen = self._victims(len(todo), held) if todo else []  # never evicts an expert asked for here
        for e, slot in zip(todo, chosen):
            self._load((layer, e), slot, priority)
            self._score[slot] = score
            self._prefetched.add(slot)
            self._protected[slot] = layer
        started = len(chosen)
        with self._lock:
            self._stats.prefetches += started
        return started

    # -- lookups and counters -----------------------------------------------------------------------------------
    def contains(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._where

    def resident(self) -> list[tuple[int, int]]:
        """Resident or loading (layer, expert) keys, lowest-ranked first."""
        rank = self._rank()
        return sorted(self._where, key=lambda k: rank[self._where[k]])

    def seed_usage(self, usage: dict[tuple[int, int], float]) -> None:
        """Start the usage counts from a previous run's (see warm.py)."""
        for (layer, expert), count in usage.items():
            self._count_usage(layer, np.array([expert]), count)

    def usage(self) -> dict[tuple[int, int], float]:
        """Use counts per (layer, expert) since start (for warm restarts)."""
        return {(layer, e): float(counts[e]) for layer, counts in self._usage.items()
                for e in np.flatnonzero(counts).tolist()}

    def stats(self) -> CacheStats:
        with self._lock:
            return replace(self._stats)  # a shallow copy: every field is a number (asdict deep-copies, slowly)

    def reset_stats(self) -> None:
        with self._lock:
            s = self._stats
            self._stats = CacheStats(budget_bytes=s.budget_bytes, used_bytes=s.used_bytes, slots=s.slots)
