"""The expert cache's counters: a snapshot type (CacheStats) and the lock-guarded book they are kept in."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace


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


class Counters:
    """CacheStats written on the MLX thread and read from any thread."""

    def __init__(self, budget_bytes: int):
        self._lock = threading.Lock()
        self._stats = CacheStats(budget_bytes=budget_bytes)

    def add(self, **deltas: float) -> None:
        """Add to counters by name."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    # The three below run several times per synced layer call (every read and eviction): one lock, named fields,
    # no keyword dict (the general `add` costs a few microseconds a call more; bench/hostcost.py).
    def evicted(self, wasted: bool) -> None:
        with self._lock:
            s = self._stats
            s.evictions += 1
            s.prefetch_wasted += wasted

    def loaded(self, record_bytes: int, used_bytes: int) -> None:
        with self._lock:
            s = self._stats
            s.bytes_loaded += record_bytes
            s.used_bytes = used_bytes

    def acquired(self, hits: int, inflight_hits: int, misses: int, wait_seconds: float) -> None:
        with self._lock:
            s = self._stats
            s.hits += hits
            s.inflight_hits += inflight_hits
            s.misses += misses
            s.wait_seconds += wait_seconds
            s.acquires += 1

    def set(self, **values: int) -> None:
        """Set gauges (budget, slots, bytes in use) by name."""
        with self._lock:
            for name, value in values.items():
                setattr(self._stats, name, value)

    def snapshot(self) -> CacheStats:
        with self._lock:
            return replace(self._stats)  # a shallow copy: every field is a number (asdict deep-copies, slowly)

    def reset(self) -> None:
        """Zero the counters; the gauges stay."""
        with self._lock:
            s = self._stats
            self._stats = CacheStats(budget_bytes=s.budget_bytes, used_bytes=s.used_bytes, slots=s.slots)
