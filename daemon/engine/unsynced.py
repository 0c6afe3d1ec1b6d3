"""Layers whose experts are all resident: served with no host synchronisation (part of ExpertCache).

A layer call whose experts are all in the cache cannot miss, so nothing needs the routing on the host before the
compute: `lookup` gives the streaming layer the bank rows that hold the layer's experts in expert order (a preload
lays them out so, and then the graph is exactly mlx-lm's SwitchGLU over those rows), or else a device-side
expert->slot table the routing indices are mapped through. The call's lazy routing indices and output go to
`defer`; `flush` later reads the routing back from steps already computed and does the bookkeeping a synced call
does in `acquire` (hits, LFU/LRU touches, usage counts), vectorised over many steps. Reading back is the cost on a GPU
(~0.3 ms per array on CUDA, whatever its size; 13 arrays per step cost more than the step): every GATHER_STEPS
steps, the first call of a new step concatenates the routing of the steps before it on the device, made part of
that step's graph with `mx.depends` so it is computed with it and enqueues nothing of its own, and flush reads
back one array per block. (Concatenating at flush time instead enqueues an op behind the step in flight and
waits for it: a pipeline bubble.) Exactness: the table of a layer is dropped when one of its experts is evicted, and
an eviction first evaluates every deferred output (ExpertCache._evict -> _settle_graphs), so no unfinished call
ever reads a refilled slot.

This is a mixin of ExpertCache (cache.py), split out to keep that file readable: it uses the cache's slot state
(_where, _ready, _futures, _luts, _tables, _slices, _deferred, ...) and its bookkeeping, and runs on the
thread that owns MLX.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


GATHER_STEPS = 8  # steps per read-back block of unsynced routing (see flush)


class _Step:
    """The unsynced calls of one model step: (layer, lazy indices, output) each; `gathered` once its indices are
    in a block, `block` the (layers, sizes, lazy flat indices) of earlier steps gathered with this one."""

    __slots__ = ("calls", "gathered", "block")

    def __init__(self) -> None:
        self.calls: list[tuple[int, mx.array, mx.array]] = []
        self.gathered = False
        self.block: tuple[np.ndarray, np.ndarray, mx.array] | None = None


def _gather(steps: list[_Step]) -> tuple[np.ndarray, np.ndarray, mx.array]:
    """Mark `steps` gathered; their calls' layers, index counts, and indices concatenated (lazily, on the
    device): one array to read back for all of them."""
    calls = [(layer, indices) for s in steps for layer, indices, _ in s.calls]
    for s in steps:
        s.gathered = True
    layers = np.array([layer for layer, _ in calls], dtype=np.int64)
    sizes = np.array([indices.size for _, indices in calls], dtype=np.int64)
    return layers, sizes, mx.concatenate([indices.reshape(-1) for _, indices in calls])


class ResidentLayers:
    """The no-sync path of ExpertCache; see the module docstring."""

    def lookup(self, layer: int, num_experts: int) -> int | mx.array | None:
        """If every expert of `layer` is resident: the first slot of the run of slots that holds them in expert
        order (a preload lays layers out so), or else the expert->slot table ([num_experts] uint32); None if not.

        A layer whose experts are all resident cannot miss, so its call needs no host synchronisation: the
        streaming layer computes over the run's bank rows (`rows`) with the routing indices as they are, exactly
        mlx-lm's graph, or maps them to slots on the device through the table; either way it hands the lazy
        indices and output to `defer`. The table stays valid until one of the layer's experts is evicted, and an
        eviction first evaluates every deferred (and guarded) output, so no unfinished call can read a reused
        slot."""
        if self._futures:
            self._reap()
        if not self.unsynced or self._ready.get(layer, 0) < num_experts:
            return None
        lut = self._luts.get(layer)
        if lut is None:
            table = np.array([self._where[(layer, e)] for e in range(num_experts)], dtype=np.uint32)
            start = int(table[0])
            in_order = np.array_equal(table, np.arange(start, start + num_experts))
            lut = self._luts[layer] = start if in_order else mx.array(table)
            self._tables[layer] = table.astype(np.int64)
        return lut

    def rows(self, start: int, n: int) -> dict[str, mx.array]:
        """Bank rows [start, start+n) of every tensor, as views sharing the banks' memory (made once)."""
        key = (start, n)
        if key not in self._slices:
            self._slices[key] = {k: v[start : start + n] for k, v in self.views.items()}
            mx.eval(list(self._slices[key].values()))
        return self._slices[key]

    def defer(self, layer: int, indices: mx.array, output: mx.array) -> mx.array:
        """Note an unsynced call's lazy routing indices and output, and return the output to use in its place
        (the same values, sometimes with a dependency added, see `_gather`). The output is evaluated before any
        slot is reused; the statistics are taken by `flush`, once computed."""
        if not self._deferred or layer <= self._last_layer:  # a new step (or batch step) began
            self._deferred.append(_Step())
            loose = [s for s in self._deferred[:-1] if not s.gathered]
            if len(loose) >= GATHER_STEPS:
                self._deferred[-1].block = block = _gather(loose)
                output = mx.depends(output, block[2])  # the gather is computed with this step
        self._last_layer = layer
        self._deferred[-1].calls.append((layer, indices, output))
        if len(self._deferred) > 3 * GATHER_STEPS:  # bounded: loose steps are gathered every GATHER_STEPS
            self.flush(keep=2, force=False)
        return output

    def flush(self, keep: int = 0, force: bool = True) -> None:
        """Count the unsynced calls of all steps but the last `keep` (hits, policy, usage). MLX thread.

        Reading routing back waits for it to be computed, so a pipelined loop keeps the step in flight
        (keep=1). Steps are read back in blocks that were gathered on the device as part of a later step
        (`_gather`): one read-back per GATHER_STEPS steps, as each costs ~0.3 ms on a GPU. Steps not yet in a
        block are left for a later flush unless `force`, which gathers them now: one read that waits for the
        step in flight, if any (a pipeline bubble; the daemon forces at a request's end only)."""
        n = len(self._deferred) - keep
        if n <= 0:
            return
        old, self._deferred = self._deferred[:n], self._deferred[n:]
        blocks = [s.block for s in old if s.block is not None]
        loose = [s for s in old if not s.gathered]
        for s in old:
            s.block = None
        if loose and force:
            blocks.append(_gather(loose))
        elif loose:
            self._deferred[:0] = loose  # the newest steps but `keep`: gathered at a later step's start
        if blocks:
            flat = np.concatenate([np.array(cat).reshape(-1) for _, _, cat in blocks]).astype(np.int64)
            self._count_calls(np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]), flat)

    def _count_calls(self, layers: np.ndarray, sizes: np.ndarray, flat: np.ndarray) -> None:
        """Bookkeeping of unsynced calls, vectorised over many steps (it runs for every generated token):
        call i of layer layers[i] routed to flat[sum(sizes[:i]) : sum(sizes[:i+1])]."""
        self._tick += len(layers)
        width = int(flat.max()) + 1 if flat.size else 1
        keys = np.unique(np.repeat(np.arange(len(layers)), sizes) * width + flat)  # distinct experts per call
        call, exp = np.divmod(keys, width)
        lay = layers[call]
        used = []
        for layer in np.unique(layers).tolist():
            e = exp[lay == layer]  # repeats: one per call that used it
            table = self._tables.get(layer)
            if table is not None:
                used.append(table[e])
            else:  # evicted since: whatever of it is still resident
                used.append(np.array([s for s in (self._where.get((layer, int(x)), -1) for x in e) if s >= 0],
                                     dtype=np.int64))
            distinct, calls = np.unique(e, return_counts=True)
            self._count_usage(layer, distinct, calls)
        slots, uses = np.unique(np.concatenate(used), return_counts=True) if used else (np.zeros(0, np.int64), 1.0)
        self._record_use(layers.tolist(), slots, uses)
        with self._lock:
            self._stats.hits += len(keys)
            self._stats.unsynced += len(layers)
