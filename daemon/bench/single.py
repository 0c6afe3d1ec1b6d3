"""One benchmark configuration, run in its own process; prints one JSON record on stdout.

    python -m moed.daemon.bench.single '{"kind": "mlx-lm", "model": CKPT, ...}'
    python -m moed.daemon.bench.single '{"kind": "moed", "store": STORE, "budget": "25%", "read_mode": "direct", ...}'
    python -m moed.daemon.bench.single '{"kind": "readpath", "store": STORE, "read_mode": "direct", ...}'
    python -m moed.daemon.bench.single '{"kind": "spec", "store": STORE, "speculation": "lookup", ...}'
                                        (and "spec-ref": moed.daemon.bench.speculation)

Common keys: prompt_len (prefill chunk), steps (teacher-forced decode steps), sample_tokens (seeded sampling run).
moed runs also take read_threads, prefetch_depth, policy, unsynced, and upload ("auto", "copy", "plain":
engine/managed.py), passed to load_engine; their records split the synced layer calls' time into phases
(engine/probe.py: a PhaseTimer passed as the engine's probe).
pipelined (true) adds teacher-forced decode in mlx-lm's pipelined loop (workload.pipelined) to either kind.
"""

from __future__ import annotations

import json
import sys
import time

import mlx.core as mx


def run_mlx_lm(cfg: dict) -> dict:
    from mlx_lm import load

    t0 = time.perf_counter()
    model, tokenizer = load(cfg["model"])
    mx.eval(model.parameters())  # all in RAM before timing: mlx-lm's lazy load would otherwise bill prefill
    load_s = time.perf_counter() - t0
    return {"load_seconds": load_s, **_forced(model, tokenizer, cfg), **_sampled(model, tokenizer, cfg)}


def run_moed(cfg: dict) -> dict:
    from ..config import engine_config
    from ..engine.model import load_engine
    from ..engine.probe import Phase, PhaseTimer

    t0 = time.perf_counter()
    timer = PhaseTimer()
    eng = load_engine(engine_config(cfg["store"], cache_budget=str(cfg.get("budget") or "100%"),
                                    read_mode=cfg.get("read_mode", "direct"), read_threads=cfg.get("read_threads", 4),
                                    cache_policy=cfg.get("policy", "lfu"), prefetch_depth=cfg.get("prefetch_depth", 1)),
                      upload=cfg.get("upload", "auto"), unsynced=cfg.get("unsynced", True), probe=timer)
    eng.cache.wait_loads()  # at 100 % the preload: every expert in memory before timing, as mlx-lm's load
    load_s = time.perf_counter() - t0
    marks: dict = {}

    def snapshot():
        eng.cache.flush()  # count the unsynced layer calls so far
        marks["cache"], marks["reader"], marks["pf"] = eng.cache.stats(), eng.reader.stats(), eng.prefetcher.stats()
        marks["phases"] = timer.snapshot()

    out = _forced(eng.model, eng.tokenizer, cfg, snapshot)
    eng.cache.flush()
    c, r, pf = eng.cache.stats(), eng.reader.stats(), eng.prefetcher.stats()
    c0, r0, pf0, steps = marks["cache"], marks["reader"], marks["pf"], max(cfg["steps"], 1)
    hits = c.hits + c.inflight_hits - c0.hits - c0.inflight_hits
    misses = c.misses - c0.misses
    needed, correct = pf.needed - pf0.needed, pf.correct - pf0.correct
    phases = {k: (v - marks["phases"].get(k, 0.0)) * 1000 / steps for k, v in timer.snapshot().items()}
    out.update({
        "decode_wait_ms_per_token": (c.wait_seconds - c0.wait_seconds) * 1000 / steps,
        "decode_sync_ms_per_token": phases.get(Phase.READ_BACK.value, 0.0),
        "decode_synced_call_ms_per_token": sum(phases.values()),
        "phases_ms_per_token": phases,
        "syncs_per_token": (c.acquires - c0.acquires) / steps,
        "unsynced_layers_per_token": (c.unsynced - c0.unsynced) / steps,
        "prefetch_accuracy": correct / needed if needed else None,
        "prefetch_reads_per_token": (c.prefetches - c0.prefetches) / steps,
        "prefetch_wasted_bytes_per_token": (c.prefetch_wasted - c0.prefetch_wasted) * eng.manifest.layout.record_bytes
        / steps,
        "load_seconds": load_s,
        "budget_bytes": c.budget_bytes,
        "budget_fraction": c.budget_bytes / eng.manifest.total_expert_bytes,
        "dense_bytes": eng.dense_bytes,
        "total_expert_bytes": eng.manifest.total_expert_bytes,
        "decode_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "decode_bytes_read_per_token": (r.bytes_read - r0.bytes_read) / steps,
        "decode_read_seconds_per_token": (r.read_ns - r0.read_ns) / 1e9 / steps,
        "prefill_bytes_read": r0.bytes_read,
        "read_mode": r.mode,
    })
    out.update(_sampled(eng.model, eng.tokenizer, cfg))
    eng.close()
    return out


def run_restart(cfg: dict) -> dict:
    """Warm restart: run A decodes the text and saves its usage; run B (a fresh engine in this process, as a
    restarted daemon) warm-starts from it and decodes the same text; hit rates over B's first `window` tokens
    against A's steady state (its last `window` tokens)."""
    import tempfile

    from ..config import engine_config
    from ..engine.model import load_engine
    from .workload import corpus_tokens

    window = cfg.get("window", 32)
    ec = engine_config(cfg["store"], cache_budget=str(cfg.get("budget") or "100%"),
                       read_mode=cfg.get("read_mode", "direct"), cache_policy=cfg.get("policy", "lfu"),
                       prefetch_depth=cfg.get("prefetch_depth", 1))
    upload = cfg.get("upload", "auto")
    with tempfile.TemporaryDirectory() as tmp:
        a = load_engine(ec, upload=upload)
        tokens = corpus_tokens(a.tokenizer, cfg["steps"] + 1)
        rates_a = _hit_rates(a, tokens)
        a.save_state(f"{tmp}/usage.json")
        a.close()
        b = load_engine(ec, upload=upload)
        t0 = time.perf_counter()
        started = b.warm_start(f"{tmp}/usage.json")
        ready_s = time.perf_counter() - t0
        rates_b = _hit_rates(b, tokens[: window + 1])
        b.close()
    steady = sum(rates_a[-window:]) / window
    first = sum(rates_b[:window]) / window
    return {"steady_hit_rate": steady, "restart_first_hit_rate": first, "gap_points": 100 * (steady - first),
            "warm_reads_started": started, "warm_start_seconds": ready_s, "window": window}


def _hit_rates(eng, tokens: list[int]) -> list[float]:
    """Per-step hit rate of teacher-forced decoding (one token per step, from the first token)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache, rates = make_prompt_cache(eng.model), []
    for tok in tokens:
        s0 = eng.cache.stats()
        mx.eval(eng.model(mx.array([[tok]]), cache=cache))
        eng.cache.flush()
        s1 = eng.cache.stats()
        h = s1.hits + s1.inflight_hits - s0.hits - s0.inflight_hits
        n = h + s1.misses - s0.misses
        rates.append(h / n if n else 0.0)
    return rates


def run_resize(cfg: dict) -> dict:
    """Live resize during teacher-forced decode: the engine starts at the first budget of `budgets` (its bank
    allocation), decodes, then changes budget between steps through the rest; each change reports its pause
    (the resize call) and the median of the next `steps_after` steps against the median step before."""
    from mlx_lm.models.cache import make_prompt_cache

    from ..budget import resolve
    from ..config import engine_config
    from ..engine.model import load_engine
    from .workload import corpus_tokens

    budgets = cfg.get("budgets", ["50%", "25%", "12.5%", "25%", "50%", "75%"])
    after = cfg.get("steps_after", 6)
    eng = load_engine(engine_config(cfg["store"], cache_budget=budgets[0], read_mode=cfg.get("read_mode", "direct"),
                                    prefetch_depth=cfg.get("prefetch_depth", 1)), upload=cfg.get("upload", "auto"))
    tokens = iter(corpus_tokens(eng.tokenizer, cfg.get("prompt_len", 32) + 16 + after * len(budgets)))
    cache = make_prompt_cache(eng.model)
    mx.eval(eng.model(mx.array([[next(tokens) for _ in range(cfg.get("prompt_len", 32))]]), cache=cache))

    def steps(n: int) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            mx.eval(eng.model(mx.array([[next(tokens)]]), cache=cache))
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1000

    base = steps(16)
    changes = []
    for b in budgets[1:]:
        views = eng.cache.views
        t0 = time.perf_counter()
        eng.cache.resize(resolve(b, eng.manifest.total_expert_bytes, eng.manifest.expert_bytes).bytes)
        pause = (time.perf_counter() - t0) * 1000
        changes.append({"to": b, "pause_ms": pause, "reallocated": eng.cache.views is not views,
                        "next_steps_ms_p50": steps(after)})
    eng.close()
    return {"start_budget": budgets[0], "step_ms_p50_before": base, "changes": changes}


def run_readpath(cfg: dict) -> dict:
    """Time moed's read path (pread + checksum + copy into the slot bank) filling a cold cache, whole layers at a
    time as a prefill would, next to the raw device throughput of the same files with the same threads."""
    from ..engine.cache import ExpertCache
    from ..store.format import read_manifest
    from .iobench import measure_device_throughput
    from ..store.reader import ExpertReader
    import numpy as np
    from pathlib import Path

    root = Path(cfg["store"])
    m = read_manifest(root)
    threads, mode = cfg.get("read_threads", 4), cfg.get("read_mode", "direct")
    layers = min(cfg.get("layers", 4), len(m.layers))
    n = sum(m.layers[i].num_experts for i in range(layers))
    with ExpertReader(root, m, mode=mode, threads=threads) as reader:
        cache = ExpertCache(m.layout, reader, m.layers[0].num_experts * m.expert_bytes,
                            upload=cfg.get("upload", "auto"))
        t0 = time.perf_counter()
        for pos in range(layers):
            cache.acquire(pos, np.arange(m.layers[pos].num_experts))
        secs = time.perf_counter() - t0
        mode_used = reader.stats().mode
    files = [str(root / m.layers[i].file) for i in range(len(m.layers))]
    raw = measure_device_throughput(files, mode=mode, block_bytes=m.layout.record_bytes, threads=threads,
                                    total_bytes=n * m.layout.record_bytes)
    moed_gbps = n * m.layout.record_bytes / secs / 1e9
    return {"experts_read": n, "record_bytes": m.layout.record_bytes, "moed_gb_per_s": moed_gbps,
            "raw": raw, "ratio": moed_gbps / raw["gb_per_s"], "read_mode": mode_used, "threads": threads}


def _forced(model, tokenizer, cfg: dict, on_prefilled=None) -> dict:
    from .workload import corpus_tokens, teacher_forced

    tokens = corpus_tokens(tokenizer, cfg["prompt_len"] + cfg["steps"])
    forced = teacher_forced(model, tokens, cfg["prompt_len"], on_prefilled)
    out = {
        "prompt_tokens": forced.prompt_tokens,
        "prefill_tps": forced.prefill_tps,
        "forced_steps": len(forced.step_seconds),
        "forced_decode_tps": forced.decode_tps,
        "forced_step_ms_p50": 1000 / forced.decode_tps if forced.decode_tps else 0.0,
    }
    return out


def _sampled(model, tokenizer, cfg: dict) -> dict:
    from .workload import corpus_tokens, pipelined, sampled_tps

    out = {}
    if cfg.get("pipelined"):  # teacher forcing in mlx-lm's pipelined loop (step n+1 queued before n is read)
        tokens = corpus_tokens(tokenizer, 17 + cfg["steps"])
        out["pipelined_decode_tps"] = pipelined(model, tokens, cfg["steps"])["tok_s"]
    if cfg.get("sample_tokens"):
        prompt = corpus_tokens(tokenizer, 32)
        out["sampled_decode_tps"] = sampled_tps(model, tokenizer, prompt, cfg["sample_tokens"])
    return out


def backend() -> str:
    """'cuda', 'metal' or 'cpu': where MLX computes by default here."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    cuda = getattr(mx, "cuda", None)
    return "cuda" if cuda is not None and cuda.is_available() else "metal"


def main() -> int:
    cfg = json.loads(sys.argv[1])
    from ..engine import managed

    from .speculation import run_spec, run_spec_ref

    runner = {"mlx-lm": run_mlx_lm, "moed": run_moed, "readpath": run_readpath, "restart": run_restart,
              "resize": run_resize, "spec": run_spec, "spec-ref": run_spec_ref}[cfg["kind"]]
    out = {"config": cfg, **runner(cfg)}
    from ..engine.generate import peak_rss_bytes

    out["peak_rss_bytes"] = peak_rss_bytes()
    out["backend"] = backend()
    out["upload"] = managed.upload_path(cfg.get("upload", "auto"))  # the path the engines' caches used
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
