"""Many clients against one daemon: aggregate decode tok/s, bytes read per generated token, inter-token gaps.

    python -m moed.daemon.bench.multiclient STORE [--ceilings 1,2,4,8] [--cache-budget 25%] [--max-tokens 32]
                                           [--prompt-tokens 32] [--out FILE.json]
    (also: moed bench STORE --clients 1,2,4,8 ...)

For each batch ceiling N it starts `moed serve` (its own process, a fresh ipc endpoint and state folder), then N
concurrent clients each stream one generation with seeded temperature-1 sampling (so sequences route differently;
greedy decoding of a random model would repeat one token), each with a different slice of the fixed benchmark
text as its prompt. Measured at the clients: aggregate decode tok/s (tokens after each stream's first, over the
time from the earliest first token to the latest last one), end-to-end tok/s (all generated tokens over the wall
time from the first request to the last final, prefill included), the gap between consecutive chunks of each
stream (p50, p99), from the finals' stats the bytes read per generated token (prefill included), and from the
daemon's traffic counters the bytes read per token of pure decode steps (no prompt rows in them): the figure
batching's shared reads act on. A warm-up request runs first so the model and the cache's first fill are not
timed; at a budget that holds every expert, the timed round waits for the daemon's preload; then the N prompts run
once for 2 tokens (`cold_round_s`: on a GPU a batch size's first use compiles kernels), and then the timed round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def _one(client, prompt: str, max_tokens: int, seed: int) -> tuple[list[float], object]:
    from moed.clients import Chunk

    stamps: list[float] = []
    async with client.generate(prompt, max_tokens=max_tokens, temperature=1.0, seed=seed) as stream:
        async for event in stream:
            if isinstance(event, Chunk):
                stamps.extend([time.perf_counter()] * max(1, len(event.tokens)))
        return stamps, stream.result


async def _round(endpoint: str, prompts: list[str], max_tokens: int) -> dict:
    from moed.clients import AsyncClient

    async with AsyncClient(endpoint, timeout=600) as client:
        t0 = time.perf_counter()
        outs = await asyncio.gather(*[_one(client, p, max_tokens, seed=i) for i, p in enumerate(prompts)])
        wall = time.perf_counter() - t0
    gaps = [b - a for stamps, _ in outs for a, b in zip(stamps, stamps[1:])]
    tokens = sum(r.generated_tokens for _, r in outs)
    # decode phase: from the earliest first token to the latest last token; each stream's first token came
    # out of its prefill, so it is not counted as decoded
    firsts, lasts = [s[0] for s, _ in outs if s], [s[-1] for s, _ in outs if s]
    decoded = sum(max(0, len(s) - 1) for s, _ in outs)
    decode_s = max(lasts) - min(firsts) if firsts else 0.0
    return {
        "clients": len(prompts), "wall_s": wall, "generated_tokens": tokens,
        "aggregate_tps": tokens / wall,
        "aggregate_decode_tps": decoded / decode_s if decode_s > 0 else 0.0,
        "bytes_read_per_token": sum(r.bytes_read for _, r in outs) / max(tokens, 1),
        "gap_p50_ms": 1000 * _percentile(gaps, 0.5), "gap_p99_ms": 1000 * _percentile(gaps, 0.99),
        "hit_rate": sum(r.cache_hits for _, r in outs) / max(1, sum(r.cache_hits + r.cache_misses for _, r in outs)),
    }


def _prompts(n: int, prompt_tokens: int) -> list[str]:
    """n different slices of the benchmark text, about prompt_tokens tokens each."""
    from ..testmodel import corpus_text

    words = corpus_text().split()
    size = max(4, int(prompt_tokens * 0.7))  # ~1.4 tokens per word with the test tokenizer
    return [" ".join(words[i * 997 % (len(words) - size):][:size]) for i in range(n)]


def run_ceiling(store: str, ceiling: int, budget: str, max_tokens: int, prompt_tokens: int) -> dict:
    """Start a daemon with batch ceiling `ceiling`, run `ceiling` concurrent clients, stop it."""
    with tempfile.TemporaryDirectory(prefix="moed-b") as tmp:
        endpoint = f"ipc://{tmp}/d.sock"
        env = {**os.environ, "MOED_STATE_DIR": f"{tmp}/state"}
        cmd = [sys.executable, "-m", "moed.daemon.cli", "serve", store, "--endpoint", endpoint,
               "--cache-budget", budget, "--max-batch", str(ceiling), "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        try:
            _wait_ready(endpoint, proc)
            asyncio.run(_round(endpoint, _prompts(1, prompt_tokens), 4))  # warm-up, not timed
            _wait_filled(endpoint, store, prompt_tokens)
            # the same N prompts for 2 tokens first: a batch size's first use compiles its kernels on a GPU
            # (seconds there), which is not what the timed round measures; reported as cold_round_s
            cold = asyncio.run(_round(endpoint, _prompts(ceiling, prompt_tokens), 2))["wall_s"]
            before = _traffic(endpoint)
            out = asyncio.run(_round(endpoint, _prompts(ceiling, prompt_tokens), max_tokens))
            out["cold_round_s"] = cold
            after = _traffic(endpoint)
            decoded = after["decode_tokens"] - before["decode_tokens"]
            out["decode_bytes_read_per_token"] = (after["decode_bytes_read"] - before["decode_bytes_read"]) / max(
                decoded, 1)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"ceiling": ceiling, "budget": budget, **out}


def _traffic(endpoint: str) -> dict:
    """The daemon's expert traffic counters by phase (status `cache` map)."""
    from moed.clients import Client

    with Client(endpoint, timeout=10) as c:
        cache = c.status().cache
    return {k: cache.get(k, 0) for k in ("decode_tokens", "decode_bytes_read", "prefill_bytes_read")}


def _wait_filled(endpoint: str, store: str, prompt_tokens: int, timeout: float = 300) -> None:
    """At a budget that holds every expert, the daemon preloads them in the background: run warm-up requests
    until it has, so the timed round runs all resident (as mlx-lm's all-in-memory reference does)."""
    from moed.clients import Client
    from ..store.format import read_manifest

    m = read_manifest(store)
    total = sum(layer.num_experts for layer in m.layers) * m.layout.record_bytes
    deadline = time.monotonic() + timeout
    with Client(endpoint, timeout=10) as c:
        if c.status().cache.get("slots", 0) * m.expert_bytes < m.total_expert_bytes:
            return
        while c.status().cache.get("bytes_loaded", 0) < total and time.monotonic() < deadline:
            asyncio.run(_round(endpoint, _prompts(1, prompt_tokens), 2))  # lets the daemon settle finished reads


def _wait_ready(endpoint: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    from moed.clients import Client, MoedError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moed serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with Client(endpoint, timeout=2) as c:
                if c.status().state == "ready":
                    return
        except MoedError:
            pass
        time.sleep(0.5)
    raise RuntimeError("moed serve did not become ready")


def table(rows: list[dict]) -> str:
    base = rows[0]["aggregate_decode_tps"] if rows else 0.0
    lines = ["| batch ceiling = clients | aggregate decode tok/s | vs 1 client | end-to-end tok/s (with prefill) | "
             "MB read / generated token (all) | MB read / decoded token (decode steps) | hit rate | "
             "inter-token gap p50 / p99 ms | cold round s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['ceiling']} | {r['aggregate_decode_tps']:.2f} | {r['aggregate_decode_tps'] / base:.2f} | "
                     f"{r['aggregate_tps']:.2f} | "
                     f"{r['bytes_read_per_token'] / 1e6:.1f} | {r.get('decode_bytes_read_per_token', 0) / 1e6:.1f} | "
                     f"{r['hit_rate']:.1%} | "
                     f"{r['gap_p50_ms']:.0f} / {r['gap_p99_ms']:.0f} | {r.get('cold_round_s', 0):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moed.daemon.bench.multiclient", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--ceilings", default="1,2,4,8")
    p.add_argument("--cache-budget", default="25%")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.ceilings.split(",")):
        rows.append(run_ceiling(args.store, n, args.cache_budget, args.max_tokens, args.prompt_tokens))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
