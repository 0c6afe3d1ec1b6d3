"""The expert cache's slots and the reads into them: banks, slot table, policy and reads in flight.

`SlotPool` is the part of ExpertCache (cache.py) that owns memory and slots: it allocates the banks, starts
reads into slots (`load`), settles them, picks victims through the slot policy and evicts them, and retires or
revives bank rows on a resize. What it needs of its owner is passed in: `settle_graphs` (evaluate every pending
output that may read the banks: called before any slot is emptied) and `invalidate` (a lookup result handed
out may no longer hold: the owner's epoch). MLX thread only; the sinks run on reader threads.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ..store.format import RecordLayout
from .banks import SlotBanks
from .sink import DEMAND, Uploads
from .slot_policy import FREE, READY, RETIRED, SlotPolicy
from .slots import Key, SlotTable
from .stats import Counters


class SlotPool:
    """Slots of one layout; see the module docstring. `busy` (slots the pending graph reads) is set by the
    owner; `futures` maps a slot to its read in flight."""

    def __init__(self, layout: RecordLayout, reader, uploads: Uploads, policy: SlotPolicy, counters: Counters,
                 settle_graphs: Callable[[], None], invalidate: Callable[[], None]):
        self.layout, self.reader, self.uploads, self.policy = layout, reader, uploads, policy
        self.expert_bytes = sum(t.nbytes for t in layout.tensors)  # bank bytes per expert (no record padding)
        self._counters, self._settle_graphs, self._invalidate = counters, settle_graphs, invalidate
        self.futures: dict[int, Future] = {}
        self.busy = np.zeros(0, dtype=np.int64)
        self.banks: SlotBanks | None = None
        self.table = SlotTable(0)
        self.capacity = 0

    # -- memory -----------------------------------------------------------------------------------------------
    def allocate(self, slots: int, keep: list[tuple[Key, int]]) -> None:
        """(Re)build the banks with `slots` slots, copying the (key, old slot) pairs in `keep` over."""
        banks, old = SlotBanks(self.layout, slots), self.banks
        if old is not None:
            banks.copy_rows(old, [(new, slot) for new, (_, slot) in enumerate(keep)])
            banks.copied_rows = old.copied_rows
        self.policy.rebuild(slots, [slot for _, slot in keep])
        self.table = SlotTable(slots, [key for key, _ in keep])
        self.banks, self.busy = banks, np.zeros(0, dtype=np.int64)
        self.uploads.bind(banks.host, self.layout.tensors)
        self._invalidate()
        self.capacity = slots
        self._counters.set(slots=slots, used_bytes=len(keep) * self.expert_bytes)

    def reallocate(self, slots: int) -> None:
        """Grow past the allocation: new banks, the resident experts copied over, best ranked first."""
        self.banks.wait_released()
        self.drain()
        rank = self.policy.rank()
        ready = sorted(self.table.where.items(), key=lambda ks: rank[ks[1]], reverse=True)  # best first
        self.allocate(slots, ready)

    def grow_within(self, slots: int) -> None:
        """Revive retired rows up to `slots` (their pages fault back in on first write)."""
        self.banks.wait_released()  # a revived row is never written while its pages are being dropped
        self.table.state[self.capacity : slots] = FREE
        self.capacity = slots

    def shrink(self, slots: int) -> list[tuple[Key, float]]:
        """Retire rows [slots, capacity): their experts are evicted and the rows' memory handed back (on a
        thread). Returns the evicted experts that rank among the best `slots`, with their rank, best first
        (SlotPolicy.read_back): the owner reads them back into the remaining rows. Graphs must be settled."""
        self.banks.wait_released()
        state, key_of = self.table.state, self.table.key_of
        tail = range(slots, self.capacity)
        self.busy = np.zeros(0, dtype=np.int64)  # the graphs were settled: nothing pending reads a row
        for s in tail:
            if s in self.futures:
                self.settle(s)  # a read into a row about to retire: let it land (it is at most a few reads)
        rank = self.policy.rank()
        head_ready = [s for s in range(slots) if state[s] == READY]
        moved = [(key_of[s], s) for s in tail if state[s] == READY]
        for s in tail:
            if state[s] == READY:
                self.evict(s)
            state[s] = RETIRED
        self.capacity = slots
        return self.policy.read_back(rank, head_ready, moved, slots)

    def release_retired(self) -> None:
        """Hand the memory of the retired rows back to the OS (off the step path: banks.SlotBanks.release)."""
        self.banks.release(self.capacity, len(self.table))

    # -- reads ------------------------------------------------------------------------------------------------
    def load(self, key: Key, slot: int, priority: int) -> None:
        """Start reading `key` into the free `slot`."""
        self.table.claim(key, slot)
        self.policy.enter(slot)
        self.futures[slot] = self.reader.read(key[0], key[1], self.uploads.sink(slot), priority=priority)

    def settle(self, slot: int) -> BaseException | None:
        """Wait for the read into `slot`; on failure free the slot and return the error."""
        fut = self.futures.pop(slot)
        try:
            fut.result()
        except BaseException as e:  # the slot holds garbage: forget it
            self.table.failed(slot)
            self.policy.forget(slot)
            return e
        self.table.loaded(slot)
        self._counters.loaded(self.layout.record_bytes, len(self.table.where) * self.expert_bytes)
        return None

    def reap(self) -> None:
        """Settle reads that have finished, so their slots become ready (and evictable). Busy slots are left to
        their call's own wait: a failed read there must be seen (and retried) by that call, not freed and
        reused behind its back."""
        busy = set(self.busy.tolist())
        for slot in [s for s, f in self.futures.items() if f.done() and s not in busy]:
            self.settle(slot)

    def drain(self) -> None:
        """Wait for every read in flight."""
        for slot in list(self.futures):
            self.settle(slot)

    def wait_all(self, slots: np.ndarray, layer: int, experts: np.ndarray) -> dict[int, BaseException]:
        """Wait for the reads into `slots` (holding `experts` of `layer`), retrying a failed one once. Returns the
        reads that failed twice, {position in `slots`: error}; their slots are freed, and none of these slots is
        left loading."""
        failed: dict[int, BaseException] = {}
        for i, s in enumerate(slots):
            if int(s) in self.futures:
                err = self.settle(int(s))
                if err is not None:
                    err = self._retry_once(int(s), layer, int(experts[i]), err)
                if err is not None:
                    failed[i] = err
        if failed:
            for s in slots:  # leave nothing of this call half-claimed
                if int(s) in self.futures:
                    self.settle(int(s))
        return failed

    def _retry_once(self, slot: int, layer: int, expert: int, err: BaseException) -> BaseException | None:
        """A failed read is retried once as a demand read (a transient error must not fail a request); returns
        the error that stands (None: the retry succeeded)."""
        if (layer, expert) in self.table.where or self.table.state[slot] != FREE:
            return err
        self.load((layer, expert), slot, DEMAND)
        return self.settle(slot)

    # -- victims ----------------------------------------------------------------------------------------------
    def victims(self, n: int, pinned: np.ndarray, spare_prefetches: bool = True) -> list[int]:
        """Up to `n` slots for new reads (SlotPolicy.victims), the READY ones evicted. The caller loads every
        slot returned before asking again."""
        chosen = self.policy.victims(n, self.table.state, pinned, self.busy, spare_prefetches)
        for slot in chosen:
            if self.table.state[slot] == READY:
                self.evict(slot)
        return chosen

    def victim(self, pinned: np.ndarray, wait: bool = False) -> int:
        """One slot as `victims` gives it; with wait=True (demand reads) unused prefetches may go too, and if
        nothing is evictable the oldest unpinned read in flight is finished first. Raises RuntimeError if no
        slot can be had."""
        while True:
            got = self.victims(1, pinned, spare_prefetches=not wait)
            if got:
                return got[0]
            pinned_set = set(pinned.tolist())
            loading = [s for s in self.futures if s not in pinned_set]
            if not wait or not loading:
                raise RuntimeError("no evictable slot: every slot is pinned, busy or loading")
            self.settle(loading[0])  # a prefetch the current step does not need: let it land, then evict it

    def evict(self, slot: int) -> None:
        # An unsynced layer call may still be pending on this slot (its lookup table has it): finish it first.
        self._settle_graphs()
        if self.table.evict(slot):
            self._invalidate()  # a layer's rows or table, handed out by lookup, no longer hold
        wasted = self.policy.forget(slot)
        self._counters.evicted(bool(wasted))
