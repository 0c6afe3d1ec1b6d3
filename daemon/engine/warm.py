"""Warm cache across restarts: expert usage counts kept while running, saved atomically, and a background
refill at start.

`UsageCounts` is what the cache counts into: every use of an expert (synced or not) adds one to its count.

The file (JSON) holds, for one store, the use counts per (layer position, expert), a fingerprint of the store (so
counts from another store are ignored, with a warning), and the format version:

    {"format": "moed-expert-usage", "version": 1, "store": FINGERPRINT, "usage": [[layer, expert, count], ...]}

At start, `warm_cache` queues reads of the most used experts first, up to the cache's capacity, at the lowest
read priority: it only claims slots and returns, so readiness is not delayed, and demand reads overtake it.
The loaded counts (halved, so old habits fade) seed the new run's statistics, so each save covers history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from ..store.format import Manifest
from .sink import WARM


class Warmable(Protocol):
    """What a warm start needs of the cache (ExpertCache)."""

    @property
    def capacity(self) -> int: ...

    def seed_usage(self, usage: dict[tuple[int, int], float]) -> None: ...

    def prefetch(self, layer: int, experts: list[int], *, priority: int = ..., limit: int | None = ...,
                 score: float = ...) -> int: ...


FORMAT = "moed-expert-usage"
VERSION = 1
log = logging.getLogger(__name__)


class UsageCounts:
    """Use counts per (layer, expert) since start (plus any seeded from a previous run); numpy per layer."""

    def __init__(self) -> None:
        self._counts: dict[int, np.ndarray] = {}  # layer -> count per expert id

    def add(self, layer: int, experts: np.ndarray, amount: np.ndarray | float = 1.0) -> None:
        """Add `amount` to the counts of `experts` (distinct ids) of `layer`."""
        experts = np.asarray(experts, dtype=np.int64)
        if not experts.size:
            return
        counts = self._counts.get(layer)
        if counts is None or len(counts) <= experts.max():
            grown = np.zeros(int(experts.max()) + 1)
            if counts is not None:
                grown[: len(counts)] = counts
            counts = self._counts[layer] = grown
        counts[experts] += amount

    def seed(self, usage: dict[tuple[int, int], float]) -> None:
        """Start from a previous run's counts (see warm_cache)."""
        for (layer, expert), count in usage.items():
            self.add(layer, np.array([expert]), count)

    def as_dict(self) -> dict[tuple[int, int], float]:
        """The non-zero counts by (layer, expert)."""
        return {(layer, e): float(counts[e]) for layer, counts in self._counts.items()
                for e in np.flatnonzero(counts).tolist()}


def fingerprint(manifest: Manifest) -> str:
    """Identifies a store's experts: their layout and checksums."""
    h = hashlib.sha256(json.dumps(manifest.layout.to_json(), sort_keys=True).encode())
    for layer in manifest.layers:
        h.update(f"{layer.index}:{layer.num_experts}:{layer.checksums}".encode())
    return h.hexdigest()[:32]


def save_usage(path: str | os.PathLike[str], manifest: Manifest, usage: dict[tuple[int, int], float]) -> None:
    """Write the usage file atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, "store": fingerprint(manifest),
           "usage": [[layer, expert, round(count, 4)] for (layer, expert), count in sorted(usage.items())]}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_usage(path: str | os.PathLike[str], manifest: Manifest) -> dict[tuple[int, int], float]:
    """Usage counts saved for this store, or {} (with a warning) if the file is missing, corrupt or for
    another store: a warm start is an optimisation and never stops the daemon."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
        if doc.get("store") != fingerprint(manifest):
            log.warning("usage file %s is for another store; starting cold", path)
            return {}
        n = len(manifest.layers)
        return {(int(layer), int(e)): float(c) for layer, e, c in doc["usage"]
                if 0 <= int(layer) < n and 0 <= int(e) < manifest.layers[int(layer)].num_experts}
    except (ValueError, KeyError, TypeError) as e:
        log.warning("usage file %s is unreadable (%s); starting cold", path, e)
        return {}


def warm_cache(cache: Warmable, usage: dict[tuple[int, int], float]) -> int:
    """Queue background reads of the most used experts, up to capacity; returns how many were queued."""
    cache.seed_usage({k: c / 2 for k, c in usage.items()})
    started = 0
    for (layer, expert), count in sorted(usage.items(), key=lambda kv: -kv[1])[: cache.capacity]:
        started += cache.prefetch(layer, [expert], priority=WARM, score=count / 2)
    return started
