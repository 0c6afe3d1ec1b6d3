"""`moed bench STORE`: decode speed, reads, overlap and memory of moed against mlx-lm on the same checkpoint.

    moed bench STORE [--reference CKPT] [--plan axes|full] [--budgets 100,50,25,12.5] [--depths 0,1,2,3]
                     [--read-modes direct,buffered] [--policies lfu,lru] [--prompt-len 128] [--steps 64]
                     [--sample-tokens 32] [--read-threads 4] [--repeat 1] [--no-restart]
                     [--out FILE.json] [--results bench/results/notebook.md --note "what this run is for"]
    moed bench STORE --clients 1,2,4,8 [--cache-budget 25%] [--steps 32] [--prompt-len 32] [...]

Every configuration runs in its own process: mlx-lm with the whole checkpoint in RAM (--reference), moed at each
point of the plan (see moed.daemon.bench.plan), moed's read path against the raw device throughput, and a warm
restart. Decode is teacher-forced on a fixed text (median step) plus a seeded-sampling run; hit rates are printed
beside budget fractions. Prints a markdown table; --out writes every record as JSON; --results appends the table to
the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark streaming decode against mlx-lm", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--reference", help="the mlx-lm checkpoint the store was converted from")
    p.add_argument("--plan", choices=("axes", "full"), default="axes")
    p.add_argument("--budgets", default="100,50,25,12.5", help="percents of expert bytes")
    p.add_argument("--depths", default="0,1,2,3", help="prefetch depths")
    p.add_argument("--read-modes", default="direct,buffered")
    p.add_argument("--policies", default="lfu,lru")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=32)
    p.add_argument("--read-threads", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (the table shows medians)")
    p.add_argument("--no-restart", action="store_true", help="skip the warm-restart run")
    p.add_argument("--clients", default=None, help="instead: serve STORE and run N concurrent clients at batch "
                   "ceiling N for each N given, e.g. 1,2,4,8 (see moed.daemon.bench.multiclient)")
    p.add_argument("--cache-budget", default="25%", help="with --clients: the daemon's cache budget")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None, help="markdown file to append the table to")
    p.add_argument("--note", default="", help="a line saying what this run is for (goes to --results)")
    p.set_defaults(func=run)


def run_one(cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter; a crash becomes a record with its error."""
    proc = subprocess.run([sys.executable, "-m", "moed.daemon.bench.single", json.dumps(cfg)],
                          capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        return {"config": cfg, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _axes(args: argparse.Namespace):
    from ..bench.plan import Axes

    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    return Axes(budgets=split(args.budgets), depths=tuple(int(x) for x in split(args.depths)),
                modes=split(args.read_modes), policies=split(args.policies))


def run_clients(args: argparse.Namespace) -> int:
    from ..bench.multiclient import run_ceiling, table

    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        rows.append(run_ceiling(args.store, n, args.cache_budget, args.steps, args.prompt_len))
        print(f"[bench] {n} clients: {rows[-1]['aggregate_decode_tps']:.2f} decode tok/s", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    if args.results:
        with open(args.results, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} — {Path(args.store).name}, concurrent clients, "
                    f"budget {args.cache_budget}\n\n{args.note}\n\n`moed bench {args.store} --clients {args.clients}"
                    f" --steps {args.steps} --prompt-len {args.prompt_len}`\n\n{text}\n")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.clients:
        return run_clients(args)
    from ..bench.plan import configs
    from ..bench.report import summarise, table

    common = {"prompt_len": args.prompt_len, "steps": args.steps, "sample_tokens": args.sample_tokens,
              "read_threads": args.read_threads}
    records = []
    for cfg in configs(args.store, args.reference, _axes(args), args.plan, common, not args.no_restart):
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            records.append(run_one(cfg))
            print(f"[bench] {cfg['kind']} {cfg.get('budget', '')} depth={cfg.get('prefetch_depth', '')} "
                  f"{cfg.get('read_mode', '')} {cfg.get('policy', '')}: {time.perf_counter() - t0:.0f} s"
                  + (" ERROR" if "error" in records[-1] else ""), file=sys.stderr, flush=True)
    text = table(summarise(records))
    print(text)
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "backend": next((r.get("backend") for r in records if "backend" in r), None),
            "args": {k: str(v) for k, v in vars(args).items() if k != "func"}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    if args.results:
        with open(args.results, "a") as f:
            f.write(f"\n### {meta['time']} — {Path(args.store).name} on {meta['backend']} "
                    f"({meta['cpus']} CPUs)\n\n{args.note}\n\n`moed bench {args.store} --plan {args.plan} "
                    f"--prompt-len {args.prompt_len} --steps {args.steps} --repeat {args.repeat}`\n\n{text}\n")
    return 1 if any("error" in r for r in records) else 0
