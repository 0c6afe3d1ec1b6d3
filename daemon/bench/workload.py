"""The honest decode workload: teacher forcing on a fixed real text (unpipelined and pipelined), and seeded sampling.

Random-weight models decoding greedily soon repeat one token, so the same experts route every step and any cache
looks perfect. Teacher forcing feeds the tokens of a fixed English text (the corpus the test tokenizer was
trained on) one at a time, so routing follows real token sequences; each step is timed on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache


def corpus_tokens(tokenizer, n: int) -> list[int]:
    """The first n tokens of the fixed benchmark text (repeated if the text is shorter)."""
    from ..testmodel import corpus_text

    ids = list(tokenizer.encode(corpus_text()))
    if not ids:
        raise ValueError("the benchmark text encodes to no tokens")
    while len(ids) < n:
        ids += ids
    return ids[:n]


@dataclass
class ForcedRun:
    prefill_seconds: float = 0.0
    prompt_tokens: int = 0
    step_seconds: list[float] = field(default_factory=list)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        s = sorted(self.step_seconds)
        return 1.0 / s[len(s) // 2] if s else 0.0  # the median step


def teacher_forced(model: nn.Module, tokens: list[int], prompt_len: int, on_prefilled=None) -> ForcedRun:
    """Prefill tokens[:prompt_len] in one chunk, then feed the rest one token per step, timing each step.

    `on_prefilled()` is called between the two phases (to snapshot counters)."""
    run = ForcedRun(prompt_tokens=prompt_len)
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    mx.eval(model(mx.array(tokens[:prompt_len])[None], cache=cache))
    run.prefill_seconds = time.perf_counter() - t0
    if on_prefilled is not None:
        on_prefilled()
    for tok in tokens[prompt_len:]:
        t0 = time.perf_counter()
        logits = model(mx.array([[tok]]), cache=cache)
        mx.eval(logits)
        run.step_seconds.append(time.perf_counter() - t0)
    return run


def pipelined(model: nn.Module, tokens: list[int], steps: int) -> dict:
    """Teacher forcing in mlx-lm's pipelined loop: step n+1 is built and queued before step n is waited for.

    Prefills tokens[:16], then decodes `steps` tokens from tokens[16:]. Returns {"step_ms", "tok_s"}."""
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array(tokens[:16])[None], cache=cache))
    prev = model(mx.array([[tokens[16]]]), cache=cache).argmax(-1)
    mx.async_eval(prev)
    t0 = time.perf_counter()
    for tok in tokens[17 : 17 + steps]:
        nxt = model(mx.array([[tok]]), cache=cache).argmax(-1)
        mx.async_eval(nxt)
        prev.item()
        prev = nxt
    prev.item()
    secs = time.perf_counter() - t0
    return {"step_ms": secs * 1000 / steps, "tok_s": steps / secs}


def sampled_tps(model: nn.Module, tokenizer, prompt: list[int], max_tokens: int, seed: int = 0) -> float:
    """Decode tok/s of mlx-lm's own generation loop with seeded temperature-1 sampling."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    last = None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(temp=1.0)):
        pass
    return last.generation_tps if last is not None else 0.0
