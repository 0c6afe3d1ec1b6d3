"""The streaming expert layer: a drop-in for mlx-lm's SwitchGLU whose expert weights live in the ExpertCache.

mlx-lm's MoE blocks keep their own routing (gate, top-k, score normalisation, shared experts) and call
`switch_mlp(x, indices)`; only that call is replaced. Per call:

0. If every expert of the layer is resident (always, at a 100 % budget once filled), nothing can miss: compute
   with no host synchronisation at all, over the bank rows that hold the layer's experts in order (a preload
   lays them out so: then the graph is exactly mlx-lm's) or through a device-side expert->slot table; the
   routing is read back later, once computed anyway, for the statistics (unsynced.py: lookup, defer, flush).
   The lookup's answer is kept until the cache's epoch changes (an eviction or reallocation), so a resident
   layer costs about what mlx-lm's SwitchGLU costs in Python (bench/results/notebook.md).
   Otherwise:
1. Evaluate the routing indices, together with the prefetcher's predictions for the next layers, and read them
   on the host as one array: one synchronisation per MoE layer.
2. Acquire the distinct experts of the call from the cache (cached ones cost nothing; missing ones are read);
   once the demand reads are queued, the predicted experts of the next layers are queued behind them, so they
   load while this layer computes. Prefill chunks and decode batches alike read each needed expert at most once
   per call. In a verification pass (draft_rows.py) only row 0's experts count as uses now, the drafts' once
   accepted, and only experts two rows agree on are prefetched, at most what one row would read. The output is
   registered with the cache (`guard`), which evaluates it before any slot is refilled.
3. Map expert ids to slot ids and run the same ops SwitchGLU runs (`gather_qmm` / `gather_mm`, activation,
   the same sort for large inputs) over the slot banks. Each output row depends only on its own input row and
   expert, so the result is identical to mlx-lm's.

A failed or quarantined expert (only with a cache quarantine: quarantine.py): `acquire` answers -1 for it; its
positions are computed from another slot and then set to zero, and reported to the quarantine (`_report`), so the
scheduler ends only the requests whose rows were routed to it. No other position's numbers change.

If a call needs more distinct experts than the cache has slots, it runs in waves of at most `capacity` experts,
each wave evaluated before the next one may evict its slots, so the budget holds even when a prompt chunk
touches every expert of a layer.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.switch_layers import SwitchGLU, _gather_sort, _scatter_unsort

from .cache import ExpertCache
from .draft_rows import DraftRows
from .prefetch import Prefetcher
from .probe import Phase

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class StreamingSwitchGLU(nn.Module):
    """SwitchGLU over cached experts. `layer` is the manifest position of this layer's expert file."""

    def __init__(self, layer: int, original: SwitchGLU, cache: ExpertCache, quantization: dict | None,
                 prefetcher: Prefetcher | None = None, num_experts: int = 0, draft_rows: DraftRows | None = None):
        super().__init__()
        # Plain attributes only (ints, strings, objects): nn.Module keeps dicts, tuples and arrays as items,
        # reached through its slower __getattr__ and counted as parameters. This call runs per layer per token.
        self._layer = layer
        self._num_experts = num_experts  # 0: unknown, always synchronise
        self._cache = cache
        self._prefetcher = prefetcher
        self._draft_rows = draft_rows  # open during a verification pass: row 0 is kept, the other rows drafts
        self.activation = original.activation
        q = quantization  # {"bits", "group_size", "mode"} or None for float experts
        self._quantized = q is not None
        self._bits, self._group_size = (q["bits"], q["group_size"]) if q else (0, 0)
        self._mode = q.get("mode", "affine") if q else "affine"
        self._resident = _Resident()  # this layer's resident rows or table, valid while the cache's epoch holds
        self.freeze()

    # -- host side --------------------------------------------------------------------------------------------
    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        # x: [..., D]; indices: [..., k] expert ids -> returns [..., k, D]
        cache, res = self._cache, self._resident
        if res.epoch != cache.epoch:  # looked up once per change of the cache's contents, not per call
            self._look_up()
        if res.args is not None:  # every expert of the layer is resident: no host sync (see ExpertCache.lookup)
            out = self._compute(x, indices if res.table is None else res.table[indices], res.args)
            return cache.defer(self._layer, indices, out)
        return self._synced(x, indices)

    def _look_up(self) -> None:
        # Only a wholly resident layer's answer is kept (until an eviction or reallocation changes the epoch);
        # any other layer asks again next call, as reads landing may complete it.
        cache, res = self._cache, self._resident
        found = cache.lookup(self._layer, self._num_experts) if self._num_experts else None
        res.epoch = cache.epoch if found is not None else -1
        if found is None:
            res.args, res.table = None, None
        elif isinstance(found, int):  # bank rows found..found+E-1 hold experts 0..E-1: mlx-lm's own graph
            res.args, res.table = _projection_args(cache.rows(found, self._num_experts)), None
        else:  # found: [E] slot ids; table[indices]: [..., k] slot ids into the whole banks
            res.args, res.table = self._bank_args(), found

    def _bank_args(self) -> tuple:
        return _projection_args(self._cache.views)  # the whole banks, for slot ids (cheap: not kept)

    def _synced(self, x: mx.array, indices: mx.array) -> mx.array:
        pf, cache = self._prefetcher, self._cache
        probe = cache.probe
        t = probe.now()
        preds = pf.predict(self._layer, x) if pf is not None and pf.depth else []
        idx, predicted = _read_back(indices, preds)  # the one host sync of this layer
        t = probe.lap(Phase.READ_BACK, t)
        experts, inverse = np.unique(idx, return_inverse=True)
        cap = cache.capacity
        if len(experts) > cap:
            return self._compute_in_waves(x, idx, experts, cap)

        drafts = self._draft_rows if self._draft_rows is not None and self._draft_rows.open else None

        def start_prefetch() -> None:
            if pf is not None:
                pf.issue(self._layer, experts, predicted, agreed=drafts is not None)

        probe.lap(Phase.DISTINCT, t)
        uses = drafts.uses(self._layer, idx, experts) if drafts is not None else None
        slots = cache.acquire(self._layer, experts, before_wait=start_prefetch, uses=uses)
        t = probe.now()
        bad = slots < 0  # quarantined experts (only with a cache quarantine, quarantine.py)
        if bad.any():  # compute their positions from any slot, then zero them
            slots = np.where(bad, slots[~bad][0] if not bad.all() else 0, slots)
        out = self._compute(x, mx.array(slots[inverse].reshape(idx.shape).astype(np.uint32)), self._bank_args())
        if bad.any():
            out = mx.where(mx.array(self._report(idx, experts[bad]))[..., None], mx.zeros(1, out.dtype), out)
        cache.guard(out)  # evaluated before any slot it reads can be refilled
        probe.lap(Phase.GRAPH, t)
        return out

    def _compute_in_waves(self, x: mx.array, idx: np.ndarray, experts: np.ndarray, cap: int) -> mx.array:
        # Rows are (token, choice) pairs; each wave computes the rows routed to its experts and scatters them.
        k = idx.shape[-1]
        flat_idx = idx.reshape(-1)  # [T*k]
        x_rows = x.reshape(-1, x.shape[-1])  # [T, D]
        out = None
        for start in range(0, len(experts), cap):
            wave = experts[start : start + cap]
            slots = self._cache.acquire(self._layer, wave)
            bad = slots < 0
            if bad.any():  # quarantined: their rows stay zero
                self._report(idx, wave[bad])
                wave, slots = wave[~bad], slots[~bad]
                if not len(wave):
                    continue
            rows = np.nonzero(np.isin(flat_idx, wave))[0]  # positions in [T*k]
            lut = dict(zip(wave.tolist(), slots.tolist()))
            slot_ids = mx.array(np.array([lut[e] for e in flat_idx[rows].tolist()], dtype=np.uint32))
            # one choice per row: x [n, D], indices [n, 1] -> y [n, 1, D]
            y = self._compute(x_rows[mx.array(rows // k)], slot_ids[:, None], self._bank_args())[:, 0, :]
            if out is None:
                out = mx.zeros((flat_idx.size, y.shape[-1]), dtype=y.dtype)
            out[mx.array(rows)] = y
            mx.eval(out)  # finish this wave before the next acquire may evict its slots
        if out is None:  # every expert of the call is quarantined
            out = mx.zeros((flat_idx.size, x.shape[-1]), dtype=x.dtype)
        return out.reshape(*idx.shape, -1)

    def _report(self, idx: np.ndarray, experts: np.ndarray) -> np.ndarray:
        """Tell the quarantine which positions routed to `experts` (computed as zeros); returns the choice mask
        [..., k]."""
        choice = np.isin(idx, experts)
        assert self._cache.quarantine is not None, "acquire answers -1 only with a quarantine"
        self._cache.quarantine.poisoned(self._layer, experts, choice.any(axis=-1))
        return choice

    # -- device side (mirrors mlx_lm SwitchGLU.__call__) ----------------------------------------------------------
    def _compute(self, x: mx.array, slot_idx: mx.array, args: tuple) -> mx.array:
        x = mx.expand_dims(x, (-2, -3))  # [..., 1, 1, D]
        do_sort = slot_idx.size >= 64  # the same rule as SwitchGLU: sort rows by expert for large inputs
        idx, inv_order = slot_idx, None
        if do_sort:
            x, idx, inv_order = _gather_sort(x, slot_idx)
        gate, up, down = args  # PROJECTIONS order
        x_up = self._linear(up, x, idx, do_sort)
        x_gate = self._linear(gate, x, idx, do_sort)
        x = self._linear(down, self.activation(x_up, x_gate), idx, do_sort)
        if do_sort:
            x = _scatter_unsort(x, inv_order, slot_idx.shape)
        return x.squeeze(-2)  # [..., k, D]

    def _linear(self, proj: tuple, x: mx.array, idx: mx.array, sorted_indices: bool) -> mx.array:
        weight, scales, biases, bias = proj
        if self._quantized:
            y = mx.gather_qmm(x, weight, scales, biases, rhs_indices=idx, transpose=True,
                              group_size=self._group_size, bits=self._bits, mode=self._mode,
                              sorted_indices=sorted_indices)
        else:
            y = mx.gather_mm(x, weight.swapaxes(-1, -2), rhs_indices=idx, sorted_indices=sorted_indices)
        if bias is not None:
            y = y + mx.expand_dims(bias[idx], -2)
        return y


def _read_back(indices: mx.array, preds: list[tuple[int, mx.array]]) -> tuple[np.ndarray, list]:
    """Evaluate the routing and the predictions and read them to the host as one array: on a GPU each read-back
    of an array has a fixed cost, larger than that of the values (bench/results/notebook.md)."""
    if not preds:
        return np.array(indices).astype(np.int64), []
    parts = [indices.reshape(-1).astype(mx.uint32)] + [p.reshape(-1).astype(mx.uint32) for _, p in preds]
    flat = np.array(mx.concatenate(parts)).astype(np.int64)
    cuts = np.cumsum([part.size for part in parts])
    return flat[: cuts[0]].reshape(indices.shape), [(j, flat[a:b]) for (j, _), a, b in zip(preds, cuts, cuts[1:])]


class _Resident:
    """A layer's answer from ExpertCache.lookup, kept until the cache's epoch changes: `args` (the projections'
    arrays to compute over, or None: not wholly resident, synchronise) and `table` (expert->slot ids, or None:
    the rows hold the experts in order)."""

    __slots__ = ("epoch", "args", "table")

    def __init__(self) -> None:
        self.epoch, self.args, self.table = -1, None, None


def _projection_args(v: dict[str, mx.array]) -> tuple:
    """(weight, scales, biases, bias) per projection, in PROJECTIONS order, from a dict of bank arrays."""
    return tuple((v[f"{p}.weight"], v.get(f"{p}.scales"), v.get(f"{p}.biases"), v.get(f"{p}.bias"))
                 for p in PROJECTIONS)
