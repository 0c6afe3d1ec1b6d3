"""mlx-lm against moed at a 100 % budget, paired in one process and alternated; prints (or writes) JSON.

    python -m bench.paired CKPT STORE [--rounds 5] [--tokens 128] [--uploads auto] [--bare]
                          [--out paired.json]

Separate processes on the lent GPU machine measured mlx-lm's own decode at 190-290 tok/s in identical runs: a
ratio of two such runs says little. Here mlx-lm's model and moed's engines (one per upload path named, each filled
before timing) live in one process, and every round measures each of them in turn, the order rotated each round:

  * sampled: mlx-lm's `stream_generate` with seeded temperature-1 sampling (its pipelined loop, detokenising);
  * pipelined: teacher forcing on the benchmark text in mlx-lm's pipelined loop (workload.pipelined);
  * forced: teacher forcing, each step evaluated before the next is built (the median step).

`--bare` adds a contestant: the first moed engine with its routing bookkeeping switched off (`defer` a no-op),
which says what the bookkeeping costs. The record gives each contestant's values per round and their medians, and
per moed contestant the median over rounds of its ratio to mlx-lm in the same round, plus the engine's synced
layer calls during the rounds (0 at a full budget: no host synchronisation).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from contextlib import contextmanager
from typing import Callable, Iterator

import mlx.core as mx

MEASURES = ("sampled", "pipelined", "forced")


def measure(model, tokenizer, tokens: int) -> dict[str, float]:
    """One round of the three measures for one model: decode tok/s each."""
    from moed.daemon.bench.workload import corpus_tokens, pipelined, sampled_tps, teacher_forced

    text = corpus_tokens(tokenizer, 17 + tokens)
    return {
        "sampled": sampled_tps(model, tokenizer, text[:32], tokens),
        "pipelined": pipelined(model, text, tokens)["tok_s"],
        "forced": teacher_forced(model, text[: 16 + tokens], 16).decode_tps,
    }


@contextmanager
def _as_is() -> Iterator[None]:
    yield


@contextmanager
def _no_bookkeeping(cache) -> Iterator[None]:
    cache.bookkeeping = False
    try:
        yield
    finally:
        cache.bookkeeping = True


def run(contestants: list[tuple[str, object, object, Callable]], rounds: int, tokens: int,
        baseline: str = "mlx-lm") -> dict:
    """contestants: (name, model, tokenizer, context factory) each. Round r starts with contestant r mod n."""
    values: dict[str, dict[str, list[float]]] = {name: {m: [] for m in MEASURES} for name, *_ in contestants}
    for name, model, tok, ctx in contestants:  # warm-up: kernels compiled, pages where they go
        with ctx():
            measure(model, tok, 8)
    for r in range(rounds):
        for i in range(len(contestants)):
            name, model, tok, ctx = contestants[(r + i) % len(contestants)]
            with ctx():
                for m, v in measure(model, tok, tokens).items():
                    values[name][m].append(v)
    out = {"rounds": rounds, "tokens": tokens, "values": values,
           "median": {n: {m: statistics.median(v) for m, v in ms.items()} for n, ms in values.items()}}
    if baseline in values:
        base = values[baseline]
        out["ratio"] = {n: {m: statistics.median(a / b for a, b in zip(v, base[m]) if b) for m, v in ms.items()}
                        for n, ms in values.items() if n != baseline}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("store")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--uploads", default="auto", help="moed engines, one per upload path (managed.py): auto,copy,plain")
    ap.add_argument("--bare", action="store_true", help="also the first engine with its bookkeeping off")
    ap.add_argument("--out", help="write the JSON here as well as printing it")
    a = ap.parse_args()
    from mlx_lm import load

    from moed.daemon.bench.single import backend
    from moed.daemon.engine import managed
    from moed.daemon.engine.model import load_engine
    from moed.daemon.config import engine_config

    model, tok = load(a.ckpt)
    mx.eval(model.parameters())
    contestants = [("mlx-lm", model, tok, _as_is)]
    engines = []
    for upload in [u for u in a.uploads.split(",") if u]:
        name = f"moed-{managed.upload_path(upload)}"  # off CUDA every path is "plain": one engine
        if any(name == n for n, _ in engines):
            continue
        eng = load_engine(engine_config(a.store, read_mode="buffered"), upload=upload)
        eng.cache.wait_loads()
        engines.append((name, eng))
        contestants.append((name, eng.model, eng.tokenizer, _as_is))
    if a.bare and engines:
        name, eng = engines[0]
        contestants.append((f"{name}-bare", eng.model, eng.tokenizer, lambda c=eng.cache: _no_bookkeeping(c)))
    before = {name: eng.cache.stats().acquires for name, eng in engines}
    result = run(contestants, a.rounds, a.tokens)
    for name, eng in engines:
        eng.cache.flush()
        result.setdefault("synced_calls", {})[name] = eng.cache.stats().acquires - before[name]
        eng.close()
    gc.collect()
    result["backend"] = backend()
    text = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
