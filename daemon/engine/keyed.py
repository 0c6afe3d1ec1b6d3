"""Sampling keyed by position: the draw for generated token i of a request uses a key derived from (seed, i) only.

So a request's sampled tokens do not depend on what else is computed around it (other rows of a batch, how many
positions a speculative verify pass covers): batched, alone, with or without speculation, the same seed gives the
same tokens. Used by the daemon's jobs (jobs.py) and the engine's speculative loop (speculative.py).
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

_MASK64 = (1 << 64) - 1


def derive_seed(seed: int, index: int) -> int:
    """A 64-bit seed for token `index` of a request (splitmix64 of seed and index): independent streams."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class KeyedSampler:
    """mlx-lm's sampler for one request; the draw for generated position `index` uses the key derived from
    (seed, index) alone. Each call draws at `index`, then moves it on by one: batched decoding calls it once per
    token in order, and the solo lane sets `index` before each position of a verify pass."""

    def __init__(self, inner: Callable[[mx.array], mx.array], seed: int) -> None:
        self.inner, self.seed, self.index = inner, seed, 0

    def __call__(self, logprobs: mx.array) -> mx.array:  # logprobs: [1, vocab] (this request's row)
        # The global key is set right before mlx-lm's categorical draw: this thread is MLX's only user.
        mx.random.seed(derive_seed(self.seed, self.index))
        self.index += 1
        return self.inner(logprobs)
