"""ExpertCache: a hard byte budget of expert slots shared by every MoE layer, filled from the expert store.

How it works
- The cache owns one *slot bank* per expert tensor (e.g. `gate_proj.weight`, `gate_proj.scales`, ...): an
  MLX array of shape [slots, *per-expert shape] (banks.py). An expert of any layer can sit in any slot, so the
  budget is global across layers. The streaming layer maps routed expert ids to slot ids and runs `gather_qmm`
  over the bank directly: a cache hit costs no copy.
- Reads land in MLX-owned memory through a sink per read (sink.py): the reader reads a record straight into the
  slot's rows where it can, else the sink copies each tensor; on CUDA the driver's copy engine fills the rows
  from the reader's page-locked buffer instead (the "copy" upload path, managed.py).
- A layer whose experts are all resident cannot miss: `lookup` gives the streaming layer its bank rows (or a
  device-side expert->slot table) so it runs with no host synchronisation; `defer` keeps its lazy routing and
  output, `flush` counts them later from computed steps (unsynced.py, a collaborator this cache owns).
- Writing into MLX memory is safe because a slot is only handed to a read when no pending MLX graph can read
  it: every output computed from the banks is registered (`guard`) or deferred, and all of them are evaluated
  before any slot is refilled; the slots of the current call are *busy* until the next acquire, the experts of
  the current call are *pinned*, and loading slots are never victims.
- Demand reads (`acquire`) block until their experts are resident; `prefetch` starts reads and returns at once
  (lower priority in the reader's queue), and a later `acquire` of an expert still in flight just waits for it.
- Eviction: LRU or LFU with ageing, prefetches entering at score 0 (slot_policy.py, where the rule and the trace
  simulations behind it are described; bench/results/notebook.md).
- Memory: slots * expert_bytes, where slots = budget // expert_bytes (at least 1). Nothing else grows.
  `resize(budget)` is live: within the rows the banks were allocated with it retires or revives rows with no
  reallocation and no copy, and a shrink returns the retired rows' memory to the OS (madvise, Linux/CPU); only
  growing past the allocation reallocates (a transient copy of both banks, a pause).
- Usage counts per (layer, expert) persist across restarts via `usage()` and `seed_usage` (warm.py).
- Instrumentation: a `probe` (probe.py, a no-op by default) receives the phases of each synced call.

Everything here runs on the one thread that owns MLX, except the sinks, which run on reader threads and only
write the slot they were given, and `stats()`, which any thread may read.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Protocol

import mlx.core as mx
import numpy as np

from ..store.format import RecordLayout
from . import managed
from .pool import SlotPool
from .probe import Phase, Probe
from .quarantine import Quarantine
from .sink import DEMAND, PREFETCH, WARM, SlotSink, Uploads
from .slot_policy import FREE, LOADING, POLICIES, READY, RETIRED, SlotPolicy
from .stats import CacheStats, Counters
from .unsynced import DeferredCalls, routed_per_layer
from .warm import UsageCounts

SKIP = -2  # acquire's mark for a quarantined expert while it sorts out the rest (answered as -1)

__all__ = ["ExpertCache", "CacheStats", "Reader", "POLICIES", "FREE", "READY", "LOADING", "RETIRED",
           "DEMAND", "PREFETCH", "WARM"]


class Reader(Protocol):
    """What the cache needs of moed.daemon.store.reader.ExpertReader."""

    def read(self, layer: int, expert: int, sink: SlotSink, *, priority: int = 0) -> Future: ...


class ExpertCache:
    """A budgeted cache of experts in slot banks; see the module docstring."""

    def __init__(self, layout: RecordLayout, reader: Reader, budget_bytes: int, *, policy: str = "lfu",
                 half_life: float = 256.0, upload: str = "auto", driver: managed.Driver | None = None,
                 unsynced: bool = True, bookkeeping: bool = True, probe: Probe | None = None):
        """`budget_bytes`: at least one expert. `policy` ("lfu", "lru"), `half_life` (LFU ageing, in acquire
        calls): slot_policy.py. `upload` ("auto", "copy", "plain"; off CUDA always "plain", see managed.py), or
        `driver`: upload through this CUDA driver (the copy path). `unsynced`, `bookkeeping`: the switches of
        the same names below. `probe`: receives the phases of the synced calls (probe.py; a no-op by default).
        Raises ValueError for an unknown policy or upload path, or a budget below one expert."""
        self.layout, self.reader = layout, reader
        self.expert_bytes = sum(t.nbytes for t in layout.tensors)  # bank bytes per expert (no record padding)
        self.probe = probe if probe is not None else Probe()
        self.epoch = 0  # changes whenever a lookup result may change (eviction, reallocation, switches)
        self._unsynced = bool(unsynced)
        self._counters = Counters(budget_bytes)
        self._pending: list[mx.array] = []  # lazy outputs that read the banks (see guard)
        self._usage = UsageCounts()
        self._calls = DeferredCalls(self._count_unsynced, bookkeeping)
        # None: a failed read raises out of acquire; set (quarantine.py): the expert is quarantined, slot -1
        self.quarantine: Quarantine | None = None
        slot_policy = SlotPolicy(policy, half_life, 0)  # checks the policy before anything is pinned
        path = "copy" if driver is not None else managed.upload_path(upload)
        uploads = Uploads(path, driver if driver is not None else managed.driver())
        uploads.pin_reader_buffers(reader)
        self._pool = SlotPool(layout, reader, uploads, slot_policy, self._counters,
                              settle_graphs=self._settle_graphs, invalidate=self._invalidate)
        self._pool.allocate(self._slots_for(budget_bytes), [])

    def _invalidate(self) -> None:
        self.epoch += 1

    # -- switches and shape -----------------------------------------------------------------------------------
    @property
    def policy(self) -> str:
        return self._pool.policy.policy

    @property
    def upload(self) -> str:
        """How reads reach the banks: "copy" (the CUDA driver's copy engine) or "plain" (the host writes them)."""
        return self._pool.uploads.path

    @property
    def unsynced(self) -> bool:
        """Serve wholly resident layers without a host sync (False: always synchronise, to compare)."""
        return self._unsynced

    @unsynced.setter
    def unsynced(self, on: bool) -> None:
        self._unsynced = bool(on)
        self.epoch += 1

    @property
    def bookkeeping(self) -> bool:
        """Count the unsynced calls (False: `defer` records nothing; a benchmark switch for a budget that holds
        every expert, see unsynced.py)."""
        return self._calls.bookkeeping

    @bookkeeping.setter
    def bookkeeping(self, on: bool) -> None:
        self._calls.bookkeeping = bool(on)

    @property
    def copied_rows(self) -> bool:
        """`rows` hands out device-computed copies instead of bank views (a benchmark switch, see banks.py)."""
        return self._pool.banks.copied_rows

    @copied_rows.setter
    def copied_rows(self, on: bool) -> None:
        self._pool.banks.copied_rows = bool(on)
        self.epoch += 1  # the layers look their rows up again

    @property
    def capacity(self) -> int:
        """Number of expert slots within the budget."""
        return self._pool.capacity

    @property
    def views(self) -> dict[str, mx.array]:
        """Typed views of the banks, [slots, *per-expert shape] by tensor name, that the compute reads."""
        return self._pool.banks.views

    def _slots_for(self, budget_bytes: int) -> int:
        if budget_bytes < self.expert_bytes:
            raise ValueError(f"cache budget {budget_bytes} bytes is below one expert ({self.expert_bytes} bytes)")
        return budget_bytes // self.expert_bytes

    def resize(self, budget_bytes: int) -> None:
        """Change the budget live; call on the MLX thread, between steps.

        Within the rows the banks were allocated with, nothing is reallocated or copied: a shrink retires the rows
        beyond the new budget (SlotPool.shrink; the evicted experts that rank among the best are read back at
        prefetch priority, no wait) and hands their memory back; a grow revives retired rows. Only growing past
        the allocation reallocates, which copies the kept experts and pauses generation for as long."""
        slots, pool = self._slots_for(budget_bytes), self._pool
        self._settle_graphs()
        self.flush()
        if slots > len(pool.table):
            pool.reallocate(slots)
            mx.clear_cache()  # hand the old banks' memory back instead of keeping it in MLX's buffer cache
        elif slots >= pool.capacity:
            pool.grow_within(slots)
        else:
            back: dict[int, list[tuple[int, float]]] = {}
            for (layer, expert), r in pool.shrink(slots):
                back.setdefault(layer, []).append((expert, r))
            for layer, items in back.items():
                self.prefetch(layer, [e for e, _ in items], score=float(np.mean([r for _, r in items])))
            pool.release_retired()
        self._counters.set(budget_bytes=budget_bytes, slots=slots,
                           used_bytes=len(pool.table.where) * self.expert_bytes)

    def wait_released(self) -> None:
        """Wait until the memory of rows retired by the last shrink has been handed back."""
        self._pool.banks.wait_released()

    # -- pending graphs ---------------------------------------------------------------------------------------
    def guard(self, output: mx.array) -> None:
        """Register a lazy output computed from the banks: it is evaluated before any slot is refilled.

        The next layer's routing sync usually evaluates it anyway; this covers the outputs nothing downstream
        forces in time (e.g. the last layer's under teacher forcing, where the next token does not depend on it).
        """
        self._pending.append(output)

    def _settle_graphs(self) -> None:
        unsynced = self._calls.outputs()
        if self._pending or unsynced:
            mx.eval(self._pending, unsynced)  # a no-op for outputs already evaluated
            self._pending.clear()

    def wait_loads(self) -> None:
        """Wait for every read in flight (e.g. a preload before a benchmark times anything). MLX thread."""
        self._pool.drain()

    # -- the synced path --------------------------------------------------------------------------------------
    def acquire(self, layer: int, experts: np.ndarray, before_wait=None,
                uses: np.ndarray | None = None) -> np.ndarray:
        """Make the given distinct experts of one layer resident and return their slot ids (same order).

        Waits for reads still needed; `before_wait()` runs once the demand reads are queued and the slots are
        claimed (the streaming layer starts its prefetches there, so they queue behind the demand reads). At most
        `capacity` experts may be asked for at once (callers split larger sets into waves). The returned slots
        stay busy until the next acquire. `uses`: the uses to credit per expert (default 1 each; a verification
        pass credits its drafts' experts later, see draft_rows.py). Raises the reader's StoreError if a read
        fails (its slot is freed), unless the cache has a `quarantine`: then a failed or quarantined expert's
        slot is -1 (quarantine.py).
        """
        if len(experts) > self.capacity:
            raise ValueError(f"asked for {len(experts)} experts at once, the cache has {self.capacity} slots")
        pool, probe = self._pool, self.probe
        t = probe.now()
        pool.policy.advance()
        self._settle_graphs()
        pool.busy = np.zeros(0, dtype=np.int64)  # no pending graph reads the banks now
        self.flush()  # unsynced calls so far are computed now (their outputs were guarded): count them first
        pool.reap()
        where, state = pool.table.where, pool.table.state
        slots = np.array([where.get((layer, int(e)), -1) for e in experts], dtype=np.int64)
        blocked = self.quarantine.blocked(layer) if self.quarantine is not None else None
        if blocked is not None:
            slots[np.isin(experts, blocked)] = SKIP  # never read again until cleared
        hits = int(np.sum(slots >= 0))
        inflight = [int(s) for s in slots if s >= 0 and state[s] == LOADING and not pool.futures[s].done()]
        missing = np.flatnonzero(slots == -1)
        victims = pool.victims(len(missing), slots[slots >= 0], spare_prefetches=False) if len(missing) else []
        for i, slot in zip(missing, victims):
            slots[i] = slot
            pool.load((layer, int(experts[i])), slot, DEMAND)
        for i in np.flatnonzero(slots == -1):  # nothing evictable left: finish a read in flight first (see victim)
            slots[i] = pool.victim(slots[slots >= 0], wait=True)
            pool.load((layer, int(experts[i])), int(slots[i]), DEMAND)
        pool.busy = slots.copy()  # from here on nothing may evict them
        t = probe.lap(Phase.QUEUED, t)
        if before_wait is not None:
            before_wait()
        t = probe.lap(Phase.PREFETCH, t)
        t0 = time.perf_counter()
        failed = pool.wait_all(slots, layer, experts)
        waited = time.perf_counter() - t0
        t = probe.lap(Phase.WAIT, t)
        if failed:
            if self.quarantine is None:
                raise next(iter(failed.values()))
            for i, err in failed.items():
                self.quarantine.add(layer, int(experts[i]), err)
                slots[i] = SKIP
        skipped = 0
        uses = np.ones(len(experts)) if uses is None else np.asarray(uses, dtype=np.float64)
        if failed or blocked is not None:  # quarantined experts: no slot, not counted as used
            skipped = int(np.sum(slots < 0))
            slots[slots < 0] = -1
            self._use([layer], slots[slots >= 0], uses[slots >= 0])
        else:
            self._use([layer], slots, uses)
        self._usage.add(layer, experts, uses)
        self._counters.acquired(hits - len(inflight), len(inflight), len(experts) - hits - skipped, waited)
        probe.lap(Phase.COUNTED, t)
        return slots

    def prefetch(self, layer: int, experts, *, priority: int = PREFETCH, limit: int | None = None,
                 score: float = 0.0) -> int:
        """Start reads of experts not resident or in flight, without waiting; returns how many were started.

        Never evicts a slot the current step needs (busy), a slot being read, or an expert asked for in the same
        call; stops when no slot may be taken or `limit` reads were started. `score` is the LFU score the experts
        enter with (a warm start passes their past use)."""
        pool = self._pool
        if not pool.busy.size:  # outside a layer call (warm start): finish every graph first
            self._settle_graphs()
        pool.reap()
        where = pool.table.where
        asked = list(dict.fromkeys(int(e) for e in experts))  # distinct, in order
        held = np.array([where[(layer, e)] for e in asked if (layer, e) in where], dtype=np.int64)
        todo = [e for e in asked if (layer, e) not in where]
        blocked = self.quarantine.blocked(layer) if self.quarantine is not None else None
        if blocked is not None:
            todo = [e for e in todo if e not in blocked]
        if limit is not None:
            todo = todo[: max(limit, 0)]
        chosen = pool.victims(len(todo), held) if todo else []  # never evicts an expert asked for here
        for e, slot in zip(todo, chosen):
            pool.load((layer, e), slot, priority)
            pool.policy.enter_prefetch(slot, layer, score)
        self._counters.add(prefetches=len(chosen))
        return len(chosen)

    def credit(self, layer: int, experts: np.ndarray, uses: np.ndarray) -> None:
        """Count `uses` uses of the distinct `experts` of `layer` after their call (the accepted drafts of a
        verification pass, draft_rows.py); the slot policy only hears of those still resident."""
        self._usage.add(layer, experts, uses)
        where = self._pool.table.where
        slots = np.array([where.get((layer, e), -1) for e in experts.tolist()], dtype=np.int64)
        resident = slots >= 0
        if resident.any():
            self._pool.policy.touch(slots[resident], uses[resident])

    def _use(self, layers, slots: np.ndarray, uses: np.ndarray | float = 1.0) -> None:
        """Policy bookkeeping after calls of `layers` (synced or not): the distinct `slots` were used, `uses`
        times each."""
        first = self._pool.policy.used(layers, slots, uses)
        if first:
            self._counters.add(prefetch_used=first)

    # -- the no-sync path (see unsynced.py) -------------------------------------------------------------------
    def lookup(self, layer: int, num_experts: int) -> int | mx.array | None:
        """If every expert of `layer` is resident: the first slot of the run of slots that holds them in expert
        order (a preload lays layers out so; compute over `rows`), or else the expert->slot table ([num_experts]
        uint32); None if not. The answer holds while `epoch` does: an eviction of one of the layer's experts
        changes it, and first evaluates every deferred and guarded output, so no call reads a reused slot."""
        pool = self._pool
        if pool.futures:
            pool.reap()
        if not self._unsynced or not pool.table.wholly_resident(layer, num_experts):
            return None
        return pool.table.lut(layer, num_experts)

    def rows(self, start: int, n: int) -> dict[str, mx.array]:
        """Bank rows [start, start+n) of every tensor, as views sharing the banks' memory (made once)."""
        return self._pool.banks.rows(start, n, self.epoch)

    def defer(self, layer: int, indices: mx.array, output: mx.array) -> mx.array:
        """Note an unsynced call's lazy routing indices and output; returns the output to use in its place
        (unsynced.DeferredCalls.defer). It is evaluated before any slot is reused; `flush` counts it."""
        return self._calls.defer(layer, indices, output)

    def flush(self, keep: int = 0, force: bool = True) -> None:
        """Count the unsynced calls of all steps but the last `keep` (unsynced.DeferredCalls.flush). MLX thread."""
        self._calls.flush(keep, force)

    @property
    def deferred_steps(self) -> int:
        """Steps whose unsynced calls `flush` has not counted yet."""
        return len(self._calls)

    def _count_unsynced(self, layers: np.ndarray, sizes: np.ndarray, flat: np.ndarray) -> None:
        """Bookkeeping of unsynced calls (DeferredCalls' count callback), vectorised over many steps."""
        pool = self._pool
        pool.policy.advance(len(layers))
        hits, per_layer = routed_per_layer(layers, sizes, flat)
        used = []
        for layer, e in per_layer:  # e: the experts of each call of `layer`, a repeat per call
            used.append(pool.table.slots_of(layer, e))
            distinct, calls = np.unique(e, return_counts=True)
            self._usage.add(layer, distinct, calls)
        slots, uses = np.unique(np.concatenate(used), return_counts=True) if used else (np.zeros(0, np.int64), 1.0)
        self._use(layers.tolist(), slots, uses)
        self._counters.add(hits=hits, unsynced=len(layers))

    # -- queries ----------------------------------------------------------------------------------------------
    def contains(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._pool.table.where

    def resident(self) -> list[tuple[int, int]]:
        """Resident or loading (layer, expert) keys, lowest-ranked first."""
        rank, where = self._pool.policy.rank(), self._pool.table.where
        return sorted(where, key=lambda k: rank[where[k]])

    def heat_map(self) -> dict[int, list[tuple[int, float]]]:
        """Per layer, its resident or loading experts with their heat: the slot policy's keep-priority divided by
        the highest one (0..1; all 0 when nothing has been used). Read-only; MLX thread (the table is its own)."""
        rank, where = self._pool.policy.rank(), self._pool.table.where
        top = float(max((rank[s] for s in where.values()), default=0.0))
        out: dict[int, list[tuple[int, float]]] = {}
        for (layer, expert), slot in sorted(where.items()):
            heat = float(rank[slot]) / top if top > 0 else 0.0
            out.setdefault(layer, []).append((expert, min(1.0, max(0.0, heat))))
        return out

    def slot_of(self, layer: int, expert: int) -> int | None:
        """The slot holding (or loading) `expert` of `layer`, or None."""
        return self._pool.table.where.get((layer, expert))

    def seed_usage(self, usage: dict[tuple[int, int], float]) -> None:
        """Start the usage counts from a previous run's (see warm.py)."""
        self._usage.seed(usage)

    def usage(self) -> dict[tuple[int, int], float]:
        """Use counts per (layer, expert) since start (for warm restarts)."""
        return self._usage.as_dict()

    def stats(self) -> CacheStats:
        return self._counters.snapshot()

    def reset_stats(self) -> None:
        self._counters.reset()
