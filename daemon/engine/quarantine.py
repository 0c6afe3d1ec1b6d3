"""Experts that failed to load, kept out of service until an operator clears them, and the rows they spoiled.

When an ExpertCache has a Quarantine, a read that fails twice (pool.py retries once) does not raise out of the
model call: the expert is quarantined with its error, `acquire` answers -1 for it, and the streaming layer
computes the positions routed to it as zeros and reports them here (`poisoned`). A quarantined expert is never
read again (demand or prefetch) until `clear()`; every later position routed to it is reported the same way.
Only a failed read puts an expert here, and a failed read leaves its slot empty, so a quarantined expert is never
resident: its layer always takes the synced path, where the quarantine is consulted.

The scheduler attributes the reported positions to requests (scheduler.py, RowTracker) and ends those requests
alone with `store_error`; the other rows of the batch never touched the expert, so their tokens are unchanged.

`snapshot()` and `clear()` may be called from any thread (status, the operator's request); the rest runs on the
MLX thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Entry:
    layer: int  # the model's layer number (LayerEntry.index)
    expert: int
    error: str
    failures: int  # requests ended because of it
    since: float  # wall-clock time it was quarantined


class Quarantine:
    """Failed experts by (layer position, expert). `layer_numbers[pos]` is the model's number of layer `pos`."""

    def __init__(self, layer_numbers: list[int]):
        self._numbers = list(layer_numbers)
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], Entry] = {}
        self._blocked: dict[int, np.ndarray] = {}  # layer position -> quarantined expert ids (MLX thread reads)
        self._poisoned: list[tuple[int, np.ndarray, np.ndarray]] = []  # (layer pos, experts, position mask)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, layer: int, expert: int, error: BaseException | str) -> None:
        """Quarantine expert `expert` of layer position `layer` after a failed read."""
        with self._lock:
            key = (layer, expert)
            if key not in self._entries:
                self._entries[key] = Entry(self._numbers[layer], expert, str(error), 0, time.time())
            self._rebuild()

    def blocked(self, layer: int) -> np.ndarray | None:
        """The quarantined experts of layer position `layer`, or None (the common case: nothing to skip)."""
        return self._blocked.get(layer)

    def poisoned(self, layer: int, experts: np.ndarray, mask: np.ndarray) -> None:
        """A layer call computed the positions in `mask` (True: routed to one of `experts`) as zeros."""
        self._poisoned.append((layer, experts, mask))

    def take_poisoned(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The reports since the last take (MLX thread)."""
        out, self._poisoned = self._poisoned, []
        return out

    def describe(self, layer: int, experts: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
        """What a report means for a request it spoiled: one line naming the experts and their errors, and the
        (layer number, expert) pairs."""
        parts, named = [], []
        with self._lock:
            for e in experts.tolist():
                entry = self._entries.get((layer, int(e)))
                if entry is not None:
                    parts.append(entry.error)
                    named.append((entry.layer, entry.expert))
        return "; ".join(parts) or f"an expert of layer {self._numbers[layer]} is quarantined", named

    def failed_request(self, named: list[tuple[int, int]]) -> None:
        """Count a request ended because of these (layer number, expert) pairs."""
        with self._lock:
            for entry in self._entries.values():
                if (entry.layer, entry.expert) in named:
                    entry.failures += 1

    def snapshot(self) -> list[dict]:
        """Every quarantined expert: layer (the model's number), expert, error, failures, since."""
        with self._lock:
            return [dict(vars(e)) for e in self._entries.values()]

    def clear(self) -> int:
        """Put every quarantined expert back in service (the next use reads and verifies it again); returns
        how many there were."""
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            self._rebuild()
            return n

    def _rebuild(self) -> None:
        by_layer: dict[int, list[int]] = {}
        for layer, expert in self._entries:
            by_layer.setdefault(layer, []).append(expert)
        self._blocked = {layer: np.array(sorted(es), dtype=np.int64) for layer, es in by_layer.items()}
