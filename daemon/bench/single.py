"""One benchmark configuration, run in its own process; prints one JSON record on stdout.

    python -m moed.daemon.bench.single '{"kind": "mlx-lm", "model": CKPT, ...}'
    python -m moed.daemon.bench.single '{"kind": "moed", "store": STORE, "budget": "25%", "read_mode": "direct", ...}'
    python -m moed.daemon.bench.single '{"kind": "readpath", "store": STORE, "read_mode": "direct", ...}'

Common keys: prompt_len (prefill chunk), steps (teacher-forced decode steps), sample_tokens (seeded sampling run).
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
    load_s = time.perf_counter() - t0
    return {"load_seconds": load_s, **_forced(model, tokenizer, cfg), **_sampled(model, tokenizer, cfg)}


def run_moed(cfg: dict) -> dict:
    from ..engine.model import load_engine

    t0 = time.perf_counter()
    eng = load_engine(cfg["store"], budget=cfg.get("budget"), read_mode=cfg.get("read_mode", "direct"),
                      read_threads=cfg.get("read_threads", 4))
    load_s = time.perf_counter() - t0
    marks: dict = {}

    def snapshot():
        marks["cache"], marks["reader"] = eng.cache.stats(), eng.reader.stats()

    out = _forced(eng.model, eng.tokenizer, cfg, snapshot)
    c, r = eng.cache.stats(), eng.reader.stats()
    c0, r0, steps = marks["cache"], marks["reader"], max(cfg["steps"], 1)
    hits, misses = c.hits - c0.hits, c.misses - c0.misses
    out.update({
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


def run_readpath(cfg: dict) -> dict:
    """Time moed's read path (pread + checksum + copy into the slot bank) filling a cold cache, whole layers at a
    time as a prefill would, next to the raw device throughput of the same files with the same threads."""
    from ..engine.cache import ExpertCache
    from ..store.format import read_manifest
    from ..store.iobench import measure_device_throughput
    from ..store.reader import ExpertReader
    import numpy as np
    from pathlib import Path

    root = Path(cfg["store"])
    m = read_manifest(root)
    threads, mode = cfg.get("read_threads", 4), cfg.get("read_mode", "direct")
    layers = min(cfg.get("layers", 4), len(m.layers))
    n = sum(m.layers[i].num_experts for i in range(layers))
    with ExpertReader(root, m, mode=mode, threads=threads) as reader:
        cache = ExpertCache(m.layout, reader, m.layers[0].num_experts * m.expert_bytes)
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
    from .workload import corpus_tokens, sampled_tps

    if not cfg.get("sample_tokens"):
        return {}
    prompt = corpus_tokens(tokenizer, 32)
    return {"sampled_decode_tps": sampled_tps(model, tokenizer, prompt, cfg["sample_tokens"])}


def main() -> int:
    cfg = json.loads(sys.argv[1])
    runner = {"mlx-lm": run_mlx_lm, "moed": run_moed, "readpath": run_readpath}[cfg["kind"]]
    out = {"config": cfg, **runner(cfg)}
    from ..engine.generate import peak_rss_bytes

    out["peak_rss_bytes"] = peak_rss_bytes()
    out["backend"] = str(mx.default_device())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
