"""`moed demo`: the built-in default job, end to end, on a fresh machine.

    moed demo [--dir DIR] [--arch qwen3_moe] [--size small] [--cache-budget 25%] [--max-tokens 64] [--in-process]
              [--read-mode ...] [--read-threads N] [--cache-policy ...] [--prefetch-depth N]

On first run it makes a deterministic random-weight MoE checkpoint (mlx-lm layout, 4-bit, float32 scales: the
fast kind on MLX's CPU backend), converts it into a packed expert store, then starts `moed serve` on a private
endpoint with only part of the experts in memory, streams a generation to a client (moed.clients.Client), prints
the stats and stops the daemon. Later runs reuse the store. `--in-process` skips the daemon and runs the engine
directly (`moed generate`). DIR defaults to moed's data folder (see moed.daemon.paths). The engine flags are the
config keys of `moed serve` and `moed generate` (options.py) and are handed to either through its own parser.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .options import ENGINE_FLAGS, add_flags, as_argv, given

DEMO_BUDGET = "25%"  # only part of the experts in memory: the point of the demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="make a demo model, serve it, and stream a generation", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="where the demo model and store live")
    p.add_argument("--arch", default="qwen3_moe")
    p.add_argument("--size", default="small")
    add_flags(p, ENGINE_FLAGS, defaults={"cache_budget": DEMO_BUDGET})
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="Four score and seven years ago our fathers brought forth")
    p.add_argument("--in-process", action="store_true", help="run the engine in this process, without the daemon")
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
        make_test_model(ckpt, arch=arch, size=size, layout="mlx", bits=4, dtype="float32")
    print(f"converting {ckpt} into the packed expert store {store}", file=sys.stderr)
    convert(ckpt, store, progress=lambda msg: print(msg, file=sys.stderr))
    return store


def run(args: argparse.Namespace) -> int:
    from ..paths import data_dir

    store = ensure_store(args.dir or data_dir() / "demo", args.arch, args.size)
    if args.in_process:
        return _in_process(args, store)
    with tempfile.TemporaryDirectory(prefix="moed-demo-") as tmp:
        endpoint = f"ipc://{tmp}/moed.sock"
        cmd = [sys.executable, "-m", "moed.daemon.cli", "serve", str(store), "--endpoint", endpoint,
               *as_argv(given(args, ENGINE_FLAGS), ENGINE_FLAGS), "--log-level", "warning"]
        print(f"starting: {' '.join(cmd[2:])}", file=sys.stderr)
        daemon = subprocess.Popen(cmd, env={**os.environ, "MOED_STATE_DIR": f"{tmp}/state"})
        try:
            return _stream(endpoint, daemon, args)
        finally:
            _stop(endpoint, daemon)


def _wait_ready(endpoint: str, daemon: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll status until the daemon says ready (False if it died or the time ran out)."""
    from moed.clients import Client, MoedError

    deadline = time.monotonic() + timeout
    while daemon.poll() is None and time.monotonic() < deadline:
        try:
            with Client(endpoint, timeout=5) as c:
                if c.status().state == "ready":
                    return True
        except MoedError:  # not bound yet, or still loading
            pass
        time.sleep(0.2)
    return False


def _stream(endpoint: str, daemon: subprocess.Popen, args: argparse.Namespace) -> int:
    from moed.clients import Chunk, Client, MoedError

    if not _wait_ready(endpoint, daemon):
        print("moed demo: the daemon did not become ready", file=sys.stderr)
        return 1
    with Client(endpoint, timeout=120) as client:
        print(f"streaming from the daemon with a {args.cache_budget} expert cache:\n", file=sys.stderr)
        try:
            stream = client.generate(args.prompt, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95, seed=0)
            for event in stream:
                if isinstance(event, Chunk):
                    print(event.text, end="", flush=True)
            r = stream.result
        except MoedError as e:
            print(f"\nmoed demo: {e}", file=sys.stderr)
            return 1
        cache = client.status().cache
    print(f"\n\n{r.prompt_tokens} prompt tokens, {r.generated_tokens} generated ({r.done_reason}): "
          f"prefill {r.prefill_tps:.1f} tok/s, decode {r.decode_tps:.1f} tok/s; hit rate {r.hit_rate:.1%}, "
          f"{r.bytes_read / 1e6:.1f} MB read; cache {cache.get('used_bytes', 0) / 1e6:.1f} of "
          f"{cache.get('budget_bytes', 0) / 1e6:.1f} MB in use", file=sys.stderr)
    return 0


def _stop(endpoint: str, daemon: subprocess.Popen) -> None:
    from moed.clients import Client, MoedError

    if daemon.poll() is None:
        try:
            with Client(endpoint, timeout=10) as c:
                c.shutdown()
        except MoedError:
            daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()


def _in_process(args: argparse.Namespace, store: Path) -> int:
    from ..cli import build_parser

    print(f"streaming in-process from {store} with a {args.cache_budget} expert cache:\n", file=sys.stderr)
    gen = build_parser().parse_args(["generate", "--max-tokens", str(args.max_tokens), "--temp", "0.8",
                                     "--top-p", "0.95", "--seed", "0",
                                     *as_argv(given(args, ENGINE_FLAGS), ENGINE_FLAGS), "--", str(store), args.prompt])
    return int(gen.func(gen) or 0)
