"""Where a decode step's time goes, mlx-lm against moed at a 100 % budget, in one process; prints JSON.

    python -m bench.steps CKPT STORE [--steps 48] [--batch 1,4] [--variants] > steps.json

For each model: the median teacher-forced step split into graph building (Python) and evaluation (device), the
step of a pipelined loop (the next step's graph is built while the device computes the current one, as mlx-lm's
generate loop does), and mlx-lm's BatchGenerator decoding N sequences in this process (aggregate tok/s). With
`--variants`, moed is also measured with its routing bookkeeping switched off (ExpertCache.bookkeeping: what
the bookkeeping costs), with its bank rows copied to fresh device arrays (ExpertCache.copied_rows: what computing
over slot-bank views costs), the per-layer-sync path (ExpertCache.unsynced off), and on CUDA with the banks
filled through page faults (load_engine(upload="plain"), managed.py's plain path). Built for the GPU, where
compute is fast and these costs show.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import mlx.core as mx

from moed.daemon.bench.workload import corpus_tokens, pipelined


def _med(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] * 1000 if values else 0.0


def split(model, tokens: list[int], steps: int) -> dict:
    """Median build ms and eval ms of unpipelined teacher-forced steps (prompt of 16 first)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    mx.eval(model(mx.array(tokens[:16])[None], cache=cache))
    build, run = [], []
    for tok in tokens[16 : 16 + steps]:
        t0 = time.perf_counter()
        out = model(mx.array([[tok]]), cache=cache)
        t1 = time.perf_counter()
        mx.eval(out)
        build.append(t1 - t0)
        run.append(time.perf_counter() - t1)
    return {"build_ms": _med(build), "eval_ms": _med(run), "step_ms": _med(build) + _med(run)}


def batched(model, tokenizer, n: int, steps: int) -> dict:
    """mlx-lm's BatchGenerator decoding n sequences of 32-token prompts: aggregate decode tok/s after prefill."""
    from mlx_lm.generate import BatchGenerator

    text = corpus_tokens(tokenizer, 32 * n + 32)
    bg = BatchGenerator(model, stop_tokens=[], completion_batch_size=max(n, 1), prefill_batch_size=max(n, 1))
    bg.insert([text[32 * i : 32 * i + 32] for i in range(n)], max_tokens=[steps + 8] * n)
    made, t0 = 0, None
    while made < steps * n:  # max_tokens leaves 8 to spare: no sequence ends first
        _, gen = bg.next()
        if t0 is None:
            if len(gen) == n:
                t0 = time.perf_counter()  # every sequence decoding: start the clock
            continue
        made += len(gen)
    secs = time.perf_counter() - t0
    bg.close()
    return {"sequences": n, "tokens": made, "tok_s": made / secs}


def profile(model, tokenizer, steps: int, batch: list[int]) -> dict:
    tokens = corpus_tokens(tokenizer, 16 + steps + 2)
    split(model, tokens, 8)  # warm-up: kernels compiled, pages where they go
    out = {"split": split(model, tokens, steps), "pipelined": pipelined(model, tokens, steps)}
    out["batch"] = [batched(model, tokenizer, n, steps) for n in batch]
    return out


def moed_variants(eng, tokens: list[int], steps: int) -> dict:
    cache, out = eng.cache, {}
    cache.bookkeeping = False  # no routing bookkeeping at all
    out["no_bookkeeping"] = {"split": split(eng.model, tokens, steps), "pipelined": pipelined(eng.model, tokens, steps)}
    cache.bookkeeping = True
    cache.flush()
    split(eng.model, tokens, 15)  # leaves the routing of up to 16 computed steps deferred
    steps_deferred, t0 = cache.deferred_steps, time.perf_counter()
    cache.flush()
    out["flush_ms_per_step"] = (time.perf_counter() - t0) * 1000 / max(steps_deferred, 1)
    cache.copied_rows = True  # same numbers, in arrays the device computed itself
    out["fresh_rows"] = {"split": split(eng.model, tokens, steps), "pipelined": pipelined(eng.model, tokens, steps)}
    cache.copied_rows = False
    cache.unsynced = False
    out["synced"] = {"split": split(eng.model, tokens, steps)}
    cache.unsynced = True
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("store")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--variants", action="store_true")
    a = ap.parse_args()
    batch = [int(x) for x in a.batch.split(",") if x]
    from mlx_lm import load

    from moed.daemon.engine import managed
    from moed.daemon.engine.model import load_engine
    from moed.daemon.bench.single import backend
    from moed.daemon.config import engine_config

    model, tok = load(a.ckpt)
    mx.eval(model.parameters())
    result = {"backend": backend(), "upload": managed.upload_path(), "mlx-lm": profile(model, tok, a.steps, batch)}
    del model
    gc.collect()
    mx.clear_cache()
    eng = load_engine(engine_config(a.store, read_mode="buffered"))
    eng.cache.wait_loads()
    result["moed"] = profile(eng.model, eng.tokenizer, a.steps, batch)
    tokens = corpus_tokens(eng.tokenizer, 16 + a.steps + 2)
    if a.variants:
        result["moed_variants"] = moed_variants(eng, tokens, a.steps)
    eng.close()
    if a.variants and managed.upload_path() != "plain":  # a fresh engine filled through page faults instead
        del eng
        gc.collect()
        mx.clear_cache()
        with load_engine(engine_config(a.store, read_mode="buffered"), upload="plain") as eng:
            eng.cache.wait_loads()
            split(eng.model, tokens, 8)
            result["moed_variants"]["upload_plain"] = {"split": split(eng.model, tokens, a.steps),
                                                       "pipelined": pipelined(eng.model, tokens, a.steps)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
