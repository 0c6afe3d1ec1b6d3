"""Deferred calls: the layer calls served with no host synchronisation, counted later from computed steps.

A layer call whose experts are all in the cache cannot miss, so nothing needs the routing on the host before the
compute (ExpertCache.lookup gives the streaming layer the rows or expert->slot table to compute over). The call's
lazy routing indices and output go to `defer`; `flush` later reads the routing back from steps already computed
and hands it to the `count` callback the owner gave (ExpertCache counts hits, policy touches and usage there,
vectorised over many steps). Reading back is the cost on a GPU (a fixed cost per array, whatever its size; see
bench/results/notebook.md): every GATHER_STEPS steps, the first call of a new step concatenates the routing of the
steps before it on the device, made part of that step's graph with `mx.depends` so it is computed with it and
enqueues nothing of its own, and flush reads back one array per block. (Concatenating at flush time instead
enqueues an op behind the step in flight and waits for it: a pipeline bubble.)

Exactness is the owner's part: before any slot is refilled it evaluates every deferred output (`outputs`).
With `bookkeeping` off, `defer` records nothing (a benchmark switch: what the bookkeeping costs). The statistics
then miss those calls and their outputs are not held for the owner, so it is for a budget that holds every
expert (nothing is ever refilled). Runs on the thread that owns MLX.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import numpy as np


GATHER_STEPS = 8  # steps per read-back block of unsynced routing (see flush)

# count(layers, sizes, flat): call i of layer layers[i] routed to flat[sum(sizes[:i]) : sum(sizes[:i+1])]
Count = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def routed_per_layer(layers: np.ndarray, sizes: np.ndarray, flat: np.ndarray) -> tuple[int, list]:
    """From a `count` callback's arguments: the number of distinct (call, expert) pairs, and per layer (in
    ascending order) the experts its calls routed to, each expert once per call that used it."""
    width = int(flat.max()) + 1 if flat.size else 1
    keys = np.unique(np.repeat(np.arange(len(layers)), sizes) * width + flat)  # distinct experts per call
    call, exp = np.divmod(keys, width)
    lay = layers[call]
    return len(keys), [(layer, exp[lay == layer]) for layer in np.unique(layers).tolist()]


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


class DeferredCalls:
    """The unsynced calls not yet counted, by step; see the module docstring."""

    def __init__(self, count: Count, bookkeeping: bool = True):
        self._count = count
        self.bookkeeping = bookkeeping
        self._steps: list[_Step] = []
        self._last_layer = -1

    def __len__(self) -> int:
        """Steps whose calls are not counted yet."""
        return len(self._steps)

    def outputs(self) -> list[mx.array]:
        """The lazy outputs of every call not yet counted (the owner evaluates them before reusing a slot)."""
        return [out for step in self._steps for _, _, out in step.calls]

    def defer(self, layer: int, indices: mx.array, output: mx.array) -> mx.array:
        """Note an unsynced call's lazy routing indices and output, and return the output to use in its place
        (the same values, sometimes with a dependency added, see `_gather`)."""
        if not self.bookkeeping:
            return output
        if not self._steps or layer <= self._last_layer:  # a new step (or batch step) began
            self._steps.append(_Step())
            loose = [s for s in self._steps[:-1] if not s.gathered]
            if len(loose) >= GATHER_STEPS:
                self._steps[-1].block = block = _gather(loose)
                output = mx.depends(output, block[2])  # the gather is computed with this step
        self._last_layer = layer
        self._steps[-1].calls.append((layer, indices, output))
        if len(self._steps) > 3 * GATHER_STEPS:  # bounded: loose steps are gathered every GATHER_STEPS
            self.flush(keep=2, force=False)
        return output

    def flush(self, keep: int = 0, force: bool = True) -> None:
        """Count the calls of all steps but the last `keep`.

        Reading routing back waits for it to be computed, so a pipelined loop keeps the step in flight
        (keep=1). Steps are read back in blocks that were gathered on the device as part of a later step
        (`_gather`): one read-back per GATHER_STEPS steps. Steps not yet in a block are left for a later flush
        unless `force`, which gathers them now: one read that waits for the step in flight, if any (a pipeline
        bubble; the daemon forces at a request's end only)."""
        n = len(self._steps) - keep
        if n <= 0:
            return
        old, self._steps = self._steps[:n], self._steps[n:]
        blocks = [s.block for s in old if s.block is not None]
        loose = [s for s in old if not s.gathered]
        for s in old:
            s.block = None
        if loose and force:
            blocks.append(_gather(loose))
        elif loose:
            self._steps[:0] = loose  # the newest steps but `keep`: gathered at a later step's start
        if blocks:
            flat = np.concatenate([np.array(cat).reshape(-1) for _, _, cat in blocks]).astype(np.int64)
            self._count(np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks]), flat)
