"""One speculation-benchmark configuration (a store at one budget, one speculation mode), in its own process.

    python -m moed.daemon.bench.single '{"kind": "spec", "store": STORE, "budget": "25%", "speculation": "lookup",
                                         "workloads": ["quote", "free"], "max_tokens": 64, "prompts": 3}'
    python -m moed.daemon.bench.single '{"kind": "spec-ref", "model": CKPT, "workloads": [...], ...}'

"spec" generates every prompt of every workload (moed.daemon.bench.workloads) greedily through the engine's own
`generate` with the given speculation mode ("off" is moed's ordinary mlx-lm loop); "spec-ref" generates the same
prompts with mlx-lm's `stream_generate` on the whole checkpoint in RAM (the tokens every mode must give).
End-of-sequence is ignored, so each prompt yields exactly max_tokens tokens.

Measured per prompt, over decode only (from the first generated token, which prefill produced, to the last):
decode tok/s, bytes read and cache hit rate, and from the engine's GenerationStats the verification passes,
draft tokens proposed and accepted. Counters are read when the first token is yielded; mlx-lm's loop (mode "off")
has by then already built the second step, so its first decode step's reads count as prefill (an undercount of
at most one step in max_tokens - 1).
"""

from __future__ import annotations

import time

WARMUP_TOKENS = 8  # one short generation before timing: kernel compilation and first-touch costs


def _ignore_eos(tokenizer) -> None:
    """Fixed token counts: no token ends a generation early."""
    tokenizer.eos_token_ids = set()


def _speculation(cfg: dict):
    mode = cfg.get("speculation", "off")
    if mode == "off":
        return None  # the engine's ordinary path, exactly as without the speculation feature
    from ..speculation import SpeculationConfig

    keys = {"mode": mode}
    if cfg.get("draft_model"):
        keys["draft_model"] = cfg["draft_model"]
    if cfg.get("max_draft"):
        keys["max_draft"] = int(cfg["max_draft"])
    if "adaptive" in cfg:
        keys["adaptive"] = bool(cfg["adaptive"])
    return SpeculationConfig(**keys)


def _one(eng, prompt, speculation, timer) -> dict:
    """Generate one prompt; decode figures measured from the first yielded token on."""
    from ..engine.generate import GenerationStats, generate

    stats = GenerationStats()
    kw = {"speculation": speculation} if speculation is not None else {}
    tokens, marks = [], {}
    t_first = t_last = time.perf_counter()
    for _, tok in generate(eng, list(prompt.ids), max_tokens=prompt.max_tokens, temp=0.0, stats=stats, **kw):
        t_last = time.perf_counter()
        if not tokens:
            eng.cache.flush()
            t_first, marks["cache"], marks["reader"] = t_last, eng.cache.stats(), eng.reader.stats()
            marks["phases"] = timer.snapshot()
        tokens.append(int(tok))
    eng.cache.flush()
    c, r = eng.cache.stats(), eng.reader.stats()
    c0, r0 = marks["cache"], marks["reader"]
    hits = c.hits + c.inflight_hits - c0.hits - c0.inflight_hits
    misses = c.misses - c0.misses
    n = len(tokens) - 1  # decode tokens: the first came out of prefill
    secs = t_last - t_first
    phases = {k: v - marks["phases"].get(k, 0.0) for k, v in timer.snapshot().items()}
    return {
        "source": prompt.source, "prompt_tokens": len(prompt.ids), "tokens": tokens,
        "decode_tokens": n, "decode_seconds": secs,
        "decode_tps": n / secs if secs > 0 else 0.0,
        "decode_bytes_read": r.bytes_read - r0.bytes_read,
        "decode_hits": hits, "decode_misses": misses, "decode_syncs": c.acquires - c0.acquires,
        "decode_prefetches": c.prefetches - c0.prefetches,
        "decode_prefetch_wasted": c.prefetch_wasted - c0.prefetch_wasted,
        "verify_passes": stats.verify_passes - 1,  # decode passes: the engine counts prefill's as the first
        "draft_tokens": stats.draft_tokens, "accepted_tokens": stats.accepted_tokens,
        "speculation": stats.speculation,  # what ran: the mode, or "unavailable: why"
        "engine_decode_bytes_per_token": stats.decode_bytes_per_token,
        "decode_phase_seconds": phases,  # inside the synchronised layer calls (engine/probe.py)
    }


def totals(runs: list[dict]) -> dict:
    """One workload's figures over its prompts (sums, then ratios)."""
    s = lambda k: sum(r[k] for r in runs)  # noqa: E731
    n, secs, passes, drafts = s("decode_tokens"), s("decode_seconds"), s("verify_passes"), s("draft_tokens")
    looked = s("decode_hits") + s("decode_misses")
    return {
        "decode_tokens": n,
        "decode_tps": n / secs if secs > 0 else 0.0,
        "tokens_per_pass": n / passes if passes else 0.0,
        "draft_tokens": drafts,
        "accepted_tokens": s("accepted_tokens"),
        "acceptance": s("accepted_tokens") / drafts if drafts else None,
        "decode_bytes_per_token": s("decode_bytes_read") / n if n else 0.0,
        "decode_hit_rate": s("decode_hits") / looked if looked else None,
        # where the bytes go: demand reads (misses) and prefetch reads (some evicted unused), per generated token
        "misses_per_token": s("decode_misses") / n if n else 0.0,
        "prefetches_per_token": s("decode_prefetches") / n if n else 0.0,
        "prefetch_wasted_per_token": s("decode_prefetch_wasted") / n if n else 0.0,
        "syncs_per_token": s("decode_syncs") / n if n else 0.0,
        # a short profile: ms per generated token inside synchronised layer calls, by phase, and all of them
        "phases_ms_per_token": {k: sum(r["decode_phase_seconds"].get(k, 0.0) for r in runs) * 1000 / n
                                for k in {k for r in runs for k in r["decode_phase_seconds"]}} if n else {},
        "ms_per_token": secs * 1000 / n if n else 0.0,
    }


def run_spec(cfg: dict) -> dict:
    """The engine at cfg's budget, every workload's prompts generated with cfg's speculation mode."""
    from ..config import engine_config
    from ..engine.generate import generate
    from ..engine.model import load_engine
    from ..engine.probe import PhaseTimer
    from .workloads import prompts

    t0, timer = time.perf_counter(), PhaseTimer()
    eng = load_engine(engine_config(cfg["store"], cache_budget=str(cfg.get("budget") or "100%"),
                                    read_mode=cfg.get("read_mode", "direct"), read_threads=cfg.get("read_threads", 4),
                                    cache_policy=cfg.get("policy", "lfu"), prefetch_depth=cfg.get("prefetch_depth", 1)),
                      upload=cfg.get("upload", "auto"), probe=timer)
    eng.cache.wait_loads()
    load_s = time.perf_counter() - t0
    _ignore_eos(eng.tokenizer)
    speculation = _speculation(cfg)
    work = {w: prompts(w, eng.tokenizer, count=cfg.get("prompts", 3), max_tokens=cfg.get("max_tokens", 64))
            for w in cfg["workloads"]}
    warm = next(iter(work.values()))[0]
    kw = {"speculation": speculation} if speculation is not None else {}
    for _ in generate(eng, list(warm.ids[:16]), max_tokens=WARMUP_TOKENS, temp=0.0, **kw):
        pass
    out = {"load_seconds": load_s, "budget_fraction": eng.cache.stats().budget_bytes / eng.manifest.total_expert_bytes,
           "workloads": {}}
    for name, ps in work.items():
        runs = [_one(eng, p, speculation, timer) for p in ps]
        out["workloads"][name] = {**totals(runs), "runs": runs}
    if cfg.get("pass_rows"):
        out["pass_ms_by_rows"] = pass_costs(eng.model, list(warm.ids), cfg["pass_rows"])
    eng.close()
    return out


def pass_costs(model, ids: list[int], rows: list[int], repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of one forward pass of n rows after a prefill of `ids` (the verify pass of n - 1
    drafts; n = 1 is a plain decode step), the cache trimmed back after each: where a verify pass's time goes as
    it grows (MLX's CPU kernels cost about linearly in rows, a GPU's far less)."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    cache = make_prompt_cache(model)
    mx.eval(model(mx.array(ids)[None], cache=cache))
    out = {}
    for n in rows:
        times = []
        for i in range(repeats + 1):  # the first pass of a shape is not timed (kernel compilation)
            toks = [ids[(i + j) % len(ids)] for j in range(n)]
            t0 = time.perf_counter()
            mx.eval(model(mx.array(toks)[None], cache=cache))
            times.append(time.perf_counter() - t0)
            trim_prompt_cache(cache, n)
        times = sorted(times[1:])
        out[str(n)] = times[len(times) // 2] * 1000
    return out


def run_spec_ref(cfg: dict) -> dict:
    """mlx-lm's own greedy generation of the same prompts on the checkpoint in RAM: tokens and decode tok/s."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import stream_generate

    from .workloads import prompts

    model, tokenizer = load(cfg["model"])
    mx.eval(model.parameters())
    _ignore_eos(tokenizer)
    warm = prompts(cfg["workloads"][0], tokenizer, count=1, max_tokens=cfg.get("max_tokens", 64))[0]
    for _ in stream_generate(model, tokenizer, list(warm.ids[:16]), max_tokens=WARMUP_TOKENS):
        pass
    out = {"workloads": {}}
    for name in cfg["workloads"]:
        runs = []
        for p in prompts(name, tokenizer, count=cfg.get("prompts", 3), max_tokens=cfg.get("max_tokens", 64)):
            tokens, t_first, t_last = [], 0.0, 0.0
            for r in stream_generate(model, tokenizer, list(p.ids), max_tokens=p.max_tokens):
                t_last = time.perf_counter()
                t_first = t_first or t_last
                tokens.append(int(r.token))
            n, secs = len(tokens) - 1, t_last - t_first
            runs.append({"source": p.source, "tokens": tokens, "decode_tokens": n, "decode_seconds": secs,
                         "decode_tps": n / secs if secs > 0 else 0.0})
        n, secs = sum(r["decode_tokens"] for r in runs), sum(r["decode_seconds"] for r in runs)
        out["workloads"][name] = {"decode_tokens": n, "decode_tps": n / secs if secs > 0 else 0.0, "runs": runs}
    return out
