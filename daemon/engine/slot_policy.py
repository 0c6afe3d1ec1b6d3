"""The expert cache's slot policy: which slot to keep, which to give to a new read. numpy only (no MLX).

Per slot it keeps a score and the time of the last use, in numpy arrays, so a victim is one stable argsort:

- "lru": the least recently used slot goes.
- "lfu": frequency with exponential ageing: a use adds 1 to a score that is multiplied by `decay` per tick
  (it halves every `half_life` ticks); the lowest score goes.

A tick is one synced layer call (`advance`); the uses of one call are spread over the tick (i/len, in the
order given), so ties are broken by order of use. Ties in rank go to the lowest slot (stable argsort, as argmin).

Prefetched experts enter with score 0 (or a warm start's past use), so a misprediction is the first to go. An
unused prefetch is *protected* until the layer it was read for has run: other prefetches do not evict it; demand
reads may. The engine ages LFU by HALF_LIFE_TOKENS tokens (x its MoE layers: ticks are layer calls). These
choices come from replaying routing traces through this class against LRU, LFU, LFUDA and Belady's optimum at
12.5-50 % budgets, with and without prefetch (bench/policy_replay.py): tuned on the first half of the trained
fixture's teacher-forced trace (third recipe), a 3-token half-life scores best of 0.5-256 tokens; on the held-out
half and on sampled text it closes more of the LRU-to-Belady gap than 16 tokens (the previous recipe's choice, now
below LRU at 12.5 and 25 %) at 12.5 and 25 %, within 0.5 points of it at 50 %. The best half-life follows the
model's routing (8, 16 and 3 tokens on the fixture's three recipes; bench/results/routing.md; random-weight
models: bench/results/notebook.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

POLICIES = ("lru", "lfu")
HALF_LIFE_TOKENS = 3  # LFU: a use's weight halves every 3 tokens (the engine's half-life = this x MoE layers)
FREE, READY, LOADING, RETIRED = 0, 1, 2, 3  # slot states; RETIRED: a bank row beyond the current budget


class SlotPolicy:
    """Keep-priority of `slots` slots under one policy; the caller owns the slot states and does the evicting."""

    def __init__(self, policy: str, half_life: float, slots: int):
        """Raises ValueError for a policy not in POLICIES."""
        if policy not in POLICIES:
            raise ValueError(f"cache policy {policy!r}: expected one of {POLICIES}")
        self.policy = policy
        self.decay = 0.5 ** (1.0 / half_life)
        self.tick = 0  # one per synced layer call; unsynced calls advance it in bulk
        self.score, self.last = np.zeros(slots), np.zeros(slots)
        self.prefetched: set[int] = set()  # slots filled by prefetch and not requested yet
        self.protected: dict[int, int] = {}  # unused prefetched slot -> the layer it was read for

    def rebuild(self, slots: int, keep: list[int]) -> None:
        """New arrays of `slots` slots; slot i takes the score and last use of old slot keep[i]. Prefetch marks
        are dropped (the kept experts become ordinary entries)."""
        score, last = np.zeros(slots), np.zeros(slots)
        score[: len(keep)], last[: len(keep)] = self.score[keep], self.last[keep]
        self.score, self.last = score, last
        self.prefetched, self.protected = set(), {}

    def advance(self, ticks: int = 1) -> None:
        self.tick += ticks

    def rank(self) -> np.ndarray:
        """Per-slot keep-priority now: higher is more worth keeping."""
        if self.policy == "lru":
            return self.last.copy()
        return self.score * self.decay ** (self.tick - self.last)

    def enter(self, slot: int, score: float = 0.0) -> None:
        """A new expert in `slot` (being read): scored by the uses that follow."""
        self.score[slot], self.last[slot] = score, self.tick

    def enter_prefetch(self, slot: int, layer: int, score: float = 0.0) -> None:
        """A prefetched expert for `layer` in `slot`: protected from other prefetches until `layer` runs."""
        self.enter(slot, score)
        self.prefetched.add(slot)
        self.protected[slot] = layer

    def forget(self, slot: int) -> bool:
        """`slot` was emptied; returns whether it held a prefetch never requested (a wasted read)."""
        wasted = slot in self.prefetched
        self.prefetched.discard(slot)
        self.protected.pop(slot, None)
        return wasted

    def touch(self, slots: np.ndarray, uses: np.ndarray | float = 1.0) -> None:
        """Distinct `slots` used `uses` times each, in this order (slots listed first count as used first). A
        slot touched with 0 uses keeps its rank (LFU: its score is aged to now; LRU: its last use stays)."""
        if not len(slots):
            return
        now = self.tick + np.arange(len(slots)) / len(slots)
        if self.policy == "lfu":
            self.score[slots] = self.score[slots] * self.decay ** (now - self.last[slots]) + uses
            self.last[slots] = now
        else:
            counted = np.broadcast_to(np.asarray(uses) > 0, slots.shape)
            self.last[slots[counted]] = now[counted]

    def used(self, layers: Iterable[int], slots: np.ndarray, uses: np.ndarray | float = 1.0) -> int:
        """Bookkeeping after calls of `layers`: the distinct `slots` were used `uses` times each. Returns how many
        of them were prefetches requested for the first time; prefetches for those layers lose their protection
        (their layer ran without them: ordinary score-0 entries from now on)."""
        slots = np.asarray(slots, dtype=np.int64)
        self.touch(slots, uses)
        first_uses = 0
        if self.prefetched:
            for s in slots.tolist():
                if s in self.prefetched:
                    self.forget(s)
                    first_uses += 1
        if self.protected:
            done = set(layers)
            for slot in [s for s, target in self.protected.items() if target in done]:
                del self.protected[slot]
        return first_uses

    def victims(self, n: int, state: np.ndarray, pinned: np.ndarray, busy: np.ndarray,
                spare_prefetches: bool = True) -> list[int]:
        """Up to `n` slots for new reads, ranking once: free slots first (lowest first), then the lowest-ranked
        READY ones (the caller evicts those); the same slots as `n` one-at-a-time picks. Never a slot that is
        not READY, `pinned`, `busy`, nor (with `spare_prefetches`) a protected prefetch."""
        free = np.flatnonzero(state == FREE)[:n].tolist()
        if len(free) == n:
            return free
        rank = self.rank()
        rank[state != READY] = np.inf  # free slots are taken above; loading ones are never evicted
        rank[pinned] = np.inf
        rank[busy] = np.inf
        if spare_prefetches and self.protected:
            rank[list(self.protected)] = np.inf
        order = np.argsort(rank, kind="stable")[: n - len(free)]  # ties: lowest slot first, as argmin
        return free + [int(s) for s in order if np.isfinite(rank[s])]

    def read_back(self, rank: np.ndarray, head_ready: list[int], tail: list[tuple[object, int]],
                  slots: int) -> list[tuple[object, float]]:
        """On a shrink to `slots` slots: of the `tail` (key, slot) entries whose rows retire, those ranking among
        the best `slots` of head and tail together (per `rank`, taken before the shrink), best first, with
        their rank. They are worth reading back into the remaining rows in place of the worst there."""
        moved = [(key, float(rank[s])) for key, s in tail]
        ranks = sorted([float(rank[s]) for s in head_ready] + [r for _, r in moved], reverse=True)
        threshold = ranks[slots - 1] if len(ranks) > slots else -np.inf
        return [(key, r) for key, r in sorted(moved, key=lambda kr: -kr[1]) if r >= threshold]
