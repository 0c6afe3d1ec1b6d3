"""Speculative expert prefetch: predict the experts of the next `depth` MoE layers and start reading them.

Prediction, architecture-agnostic wherever the MoE block exposes its router as `gate` (an nn.Linear or
QuantizedLinear) with `top_k` / `num_experts_per_tok`: at layer l, the MoE input x_l goes through the routers of
layers l+1..l+depth (the "adjacent-layer gate input" predictor; residual streams change little between layers).
Blocks with another kind of router fall back to temporal reuse: the experts that layer routed to last time.

The predicted indices are evaluated in the same host synchronisation as layer l's own routing, so prefetch adds
no sync; the reads run on the reader threads at prefetch priority while layer l computes, and the cache never
evicts what the current step needs to make room for them.

Accuracy is counted as recall: of the experts a layer actually used, how many had been predicted for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .cache import ExpertCache


@dataclass
class PrefetchStats:
    predicted: int = 0  # experts predicted (distinct per layer and call)
    needed: int = 0  # experts actually used by layers that had a prediction
    correct: int = 0  # of those, how many had been predicted

    @property
    def accuracy(self) -> float:
        return self.correct / self.needed if self.needed else 0.0


@dataclass
class Router:
    gate: nn.Module
    k: int


def find_router(block: nn.Module, config: dict) -> Router | None:
    """The router of an MoE block if it is a plain linear gate (logits over experts), else None."""
    gate = getattr(block, "gate", None)
    if not isinstance(gate, (nn.Linear, nn.QuantizedLinear)):
        return None
    k = getattr(block, "top_k", None) or getattr(block, "num_experts_per_tok", None) or \
        config.get("num_experts_per_tok")
    return Router(gate, int(k)) if k else None


class Prefetcher:
    """Owned by the engine; StreamingSwitchGLU calls `predict` then `issue` once per MoE layer call."""

    def __init__(self, cache: ExpertCache, routers: list[Router | None], depth: int = 1):
        self.cache, self.routers = cache, routers
        self.depth = depth
        self._last_used: list[np.ndarray | None] = [None] * len(routers)
        self._pending: dict[int, set[int]] = {}
        self._lock = threading.Lock()
        self._stats = PrefetchStats()

    def set_depth(self, depth: int) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.depth = depth

    def predict(self, pos: int, x: mx.array) -> list[tuple[int, mx.array]]:
        """Lazy top-k predictions [..., k] for the layers after `pos` that have a linear router."""
        out = []
        for j in range(pos + 1, min(pos + 1 + self.depth, len(self.routers))):
            r = self.routers[j]
            if r is not None:
                logits = r.gate(x)  # [..., E]
                out.append((j, mx.argpartition(-logits, kth=r.k - 1, axis=-1)[..., : r.k]))
        return out

    def issue(self, pos: int, used: np.ndarray, predictions: list[tuple[int, np.ndarray]],
              agreed: bool = False) -> None:
        """Record what layer `pos` used (accuracy, temporal fallback) and start reads for the predictions.

        `agreed` (a verification pass, draft_rows.py): per layer only the experts at least two rows predict, most
        votes first, at most the router's top-k: no more than a plain step would read, and not what a single
        row (often a draft then rejected) alone predicts."""
        self._score(pos, used)
        self._last_used[pos] = used
        if self.depth == 0:
            return
        predicted = {j: _agreed(p, self.routers[j].k) if agreed else np.unique(p) for j, p in predictions}
        for j in range(pos + 1, min(pos + 1 + self.depth, len(self.routers))):
            if j not in predicted and self._last_used[j] is not None:
                predicted[j] = self._last_used[j]  # temporal fallback for routers we cannot run
        room = self.cache.capacity - len(used)  # never crowd out the current layer's experts
        for j, experts in sorted(predicted.items()):
            self._pending[j] = set(experts.tolist())
            if room > 0:
                room -= self.cache.prefetch(j, experts, limit=room)
        with self._lock:
            self._stats.predicted += sum(len(e) for e in predicted.values())

    def _score(self, pos: int, used: np.ndarray) -> None:
        guess = self._pending.pop(pos, None)
        if guess is None:
            return
        with self._lock:
            self._stats.needed += len(used)
            self._stats.correct += sum(1 for e in used.tolist() if e in guess)

    def stats(self) -> PrefetchStats:
        with self._lock:
            return PrefetchStats(**self._stats.__dict__)


def _agreed(flat: np.ndarray, k: int) -> np.ndarray:
    """Of predictions [rows * k] (row by row), the experts at least two rows predicted, at most k: those most rows
    predicted first, ties to the earlier row."""
    experts, first, counts = np.unique(flat, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # by count (descending), then by first appearance
    return experts[order[counts[order] >= 2][:k]]
