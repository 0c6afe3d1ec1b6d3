"""ExpertCache: a hard byte budget of expert slots shared by every MoE layer, filled from the expert store.

How it works
- The cache owns one *slot bank* per expert tensor (e.g. `gate_proj.weight`, `gate_proj.scales`, ...): an
  MLX array of shape [slots, *per-expert shape]. An expert of any layer can sit in any slot, so the budget is
  global across layers. The streaming layer maps routed expert ids to slot ids and runs `gather_qmm` over the
  bank directly: a cache hit costs no copy.
- Reads land in MLX-owned memory: each bank is allocated as raw bytes and written through a numpy view of its
  buffer, on the reader's threads, from the aligned read buffer (one memcpy per expert, GIL released).
  Writing into MLX memory is safe because slots are only (re)filled by `acquire`, which the MLX thread calls
  after evaluating the routing of the current layer, and that evaluation has finished every earlier graph that
  could read the bank (see experts.py).
- Memory: slots * expert_bytes, where slots = budget // expert_bytes (at least 1). Nothing else grows.
- Policy: LRU over (layer, expert) keys. `acquire` pins the experts it was asked for, so an expert the current
  step needs is never evicted to make room for another one of the same step.
- `resize(budget)` reallocates the banks at the new size, keeping the most recently used experts, and returns
  the freed memory to the OS (mx.clear_cache). Shrinking evicts.

Everything here runs on the one thread that owns MLX, except the sinks, which run on reader threads and only
touch the slot they were given.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx
import numpy as np

from ..store.format import RecordLayout

_MLX_DTYPES = {
    "uint32": mx.uint32,
    "uint8": mx.uint8,
    "int8": mx.int8,
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
}


class Reader(Protocol):
    """What the cache needs of moed.daemon.store.reader.ExpertReader."""

    def read(self, layer: int, expert: int, sink, *, priority: int = 0) -> Future: ...


@dataclass
class CacheStats:
    """Counters since start (or the last reset): a hit is a requested expert found resident."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_loaded: int = 0
    budget_bytes: int = 0
    used_bytes: int = 0
    slots: int = 0

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    def as_dict(self) -> dict[str, float | int]:
        d = dict(self.__dict__)
        d["hit_rate"] = self.hit_rate
        return d


class ExpertCache:
    """A budgeted cache of experts in slot banks; see the module docstring."""

    def __init__(self, layout: RecordLayout, reader: Reader, budget_bytes: int):
        self.layout = layout
        self.reader = reader
        # bytes one expert occupies in the banks (tensor bytes, without record padding)
        self.expert_bytes = sum(t.nbytes for t in layout.tensors)
        self._lock = threading.Lock()  # guards counters touched by reader threads
        self._stats = CacheStats()
        self._slot_of: OrderedDict[tuple[int, int], int] = OrderedDict()  # LRU order: oldest first
        self._key_of: list[tuple[int, int] | None] = []
        self._free: list[int] = []
        self._banks: dict[str, mx.array] = {}
        self._host: dict[str, np.ndarray] = {}
        self.views: dict[str, mx.array] = {}
        self._allocate(self._slots_for(budget_bytes))
        self._stats.budget_bytes = budget_bytes

    # -- sizing -----------------------------------------------------------------------------------------------
    def _slots_for(self, budget_bytes: int) -> int:
        if budget_bytes < self.expert_bytes:
            raise ValueError(
                f"cache budget {budget_bytes} bytes is below one expert ({self.expert_bytes} bytes)"
            )
        return budget_bytes // self.expert_bytes

    @property
    def capacity(self) -> int:
        """Number of expert slots."""
        return len(self._key_of)

    def _allocate(self, slots: int, keep: list[tuple[int, int]] | None = None) -> None:
        """(Re)build the banks with `slots` slots, copying the experts in `keep` (at most `slots`) over."""
        old_host, old_slot = self._host, dict(self._slot_of)
        banks: dict[str, mx.array] = {}
        for t in self.layout.tensors:
            banks[t.name] = mx.zeros((slots, t.nbytes), dtype=mx.uint8)
        mx.eval(list(banks.values()))
        host = {name: np.array(b, copy=False) for name, b in banks.items()}  # writable views of MLX memory
        key_of: list[tuple[int, int] | None] = [None] * slots
        slot_of: OrderedDict[tuple[int, int], int] = OrderedDict()
        for new, key in enumerate(keep or []):
            for name in host:
                host[name][new] = old_host[name][old_slot[key]]
            key_of[new] = key
            slot_of[key] = new
        self._banks, self._host, self._key_of, self._slot_of = banks, host, key_of, slot_of
        self._free = [s for s in range(slots - 1, -1, -1) if key_of[s] is None]
        # Typed views the compute reads: [slots, *per-expert shape]; they share the banks' buffers.
        self.views = {
            t.name: banks[t.name].view(_MLX_DTYPES[t.dtype]).reshape((slots,) + t.shape) for t in self.layout.tensors
        }
        mx.eval(list(self.views.values()))
        self._stats.slots = slots
        self._stats.used_bytes = len(slot_of) * self.expert_bytes

    def resize(self, budget_bytes: int) -> None:
        """Change the budget; shrinking evicts the least recently used experts. Call on the MLX thread."""
        slots = self._slots_for(budget_bytes)
        keep = list(self._slot_of)[-slots:]  # most recently used last
        evicted = len(self._slot_of) - len(keep)
        old = self._banks
        self._allocate(slots, keep)
        del old
        mx.clear_cache()  # hand the old banks' memory back instead of keeping it in MLX's buffer cache
        with self._lock:
            self._stats.evictions += evicted
            self._stats.budget_bytes = budget_bytes

    # -- lookups ----------------------------------------------------------------------------------------------
    def contains(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._slot_of

    def resident(self) -> list[tuple[int, int]]:
        """Resident (layer, expert) keys, least recently used first."""
        return list(self._slot_of)

    def acquire(self, layer: int, experts: np.ndarray) -> np.ndarray:
        """Make the given distinct experts of one layer resident and return their slot ids (same order).

        Waits for the reads of missing experts. At most `capacity` experts may be asked for at once: the caller
        splits larger sets into waves. Raises the reader's StoreError if a read fails (the slot is freed).
        """
        if len(experts) > self.capacity:
            raise ValueError(f"asked for {len(experts)} experts at once, the cache has {self.capacity} slots")
        pinned = {(layer, int(e)) for e in experts}
        slots = np.empty(len(experts), dtype=np.int64)
        pending: list[tuple[int, tuple[int, int], Future]] = []
        hits = 0
        for i, e in enumerate(experts):
            key = (layer, int(e))
            slot = self._slot_of.get(key)
            if slot is not None:
                self._slot_of.move_to_end(key)
                hits += 1
            else:
                slot = self._take_slot(pinned)
                self._key_of[slot] = key
                self._slot_of[key] = slot
                pending.append((slot, key, self.reader.read(layer, int(e), self._sink(slot))))
            slots[i] = slot
        self._wait(pending)
        with self._lock:
            self._stats.hits += hits
            self._stats.misses += len(pending)
            self._stats.bytes_loaded += len(pending) * self.layout.record_bytes
            self._stats.used_bytes = len(self._slot_of) * self.expert_bytes
        return slots

    def _take_slot(self, pinned: set[tuple[int, int]]) -> int:
        if self._free:
            return self._free.pop()
        for key in self._slot_of:  # oldest first
            if key not in pinned:
                slot = self._slot_of.pop(key)
                self._key_of[slot] = None
                with self._lock:
                    self._stats.evictions += 1
                return slot
        raise RuntimeError("no evictable slot: every slot is pinned by the current step")

    def _sink(self, slot: int):
        host, tensors = self._host, self.layout.tensors

        def copy_into_slot(payload: np.ndarray) -> None:
            for t in tensors:  # record -> bank, one memcpy per tensor
                host[t.name][slot] = payload[t.offset : t.offset + t.nbytes]

        return copy_into_slot

    def _wait(self, pending: list[tuple[int, tuple[int, int], Future]]) -> None:
        error: BaseException | None = None
        for slot, key, fut in pending:
            try:
                fut.result()
            except BaseException as e:  # free the slot so the cache never claims garbage
                self._slot_of.pop(key, None)
                self._key_of[slot] = None
                self._free.append(slot)
                error = error or e
        if error is not None:
            raise error

    # -- counters ---------------------------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._stats.__dict__)

    def reset_stats(self) -> None:
        with self._lock:
            s = self._stats
            self._stats = CacheStats(budget_bytes=s.budget_bytes, used_bytes=s.used_bytes, slots=s.slots)
