"""`moed bench STORE`: decode speed, reads and memory of moed against mlx-lm on the same checkpoint.

    moed bench STORE [--reference CKPT] [--budgets 100,25] [--read-modes direct] [--prompt-len 128]
                     [--steps 64] [--sample-tokens 64] [--read-threads 4] [--repeat 1] [--out FILE.json]

Runs, each in its own process: mlx-lm with the whole checkpoint in RAM (when --reference is given), moed at each
budget (percent of expert bytes) and read mode, and moed's read path against the raw device throughput. Decode is
teacher-forced on a fixed text (median step), plus a seeded-sampling run; every hit rate is printed beside its
budget fraction. Prints a table; writes all records as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark streaming decode against mlx-lm", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--reference", help="the mlx-lm checkpoint the store was converted from")
    p.add_argument("--budgets", default="100,25", help="comma-separated percents of expert bytes")
    p.add_argument("--read-modes", default="direct", help="comma-separated: direct, buffered")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--sample-tokens", type=int, default=64)
    p.add_argument("--read-threads", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (the table shows medians)")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=run)


def _configs(args: argparse.Namespace) -> list[dict]:
    common = {"prompt_len": args.prompt_len, "steps": args.steps, "sample_tokens": args.sample_tokens,
              "read_threads": args.read_threads}
    cfgs = []
    if args.reference:
        cfgs.append({"kind": "mlx-lm", "model": args.reference, **common})
    for mode in args.read_modes.split(","):
        for b in args.budgets.split(","):
            cfgs.append({"kind": "moed", "store": args.store, "budget": f"{b}%", "read_mode": mode, **common})
        cfgs.append({"kind": "readpath", "store": args.store, "read_mode": mode, "read_threads": args.read_threads})
    return cfgs


def run_one(cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter; a crash becomes a record with its error."""
    proc = subprocess.run([sys.executable, "-m", "moed.daemon.bench.single", json.dumps(cfg)],
                          capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        return {"config": cfg, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _row(recs: list[dict]) -> str:
    r, cfg = recs[0], recs[0]["config"]
    if "error" in r:
        return f"{cfg['kind']:<9} ERROR {r['error'][:200]}"
    if cfg["kind"] == "readpath":
        return (f"{'readpath':<9} {r['read_mode']:<9} moed {_median([x['moed_gb_per_s'] for x in recs]):.2f} GB/s"
                f" vs raw device {_median([x['raw']['gb_per_s'] for x in recs]):.2f} GB/s"
                f" ({_median([x['ratio'] for x in recs]):.0%}), {r['threads']} threads, {r['record_bytes']} B records")
    name = "mlx-lm" if cfg["kind"] == "mlx-lm" else f"moed {cfg['budget']}"
    mode = cfg.get("read_mode", "ram")
    line = (f"{name:<10} {mode:<9} prefill {_median([x['prefill_tps'] for x in recs]):7.1f} tok/s | forced decode "
            f"{_median([x['forced_decode_tps'] for x in recs]):6.2f} tok/s | sampled "
            f"{_median([x.get('sampled_decode_tps', 0) for x in recs]):6.2f} tok/s | peak RSS "
            f"{r['peak_rss_bytes'] / 1e9:.2f} GB")
    if cfg["kind"] == "moed":
        line += (f" | budget {r['budget_fraction']:.1%} hit {_median([x['decode_hit_rate'] for x in recs]):.1%}"
                 f" read {_median([x['decode_bytes_read_per_token'] for x in recs]) / 1e6:.1f} MB/tok")
    return line


def run(args: argparse.Namespace) -> int:
    records, rows = [], []
    for cfg in _configs(args):
        recs = [run_one(cfg) for _ in range(args.repeat)]
        records.extend(recs)
        rows.append(_row(recs))
        print(rows[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "records": records}, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in records) else 0
