"""The engine's speculative decoding loop: token ids from a prompt, by prefill, then verification passes.

    tokens = speculative_tokens(model, ids, max_tokens, picker, speculator, stats)   # an iterator of token ids

1. Prefill as mlx-lm's generate_step does: the prompt but its last token in chunks of PREFILL_STEP, then one step on
   the last token picks the first generated token (position 0).
2. Then, per decision of the speculator's adaptive K: K > 0 is one verification pass (speculative.py), emitting
   1..K+1 tokens; K = 0 starts a run of plain steps pipelined as mlx-lm's loop is (the next step's graph is built and
   queued before the current token is read back), which lasts while K stays 0: so a request that has backed off
   decodes at plain speed. Without a speculator (a cache that cannot be rewound) every step is such a plain step.

The token at generated position i is always picked with the picker at index i, whatever the pass it falls in.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import make_prompt_cache

from .speculative import Picker, Speculator, verify

PREFILL_STEP = 2048  # mlx-lm's generate_step default: the same chunks, so the same prefill numerics


class LoopStats:
    """What the loop counts (a GenerationStats has the same fields)."""

    draft_tokens = accepted_tokens = verify_passes = 0


def speculative_tokens(model: nn.Module, ids: list[int], max_tokens: int, picker: Picker,
                       make_speculator: Callable[[list[Any]], Speculator | None], stats: Any = None,
                       clock: Callable[[], float] = time.perf_counter) -> Iterator[int]:
    """Generated token ids: at most max_tokens (no limit if negative); the caller stops at end of sequence.

    make_speculator(cache) gives the request's Speculator for its new KV cache, or None to decode plainly.
    `stats` (a GenerationStats or LoopStats) gets draft_tokens, accepted_tokens and verify_passes (forward passes
    that emitted tokens, the one ending prefill included) as they change.
    """
    stats = stats if stats is not None else LoopStats()
    limit = max_tokens if max_tokens >= 0 else 1 << 62
    cache = make_prompt_cache(model)
    with mx.stream(generation_stream):
        prefill(model, cache, ids[:-1])
        (first,), _ = verify(model, cache, ids[-1], [], picker, 0)
    stats.verify_passes = 1
    spec = make_speculator(cache)
    if spec is not None:
        spec.start(ids + [first])
    yield first
    done, last = 1, first
    k = spec.choose(limit - done) if spec is not None else 0
    while done < limit:
        if k == 0:
            run = _plain_run(model, cache, last, picker, done, limit, spec, clock)
            while True:
                try:
                    last = next(run)
                except StopIteration as stop:
                    k = stop.value
                    break
                done += 1
                stats.verify_passes += 1
                yield last
            continue
        with mx.stream(generation_stream):
            out = spec.step(model, cache, picker, done, limit - done, k=k)
        stats.verify_passes += 1
        stats.draft_tokens, stats.accepted_tokens = spec.draft_tokens, spec.accepted_tokens
        for t in out:
            yield t
        done, last = done + len(out), out[-1]
        k = spec.choose(limit - done) if done < limit else 0


def _plain_run(model: nn.Module, cache: list[Any], last: int, picker: Picker, index: int, limit: int,
               spec: Speculator | None, clock: Callable[[], float]):
    """Plain steps, each queued before the previous token is read back, while the speculator keeps choosing K = 0.
    Yields token ids (positions index, index + 1, ...); returns the K > 0 that ends the run (0 at the limit)."""
    with mx.stream(generation_stream):
        pending = _step(model, cache, mx.array([last], dtype=mx.uint32), picker, index)
    mx.async_eval(pending)
    tic = clock()
    while True:
        index += 1
        k = 0 if index >= limit or spec is None else spec.choose(limit - index)
        go_on = index < limit and k == 0
        if go_on:
            with mx.stream(generation_stream):
                after = _step(model, cache, pending, picker, index)
            mx.async_eval(after)
        token = int(pending.item())
        if spec is not None:
            now = clock()
            spec.plain(token, now - tic)
            tic = now
        yield token
        if not go_on:
            return k
        pending = after


def _step(model: nn.Module, cache: list[Any], y: mx.array, picker: Picker, index: int) -> mx.array:
    """One plain step on token y ([1], possibly not computed yet): the next token, lazily ([1])."""
    logits = model(y[None], cache=cache)[:, -1, :]  # [1, vocab]
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return picker(logprobs, index)


def prefill(model: nn.Module, cache: list[Any], ids: list[int]) -> None:
    """The prompt but its last token into the cache, in mlx-lm's chunks (its generate_step's loop)."""
    for i in range(0, len(ids), PREFILL_STEP):
        model(mx.array(ids[i:i + PREFILL_STEP])[None], cache=cache)
        mx.eval([c.state for c in cache])
        mx.clear_cache()
