"""The expert cache's slot table: which (layer, expert) each slot holds, in which state, and per layer the
rows or expert->slot table handed to the no-sync path (see ExpertCache.lookup). MLX thread only."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .slot_policy import FREE, LOADING, READY

Key = tuple[int, int]  # (layer, expert)


class SlotTable:
    """Slot states (slot_policy.FREE/READY/LOADING/RETIRED) and the key maps, for `slots` bank rows."""

    def __init__(self, slots: int, keep: list[Key] = ()):
        """`keep`: keys already READY in slots 0, 1, ... (a reallocation's survivors)."""
        self.state = np.full(slots, FREE, np.int8)
        self.key_of: list[Key | None] = [None] * slots
        self.where: dict[Key, int] = {}  # resident or loading key -> slot
        self.ready: dict[int, int] = {}  # layer -> READY experts
        self._luts: dict[int, int | mx.array] = {}  # layer -> first slot or expert->slot table (see lut)
        self._tables: dict[int, np.ndarray] = {}  # layer -> [E] slot of each expert, while in _luts
        for slot, key in enumerate(keep):
            self.state[slot], self.key_of[slot], self.where[key] = READY, key, slot
            self.ready[key[0]] = self.ready.get(key[0], 0) + 1

    def __len__(self) -> int:
        return len(self.state)

    def claim(self, key: Key, slot: int) -> None:
        """`slot` starts loading `key`."""
        self.key_of[slot], self.state[slot], self.where[key] = key, LOADING, slot

    def loaded(self, slot: int) -> None:
        """The read into `slot` landed."""
        self.state[slot] = READY
        layer = self.key_of[slot][0]
        self.ready[layer] = self.ready.get(layer, 0) + 1

    def failed(self, slot: int) -> None:
        """The read into `slot` failed: the slot holds garbage, forget it."""
        self.where.pop(self.key_of[slot], None)
        self.key_of[slot], self.state[slot] = None, FREE

    def evict(self, slot: int) -> bool:
        """Empty the READY `slot`; returns whether a layer's lut (handed out by `lut`) no longer holds."""
        key = self.key_of[slot]
        del self.where[key]
        self.ready[key[0]] -= 1
        dropped = self._luts.pop(key[0], None) is not None
        self._tables.pop(key[0], None)
        self.key_of[slot], self.state[slot] = None, FREE
        return dropped

    def wholly_resident(self, layer: int, num_experts: int) -> bool:
        return self.ready.get(layer, 0) >= num_experts

    def lut(self, layer: int, num_experts: int) -> int | mx.array:
        """For a wholly resident layer: the first slot of the run of slots holding its experts in expert order,
        or else the expert->slot table ([num_experts] uint32); made once, kept until one of them is evicted."""
        lut = self._luts.get(layer)
        if lut is None:
            table = np.array([self.where[(layer, e)] for e in range(num_experts)], dtype=np.uint32)
            start = int(table[0])
            in_order = np.array_equal(table, np.arange(start, start + num_experts))
            lut = self._luts[layer] = start if in_order else mx.array(table)
            self._tables[layer] = table.astype(np.int64)
        return lut

    def slots_of(self, layer: int, experts: np.ndarray) -> np.ndarray:
        """Slots of `experts` of `layer` (repeats allowed), those not resident left out."""
        table = self._tables.get(layer)
        if table is not None:
            return table[experts]
        # evicted since its lut was made: whatever of it is still resident
        return np.array([s for s in (self.where.get((layer, int(x)), -1) for x in experts) if s >= 0],
                        dtype=np.int64)
