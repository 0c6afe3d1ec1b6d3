"""Eviction policies for the cache replay (policy_replay.py): moed's own SlotPolicy, LRU, LFU, LFUDA and Belady.

Every policy answers the same calls the replay makes, in the order ExpertCache makes them of its SlotPolicy:
`begin_call` (one tick per layer call), `victims` (slots for new reads: free ones first, then the lowest-ranked
ready ones, never a pinned or busy one), `enter` (a read landed in a slot, demand or prefetch), `forget` (a slot
was emptied) and `used` (the distinct slots of a call were used, in order). A call `c` is token * layers + layer.

- "moed-lfu[@H]", "moed-lru": moed.daemon.engine.slot_policy.SlotPolicy itself, with its half-life of H tokens
  (H x layers ticks, as the engine sets it; the engine's HALF_LIFE_TOKENS where H is not given); unused
  prefetches are protected from other prefetches until their layer runs, as in the cache.
- "lru": least recently used; a prefetch enters as most recent (a plain insert).
- "lfu": in-cache frequency with no ageing (a slot's count starts at 0 when it is filled), ties by recency.
- "lfuda": LFU with dynamic ageing (Arlitt et al.): key = age + count, the cache's age becomes the key of each
  evicted entry, so old counts stop protecting entries that are no longer used.
- "belady": Belady's MIN: evict the entry whose next use is farthest (the current call's experts pinned). With no
  prefetch it is the demand-paging optimum for a cache where each call's experts must be resident together. With
  prefetch it also evicts farthest-first and admits a predicted expert only when its next use comes before that
  of the entry it would evict: an oracle reference for the same predictions, not a proven optimum.
"""

from __future__ import annotations

import numpy as np

from moed.daemon.engine.slot_policy import FREE, HALF_LIFE_TOKENS, READY, SlotPolicy

from .routing_io import Trace

TIE = float(2**24)  # ranks are primary * TIE + recency; recency (calls) stays below 2**24 for any trace here


def pick(rank: np.ndarray, n: int, state: np.ndarray, pinned: np.ndarray, busy: np.ndarray) -> list[int]:
    """Free slots first (lowest first), then the lowest-ranked READY slots not pinned or busy (stable)."""
    free = np.flatnonzero(state == FREE)[:n].tolist()
    if len(free) == n:
        return free
    rank = rank.astype(np.float64, copy=True)
    rank[state != READY] = np.inf
    rank[pinned] = np.inf
    rank[busy] = np.inf
    order = np.argsort(rank, kind="stable")[: n - len(free)]
    return free + [int(s) for s in order if np.isfinite(rank[s])]


class MoedPolicy:
    """moed's SlotPolicy, driven as ExpertCache drives it."""

    def __init__(self, policy: str, half_life_tokens: float = HALF_LIFE_TOKENS):
        self.kind, self.half_life_tokens = policy, half_life_tokens
        self.name = f"moed-{policy}" + (f"@{half_life_tokens:g}" if policy == "lfu" else "")

    def reset(self, slots: int, trace: Trace) -> None:
        self.sp = SlotPolicy(self.kind, self.half_life_tokens * trace.layers, slots)

    def begin_call(self, call: int) -> None:
        self.sp.advance()

    def victims(self, n, state, pinned, busy, for_prefetch: bool) -> list[int]:
        return self.sp.victims(n, state, pinned, busy, spare_prefetches=for_prefetch)

    def admit(self, keys, call, state, pinned, busy) -> list:
        return keys

    def enter(self, slot: int, key: tuple[int, int], call: int, prefetch_for: int | None) -> None:
        self.sp.enter(slot)  # SlotPool.load
        if prefetch_for is not None:
            self.sp.enter_prefetch(slot, prefetch_for, 0.0)  # ExpertCache.prefetch

    def forget(self, slot: int) -> None:
        self.sp.forget(slot)

    def used(self, layer: int, slots: np.ndarray, call: int) -> None:
        self.sp.used([layer], slots)


class Ranked:
    """A policy that keeps one rank per slot (lowest goes first); subclasses say how uses change it."""

    name = "ranked"

    def reset(self, slots: int, trace: Trace) -> None:
        self.last = np.zeros(slots)
        self.tick = 0

    def begin_call(self, call: int) -> None:
        self.tick += 1

    def rank(self) -> np.ndarray:
        return self.last

    def victims(self, n, state, pinned, busy, for_prefetch: bool) -> list[int]:
        return pick(self.rank(), n, state, pinned, busy)

    def admit(self, keys, call, state, pinned, busy) -> list:
        return keys

    def enter(self, slot, key, call, prefetch_for) -> None:
        self.last[slot] = self.tick

    def forget(self, slot: int) -> None:
        pass

    def used(self, layer: int, slots: np.ndarray, call: int) -> None:
        self.last[slots] = self.tick + np.arange(len(slots)) / len(slots)


class LRU(Ranked):
    name = "lru"


class LFU(Ranked):
    name = "lfu"

    def reset(self, slots, trace) -> None:
        super().reset(slots, trace)
        self.count = np.zeros(slots)

    def rank(self) -> np.ndarray:
        return self.count * TIE + self.last

    def enter(self, slot, key, call, prefetch_for) -> None:
        super().enter(slot, key, call, prefetch_for)
        self.count[slot] = 0

    def used(self, layer, slots, call) -> None:
        super().used(layer, slots, call)
        self.count[slots] += 1


class LFUDA(LFU):
    name = "lfuda"

    def reset(self, slots, trace) -> None:
        super().reset(slots, trace)
        self.age = 0.0
        self.key = np.zeros(slots)

    def rank(self) -> np.ndarray:
        return self.key * TIE + self.last

    def enter(self, slot, key, call, prefetch_for) -> None:
        super().enter(slot, key, call, prefetch_for)
        self.key[slot] = self.age

    def forget(self, slot: int) -> None:
        self.age = max(self.age, float(self.key[slot]))

    def used(self, layer, slots, call) -> None:
        super().used(layer, slots, call)
        self.key[slots] = self.age + self.count[slots]


class Belady(Ranked):
    """Farthest next use goes first; knows the whole trace (next uses in call numbers)."""

    name = "belady"

    def reset(self, slots, trace) -> None:
        super().reset(slots, trace)
        self.next = np.zeros(slots)
        self.keys: list[tuple[int, int] | None] = [None] * slots
        self.never = float(trace.tokens * trace.layers + 1)
        layers = trace.layers
        occ: dict[tuple[int, int], list[int]] = {}
        for t in range(trace.tokens):
            for layer in range(layers):
                for e in trace.ids[t, layer].tolist():
                    occ.setdefault((layer, e), []).append(t * layers + layer)
        self.occ = {key: np.array(v) for key, v in occ.items()}

    def next_use(self, key: tuple[int, int], after: int) -> float:
        """The first call after `after` that uses `key` (self.never if none)."""
        calls = self.occ.get(key)
        if calls is None:
            return self.never
        i = int(np.searchsorted(calls, after, side="right"))
        return float(calls[i]) if i < len(calls) else self.never

    def rank(self) -> np.ndarray:
        return -self.next

    def enter(self, slot, key, call, prefetch_for) -> None:
        super().enter(slot, key, call, prefetch_for)
        self.keys[slot] = key
        self.next[slot] = self.next_use(key, call)

    def used(self, layer, slots, call) -> None:
        super().used(layer, slots, call)
        for s in slots.tolist():
            self.next[s] = self.next_use(self.keys[s], call)

    def admit(self, keys, call, state, pinned, busy) -> list:
        """Of the predicted `keys` (in order), those worth a read: a free slot, or a sooner next use than the
        farthest evictable entry's."""
        free = int(np.sum(state == FREE))
        nxt = {key: self.next_use(key, call) for key in keys}
        far = self.next.copy()
        far[state != READY] = -np.inf
        far[pinned] = -np.inf
        far[busy] = -np.inf
        evictable = np.sort(far[np.isfinite(far)])[::-1].tolist()  # farthest first
        chosen = set()
        for key in sorted(keys, key=lambda k: nxt[k]):
            if nxt[key] >= self.never:
                continue  # never used again: not worth a read
            if free:
                free -= 1
            elif evictable and nxt[key] < evictable[0]:
                evictable.pop(0)
            else:
                continue
            chosen.add(key)
        return [key for key in keys if key in chosen]


def make_policy(name: str):
    """A policy by name: "moed-lfu" (the engine's half-life), "moed-lfu@H" (H tokens), "moed-lru", "lru", "lfu",
    "lfuda", "belady". Raises ValueError for another name."""
    if name.startswith("moed-lfu"):
        _, _, hl = name.partition("@")
        return MoedPolicy("lfu", float(hl) if hl else HALF_LIFE_TOKENS)
    if name == "moed-lru":
        return MoedPolicy("lru")
    plain = {"lru": LRU, "lfu": LFU, "lfuda": LFUDA, "belady": Belady}
    if name not in plain:
        raise ValueError(f"policy {name!r}: expected moed-lfu[@H], moed-lru, {', '.join(plain)}")
    return plain[name]()
