"""Lossless speculative decoding: draft K tokens, verify them in one forward pass of the target, keep what matches.

A verification pass runs the target model once on [last token] + K drafts (K+1 rows), so each streaming MoE layer
reads the union of the rows' experts once and synchronises once for all of them. At row r the target's own token is
chosen (argmax, or a keyed sample: the token at generated position i always uses the key from (seed, i)); the
longest draft prefix equal to those choices is accepted, and the pass emits the accepted drafts plus the target's
token after them (1..K+1 tokens). The KV cache is trimmed by the rejected count, so it holds exactly the context.
Drafts are point masses, which makes this standard speculative sampling with q = one-hot(draft): the output is
token for token the output without speculation (same greedy choice, same keyed draw). `speculative_sample` is the
general rule for a draft distribution q (accept with min(1, p/q), else sample norm(max(p - q, 0))).

API, for the engine's loop (generate.py) and the daemon's scheduler alike (one request, its own KV cache):

    picker = make_picker(temp, top_p, top_k, min_p, seed)        # GreedyPicker or KeyedPicker
    spec = Speculator(config, drafter, rows=engine.draft_rows)   # drafters.make_drafter(...), AdaptiveK inside
    spec.start(prompt_ids + [first_token])                       # the context; its last token is not yet cached
    tokens = spec.step(model, cache, picker, index, limit)       # one pass: 1..min(K+1, limit) tokens emitted;
                                                                 # index = generated tokens so far (key of row 0)
    k = spec.choose(limit); spec.step(..., k=k)                  # the same, K decided first (0: a plain step,
    spec.plain(token, seconds)                                   #   which the caller may run pipelined)
    spec.draft_tokens, spec.accepted_tokens, spec.passes         # counters (plain steps count as passes)

The cache must be trimmable: check `cache_trimmable(cache)` first, and decode plainly where it is not (a pass's
rejected rows could not be taken back).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_sampler

from .keyed import KeyedSampler
from ..speculation import SpeculationConfig
from .adaptive import AdaptiveK
from .draft_rows import DraftRows
from .drafters import Drafter

__all__ = ["AdaptiveK", "GreedyPicker", "KeyedPicker", "Picker", "Speculator", "cache_trimmable", "make_picker",
           "speculative_sample", "verify"]


class Picker(Protocol):
    def __call__(self, logprobs: mx.array, first_index: int) -> mx.array: ...


class GreedyPicker:
    """The argmax of each row (mlx-lm's greedy sampler)."""

    greedy = True

    def __call__(self, logprobs: mx.array, first_index: int) -> mx.array:
        # logprobs: [R, vocab] -> [R]
        return mx.argmax(logprobs, axis=-1)


class KeyedPicker:
    """mlx-lm's sampler, drawing row r (generated position first_index + r) with the key from (seed, position) only,
    as the daemon's make_job_sampler does: a token never depends on how many rows a pass had."""

    greedy = False

    def __init__(self, sampler: Callable[[mx.array], mx.array], seed: int):
        self.sampler, self.seed = sampler, seed
        self._keyed = KeyedSampler(sampler, seed)

    def __call__(self, logprobs: mx.array, first_index: int) -> mx.array:
        rows = []
        for r in range(logprobs.shape[0]):
            self._keyed.index = first_index + r
            rows.append(self._keyed(logprobs[r:r + 1]).reshape(1))
        return mx.concatenate(rows)

    def counting_sampler(self) -> KeyedSampler:
        """An mlx-lm sampler (one [1, vocab] row per call) keyed by its call count from 0: the same keyed draws in
        mlx-lm's own loop, without speculation."""
        return KeyedSampler(self.sampler, self.seed)


def make_picker(temp: float = 0.0, top_p: float = 0.0, top_k: int = 0, min_p: float = 0.0,
                seed: int = 0) -> GreedyPicker | KeyedPicker:
    """Greedy at temperature 0, else mlx-lm's make_sampler keyed by (seed, position)."""
    if temp == 0:
        return GreedyPicker()
    return KeyedPicker(make_sampler(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p), seed)


def cache_trimmable(cache: Sequence[Any]) -> bool:
    """Whether every layer's KV cache can be rewound (speculation needs it; e.g. a rotating cache cannot)."""
    return bool(cache) and can_trim_prompt_cache(list(cache))


def verify(model: nn.Module, cache: list[Any], last: int, drafts: Sequence[int], pick: Picker,
           first_index: int, rows: DraftRows | None = None) -> tuple[list[int], int]:
    """One verification pass; returns (emitted tokens, accepted draft count).

    Runs the target on [last] + drafts in one forward call, picks the target's token per row, accepts the longest
    matching draft prefix (n), trims the cache by len(drafts) - n and emits drafts[:n] + [target token at row n].
    With no drafts this is a plain decoding step. `rows`: the engine's DraftRows (draft_rows.py), told of the
    pass so the expert cache credits only the drafts that were accepted.
    """
    x = mx.array([[int(last), *(int(d) for d in drafts)]], dtype=mx.uint32)  # [1, R], R = K + 1
    rows = rows if rows is not None and drafts else None
    if rows is not None:
        rows.begin()
    try:
        logits = model(x, cache=cache)[0]  # [R, vocab]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        targets = pick(logprobs, first_index).tolist()  # [R]
    except BaseException:
        if rows is not None:
            rows.abort()
        raise
    n = 0
    while n < len(drafts) and targets[n] == int(drafts[n]):
        n += 1
    if rows is not None:
        rows.end(n)
    if len(drafts) > n:
        trim_prompt_cache(cache, len(drafts) - n)
    return [int(d) for d in drafts[:n]] + [int(targets[n])], n


def speculative_sample(p: mx.array, q: mx.array, drafts: mx.array, key: mx.array) -> tuple[mx.array, mx.array]:
    """Standard speculative sampling for a general draft distribution, one position per row.

    Args:
        p: [B, V] the target's probabilities; q: [B, V] the draft's; drafts: [B] tokens drawn from q.
        key: an MLX random key.
    Returns:
        (tokens [B], accepted [B] bool): the draft where accepted (with probability min(1, p/q) at the draft),
        else a token from norm(max(p - q, 0)); each row's token is distributed as p.
    """
    k_accept, k_resample = mx.random.split(key)
    rows = mx.arange(p.shape[0])
    pd, qd = p[rows, drafts], q[rows, drafts]
    ratio = mx.where(qd > 0, pd / mx.maximum(qd, 1e-30), 1.0)
    accepted = mx.random.uniform(shape=pd.shape, key=k_accept) < mx.minimum(ratio, 1.0)
    residual = mx.maximum(p - q, 0.0)
    mass = residual.sum(axis=-1, keepdims=True)
    # p == q leaves no residual; such a row is always accepted, any distribution will do
    residual = mx.where(mass > 0, residual / mx.maximum(mass, 1e-30), p)
    resampled = mx.random.categorical(mx.log(mx.maximum(residual, 1e-38)), key=k_resample)
    return mx.where(accepted, drafts, resampled), accepted


class Speculator:
    """One request's speculation: its drafter, its adaptive-K controller and its counters.

    Raises (on construction): ValueError for a config whose mode is "off".
    """

    def __init__(self, config: SpeculationConfig, drafter: Drafter, *,
                 clock: Callable[[], float] = time.perf_counter, rows: DraftRows | None = None):
        if not config.enabled:
            raise ValueError("a Speculator needs speculation mode 'lookup' or 'draft', not 'off'")
        self.config, self.drafter, self.clock = config, drafter, clock
        self.rows = rows  # the engine's DraftRows: passes tell the expert cache which rows are drafts
        self.controller = AdaptiveK(config.max_draft, adaptive=config.adaptive)
        self.draft_tokens = self.accepted_tokens = self.passes = 0

    def start(self, context: Sequence[int]) -> None:
        """Follow a request whose context (prompt + generated tokens) is given; its last token is not cached."""
        if not context:
            raise ValueError("speculation needs a context of at least one token")
        self.drafter.start(context)
        self.last = int(context[-1])

    def choose(self, limit: int) -> int:
        """The adaptive K for the next pass, at most limit - 1 (0: a plain step). Each call is one decision; a
        drafter that has nothing to propose now (kind 0) gets 0 without asking the controller."""
        kind = self._kind()
        if kind == 0 or limit <= 1:
            return 0
        return min(self.controller.choose(kind), limit - 1)

    def _kind(self):
        kind = getattr(self.drafter, "kind", None)
        return kind() if kind is not None else None

    def step(self, model: nn.Module, cache: list[Any], pick: Picker, index: int, limit: int,
             k: int | None = None) -> list[int]:
        """One pass (draft, verify, trim, tell the drafter); returns the 1..min(K+1, limit) emitted tokens, the
        last of which is not in the cache yet. `index`: tokens generated so far (the key index of row 0); `limit`:
        the most tokens the request may still emit (>= 1); `k`: a K already chosen (by `choose`), else chosen now."""
        t0 = self.clock()
        kind = self._kind()
        k = self.choose(limit) if k is None else min(k, max(0, limit - 1))
        drafts = self.drafter.propose(k) if k > 0 else []
        tokens, accepted = verify(model, cache, self.last, drafts, pick, index, self.rows)
        self.drafter.accept(tokens)
        self.controller.record(len(drafts), accepted, self.clock() - t0, kind)
        self.passes += 1
        self.draft_tokens += len(drafts)
        self.accepted_tokens += accepted
        self.last = tokens[-1]
        return tokens

    def plain(self, token: int, seconds: float) -> None:
        """A plain step made elsewhere (e.g. pipelined, as mlx-lm's loop does) emitted `token` in `seconds`."""
        self.drafter.accept([token])
        self.controller.record(0, 0, seconds)
        self.passes += 1
        self.last = int(token)
