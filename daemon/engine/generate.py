"""In-process streaming generation over a loaded Engine, with moed's stats beside mlx-lm's.

Without speculation, generation is mlx-lm's `stream_generate` (prompt processing, KV cache, sampling,
detokenising) on the model whose expert layers stream. With speculation (`speculation=SpeculationConfig(mode=
"lookup" | "draft")`), prefill is mlx-lm's (the prompt but its last token in chunks, then one step), then every
step is a verification pass (speculative.py) emitting 1..K+1 tokens; the text, end-of-sequence and max_tokens
handling are stream_generate's. Sampling there is keyed: the token at generated position i is drawn with the key
from (seed, i) only; `keyed=True` draws the same way without speculation, so the two compare token for token.
This module adds what moed measures: cache hits and misses, bytes read (per generated token), time spent inside
reads, peak resident memory, and the speculation counters (drafts proposed and accepted, passes).
"""

from __future__ import annotations

import logging
import resource
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import mlx.core as mx
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from ..speculation import SpeculationConfig
from .draft_rows import DraftRows
from .drafters import DraftModel, load_draft_model, make_drafter
from .model import Engine
from .speculative import KeyedPicker, Picker, Speculator, cache_trimmable, make_picker
from .speculative_loop import speculative_tokens

log = logging.getLogger(__name__)
_warned: set[str] = set()


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
    # speculation: what ran ("off", "lookup", "draft", or "unavailable: <why>"), drafts proposed and accepted, and
    # the forward passes that emitted tokens (the one ending prefill and plain steps included), so
    # generation_tokens / verify_passes is tokens per pass (1.0 without speculation)
    speculation: str = "off"
    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_passes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def tokens_per_pass(self) -> float:
        return self.generation_tokens / self.verify_passes if self.verify_passes else 0.0


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
    speculation: SpeculationConfig | None = None,
    keyed: bool = False,
    draft: DraftModel | None = None,
) -> Iterator[tuple[str, int]]:
    """Yield (text segment, token id) as tokens come; fill `stats` (if given) as it goes and at the end.

    speculation: None or mode "off" runs mlx-lm's stream_generate unchanged; "lookup" / "draft" speculate (a draft
        model is loaded from speculation.draft_model unless `draft` gives one already loaded).
    keyed: without speculation, sample with the (seed, position) keys speculation uses (always so with it); a
        missing seed is then drawn at random. Greedy decoding (temp 0) ignores it.

    Raises:
        ValueError: `top_k` above the model's vocabulary (before any work), or a draft model that cannot draft for
            this model. StoreError: an expert read failed.
    """
    vocab = engine.manifest.config.get("vocab_size")
    if vocab and top_k > int(vocab):
        raise ValueError(f"top_k is {top_k}; this model's vocabulary has {vocab} tokens: give at most that (0 = off)")
    spec = speculation if speculation is not None and speculation.enabled else None
    keyed = keyed or spec is not None
    if keyed and seed is None:
        seed = secrets.randbits(63)
    elif seed is not None:
        mx.random.seed(seed)
    ids = encode_prompt(engine, prompt, chat)
    stats = stats if stats is not None else GenerationStats()
    cache0, reader0 = engine.cache.stats(), engine.reader.stats()
    t0 = time.perf_counter()
    if spec is None:
        picker = make_picker(temp, top_p, top_k, min_p, seed or 0)
        sampler = (picker.counting_sampler() if keyed and isinstance(picker, KeyedPicker)
                   else make_sampler(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p))
        for r in stream_generate(engine.model, engine.tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
            if r.generation_tokens == 1:  # the first token ends prefill: split reads into prefill and decode
                stats.prefill_bytes_read = engine.reader.stats().bytes_read - reader0.bytes_read
            stats.prompt_tokens, stats.generation_tokens = r.prompt_tokens, r.generation_tokens
            stats.prompt_tps, stats.generation_tps = r.prompt_tps, r.generation_tps
            stats.finish_reason = r.finish_reason
            yield r.text, r.token
        stats.verify_passes = stats.generation_tokens
    else:
        if spec.mode == "draft" and draft is None:
            draft = load_draft_model(spec.draft_model, engine.tokenizer)
        picker = make_picker(temp, top_p, top_k, min_p, seed)
        yield from _speculative(engine, ids, max_tokens, picker, spec, draft, stats, reader0)
    _finish(engine, stats, cache0, reader0, time.perf_counter() - t0)


def _speculative(engine: Engine, ids: list[int], max_tokens: int, picker: Picker, spec: SpeculationConfig,
                 draft: DraftModel | None, stats: GenerationStats, reader0) -> Iterator[tuple[str, int]]:
    """stream_generate's loop (text, eos, max_tokens, timings) over speculative_tokens."""
    if max_tokens == 0:
        raise ValueError("max_tokens must be non-zero (use -1 for no limit)")
    tok = engine.tokenizer
    detok = tok.detokenizer
    detok.reset()
    tic = time.perf_counter()
    prompt_tps, token, n = 0.0, -1, -1
    tokens = speculative_tokens(engine.model, ids, max_tokens, picker,
                                lambda cache: _speculator(cache, spec, draft, stats, engine.draft_rows), stats)
    try:
        for n, token in enumerate(tokens):
            if n == 0:
                stats.prefill_bytes_read = engine.reader.stats().bytes_read - reader0.bytes_read
                prompt_tps = len(ids) / (time.perf_counter() - tic)
                tic = time.perf_counter()
            stats.prompt_tokens, stats.generation_tokens, stats.prompt_tps = len(ids), n + 1, prompt_tps
            stats.generation_tps = (n + 1) / max(time.perf_counter() - tic, 1e-9)
            if token in tok.eos_token_ids:
                break
            detok.add_token(token)
            if n + 1 == max_tokens:
                break
            yield detok.last_segment, token
    finally:
        tokens.close()
    detok.finalize()
    stats.finish_reason = "stop" if token in tok.eos_token_ids else "length"
    yield detok.last_segment, token


def _speculator(cache: list, spec: SpeculationConfig, draft: DraftModel | None, stats: GenerationStats,
                rows: DraftRows | None) -> Speculator | None:
    """The request's Speculator, or None (said in stats and once in the log) where its cache cannot be trimmed."""
    if not cache_trimmable(cache):
        kinds = sorted({type(c).__name__ for c in cache if not c.is_trimmable()})
        why = f"the model's KV cache ({', '.join(kinds)}) cannot be rewound"
        stats.speculation = f"unavailable: {why}"
        if why not in _warned:
            _warned.add(why)
            log.warning("speculation unavailable: %s; decoding without it", why)
        return None
    stats.speculation = spec.mode
    drafter = make_drafter(spec.mode, ngram_max=spec.ngram_max, ngram_min=spec.ngram_min, draft=draft)
    return Speculator(spec, drafter, rows=rows)


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
