"""In-process streaming generation over a loaded Engine, with moed's stats beside mlx-lm's.

Generation itself is mlx-lm's `stream_generate` (prompt processing, KV cache, sampling, detokenising) on the
model whose expert layers stream; this module adds what moed measures: cache hits and misses, bytes read,
time spent inside reads, and peak resident memory.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import mlx.core as mx
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from .model import Engine


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    hit_rate: float = 0.0
    bytes_read: int = 0
    prefill_bytes_read: int = 0
    decode_bytes_per_token: float = 0.0
    read_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    finish_reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux, VmHWM from /proc/self/status: ru_maxrss survives fork+exec, so a child started by a big parent
    would report the parent's peak. Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def encode_prompt(engine: Engine, prompt: str | list[int], chat: bool = False) -> list[int]:
    """Token ids for a prompt; with chat=True the tokenizer's chat template wraps it as one user message."""
    if isinstance(prompt, list):
        return prompt
    tok = engine.tokenizer
    if chat and getattr(tok, "chat_template", None):
        return list(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True))
    return list(tok.encode(prompt))


def generate(
    engine: Engine,
    prompt: str | list[int],
    *,
    max_tokens: int = 128,
    temp: float = 0.0,
    top_p: float = 0.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
    chat: bool = False,
    stats: GenerationStats | None = None,
) -> Iterator[tuple[str, int]]:
    """Yield (text segment, token id) as tokens come; fill `stats` (if given) as it goes and at the end.

    Raises:
        ValueError: `top_k` above the model's vocabulary (before any work). StoreError: an expert read failed.
    """
    vocab = engine.manifest.config.get("vocab_size")
    if vocab and top_k > int(vocab):
        raise ValueError(f"top_k is {top_k}; this model's vocabulary has {vocab} tokens: give at most that (0 = off)")
    if seed is not None:
        mx.random.seed(seed)
    ids = encode_prompt(engine, prompt, chat)
    sampler = make_sampler(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p)
    stats = stats if stats is not None else GenerationStats()
    cache0, reader0 = engine.cache.stats(), engine.reader.stats()
    t0 = time.perf_counter()
    for r in stream_generate(engine.model, engine.tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        if r.generation_tokens == 1:  # the first token ends prefill: split reads into prefill and decode
            stats.prefill_bytes_read = engine.reader.stats().bytes_read - reader0.bytes_read
        stats.prompt_tokens, stats.generation_tokens = r.prompt_tokens, r.generation_tokens
        stats.prompt_tps, stats.generation_tps = r.prompt_tps, r.generation_tps
        stats.finish_reason = r.finish_reason
        yield r.text, r.token
    _finish(engine, stats, cache0, reader0, time.perf_counter() - t0)


def _finish(engine: Engine, stats: GenerationStats, cache0, reader0, wall: float) -> None:
    c, rd = engine.cache.stats(), engine.reader.stats()
    # an expert found still in flight (a prefetch) counts as a hit: it was not read on demand
    stats.cache_hits = c.hits + c.inflight_hits - cache0.hits - cache0.inflight_hits
    stats.cache_misses = c.misses - cache0.misses
    n = stats.cache_hits + stats.cache_misses
    stats.hit_rate = stats.cache_hits / n if n else 0.0
    stats.bytes_read = rd.bytes_read - reader0.bytes_read
    stats.read_seconds = (rd.read_ns - reader0.read_ns) / 1e9
    decode_steps = stats.generation_tokens - 1  # the first token came out of prefill
    decode_bytes = stats.bytes_read - stats.prefill_bytes_read
    stats.decode_bytes_per_token = decode_bytes / decode_steps if decode_steps > 0 else 0.0
    stats.wall_seconds = wall
    stats.peak_rss_bytes = peak_rss_bytes()
