"""The engine's speculative decoding loop: token ids from a prompt, by prefill, then verification passes.

    tokens = speculative_tokens(model, ids, max_tokens, picker, speculator, stats)   # an iterator of token ids

1. Prefill as mlx-lm's generate_step does: the prompt but its last token in chunks of PREFILL_STEP, then one step on
   the last token picks the first generated token (position 0).
2. Then a Decoder, per decision of the speculator's adaptive K: K > 0 is one verification pass (speculative.py),
   emitting 1..K+1 tokens; K = 0 starts a run of plain steps pipelined as mlx-lm's loop is (the next step's graph is
   built and queued before the current token is read back), which lasts while K stays 0: so a request that has
   backed off decodes at plain speed. Without a speculator (a cache that cannot be rewound) every step is such a
   plain step. The daemon's solo lane decodes with the same Decoder.

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
    Raises ValueError for an empty prompt.

    make_speculator(cache) gives the request's Speculator for its new KV cache, or None to decode plainly.
    `stats` (a GenerationStats or LoopStats) gets draft_tokens, accepted_tokens and verify_passes (forward passes
    that emitted tokens, the one ending prefill included) as they change.
    """
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
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
    decoder = Decoder(model, cache, ids + [first], spec, picker, generation_stream, clock)
    done = 1
    while done < limit:
        tokens, _, _ = decoder.step(done, limit - done)
        stats.verify_passes += 1
        if spec is not None:
            stats.draft_tokens, stats.accepted_tokens = spec.draft_tokens, spec.accepted_tokens
        yield from tokens
        done += len(tokens)


class Decoder:
    """One request decoding from its own KV cache: verification passes where adaptive K chooses K > 0, else plain
    steps pipelined as mlx-lm's loop is (the next step is queued before the current token is read back, for as long
    as K stays 0). Without a speculator every step is such a plain step. The engine's loop (speculative_tokens) and
    the daemon's solo lane (solo_lane.py) both decode with it.

    `context` is the prompt and the tokens emitted so far; its last token is not in the cache yet."""

    def __init__(self, model: Any, cache: list[Any], context: list[int], speculator: Speculator | None,
                 picker: Picker, stream: Any, clock: Callable[[], float] = time.perf_counter):
        self.model, self.cache, self.context = model, cache, context
        self.speculator, self.picker, self.stream, self.clock = speculator, picker, stream, clock
        # a plain run in flight: the next token, queued but not read back (its input, context[-1], is in the
        # cache); the K decided at the end of a run, for the pass after it; when the last plain token came
        self.pending: mx.array | None = None
        self.k: int | None = None
        self.tic = 0.0

    def step(self, index: int, limit: int) -> tuple[list[int], int, int]:
        """One pass: (tokens emitted, drafts checked, drafts accepted). A verification pass of K drafts, or (K = 0)
        one plain step of a pipelined run. `index`: tokens generated so far (the key index of the first token
        emitted); `limit`: the most tokens it may emit (>= 1). Raises what the model raises."""
        s = self.speculator
        if self.pending is None:
            k, self.k = (self._choose(limit) if self.k is None else self.k), None
            if k > 0:
                assert s is not None
                drafted, accepted = s.draft_tokens, s.accepted_tokens
                with mx.stream(self.stream):
                    tokens = s.step(self.model, self.cache, self.picker, index, limit, k=k)
                self.context += tokens
                return tokens, s.draft_tokens - drafted, s.accepted_tokens - accepted
            self.pending = self._plain(mx.array([self.context[-1]], dtype=mx.uint32), index)
            self.tic = self.clock()
        return [self._plain_token(index, limit)], 0, 0

    def drop_pending(self) -> None:
        """Drop a queued plain step and take its input back out of the cache: context[-1] is uncached again."""
        if self.pending is not None:
            for c in self.cache:
                c.trim(1)
            self.pending = None

    def _choose(self, limit: int) -> int:
        return self.speculator.choose(limit) if self.speculator is not None and limit > 0 else 0

    def _plain_token(self, index: int, limit: int) -> int:
        """The plain run's next token; the step after it is queued first while K stays 0 (the device computes it
        while the host reads this one back and routes it)."""
        pending = self.pending
        assert pending is not None
        k = self._choose(limit - 1)  # the decision for the token after this one
        self.pending = self._plain(pending, index + 1) if limit > 1 and k == 0 else None
        self.k = None if self.pending is not None or limit <= 1 else k
        token = int(pending.item())
        now = self.clock()
        if self.speculator is not None:
            self.speculator.plain(token, now - self.tic)
        self.tic = now
        self.context.append(token)  # in the cache if a step on it is queued; else fed by the next pass
        return token

    def _plain(self, y: mx.array, index: int) -> mx.array:
        """Queue one plain step on token y ([1], maybe not computed yet): the next token at `index`, lazily."""
        with mx.stream(self.stream):
            token = _step(self.model, self.cache, y, self.picker, index)
        mx.async_eval(token)
        return token


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
