"""`moed demo`: the built-in default job, end to end, on a fresh machine.

    moed demo [--dir DIR] [--arch qwen3_moe] [--size small] [--cache-budget 25%] [--max-tokens 64]

On first run it makes a deterministic random-weight MoE checkpoint (mlx-lm layout, 4-bit), converts it into a
packed expert store, then streams a generation from the store with only part of the experts in memory, and
prints the stats. Later runs reuse the store. DIR defaults to moed's data folder (see moed.daemon.paths).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="make a demo model and stream a generation from it", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="where the demo model and store live")
    p.add_argument("--arch", default="qwen3_moe")
    p.add_argument("--size", default="small")
    p.add_argument("--cache-budget", default="25%")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="Four score and seven years ago our fathers brought forth")
    p.set_defaults(func=run)


def ensure_store(base: Path, arch: str, size: str) -> Path:
    """The demo store under `base`, made (checkpoint, then conversion) if it is not there yet."""
    from ..store.convert import convert
    from ..store.format import MANIFEST
    from ..testmodel import make_test_model

    ckpt, store = base / f"{arch}-{size}-mlx", base / f"{arch}-{size}-store"
    if (store / MANIFEST).is_file():
        return store
    base.mkdir(parents=True, exist_ok=True)
    if not (ckpt / "config.json").is_file():
        print(f"making a random-weight {arch} ({size}) checkpoint in {ckpt}", file=sys.stderr)
        make_test_model(ckpt, arch=arch, size=size, layout="mlx", bits=4, dtype="float32")  # fp32: fast on CPU
    print(f"converting {ckpt} into the packed expert store {store}", file=sys.stderr)
    convert(ckpt, store, progress=lambda msg: print(msg, file=sys.stderr))
    return store


def run(args: argparse.Namespace) -> int:
    from ..paths import data_dir
    from .generate import run as generate

    store = ensure_store(args.dir or data_dir() / "demo", args.arch, args.size)
    print(f"streaming from {store} with a {args.cache_budget} expert cache:\n", file=sys.stderr)
    gen_args = argparse.Namespace(
        store=str(store), prompt=args.prompt, max_tokens=args.max_tokens, temp=0.8, top_p=0.95, top_k=0,
        min_p=0.0, seed=0, cache_budget=args.cache_budget, read_mode="direct", read_threads=4, chat=False,
        json=False, prefetch_depth=1, policy="lfu",
    )
    return generate(gen_args)
