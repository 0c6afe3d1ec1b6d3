"""`moed bench STORE`: decode speed, reads, overlap and memory of moed against mlx-lm on the same checkpoint.

    moed bench STORE [--reference CKPT] [--plan axes|full] [--budgets 100,50,25,12.5] [--depths 0,1,2,3]
                     [--read-modes direct,buffered] [--policies lfu,lru] [--prompt-len 128] [--steps 64]
                     [--sample-tokens 32] [--read-threads 4] [--repeat 1] [--no-restart]
                     [--out FILE.json] [--results bench/results/notebook.md --note "what this run is for"]
    moed bench STORE --clients 1,2,4,8 [--cache-budget 25%] [--steps 32] [--prompt-len 32] [...]
    moed bench STORE --speculation off,lookup[,draft] [--workloads quote,free] [--budgets 100,25]
                     [--max-tokens 64] [--prompts 3] [--draft-model CKPT] [--num-draft K]
                     [--no-adaptive] [--pass-rows 1,2,3,5,9] [--reference CKPT] [--repeat 3]
                     [--out FILE.json] [--results FILE.md --note "..."]

Every configuration runs in its own process: mlx-lm with the whole checkpoint in RAM (--reference), moed at each
point of the plan (see moed.daemon.bench.plan), moed's read path against the raw device throughput, and a warm
restart. Decode is teacher-forced on a fixed text (median step) plus a seeded-sampling run; hit rates are printed
beside budget fractions. Prints a markdown table; --out writes every record as JSON; --results appends the table to
the results file.

With --speculation: greedy generation of fixed-length workloads (moed.daemon.bench.workloads: "quote" continues
a passage quoted in the prompt, "free" continues a passage's start) at each budget and speculation mode, modes
alternated across --repeat rounds (moed.daemon.bench.speculation); the table gives decode tok/s and its ratio to
no speculation, tokens per verification pass, drafts accepted, bytes read per generated token and the hit rate,
and whether the tokens equal those without speculation (and mlx-lm's, with --reference); a second table says
where a generated token's time goes (synchronised layer calls, read back, waiting for reads).
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
    p.add_argument("--speculation", default=None, help="instead: the speculation matrix over these modes, e.g. "
                   "off,lookup or off,lookup,draft (see moed.daemon.bench.speculation)")
    p.add_argument("--workloads", default="quote,free", help="with --speculation: quote, quote-train, free")
    p.add_argument("--max-tokens", type=int, default=64, help="with --speculation: tokens generated per prompt")
    p.add_argument("--prompts", type=int, default=3, help="with --speculation: prompts per workload")
    p.add_argument("--draft-model", default=None, help="with --speculation draft: the draft checkpoint")
    p.add_argument("--num-draft", type=int, default=None, help="with --speculation: the most draft tokens per pass")
    p.add_argument("--no-adaptive", action="store_true", help="with --speculation: always draft up to --num-draft "
                   "tokens (no adaptive K)")
    p.add_argument("--pass-rows", default=None, help="with --speculation: also time one forward pass of each "
                   "of these row counts, e.g. 1,2,3,5,9 (what a verify pass of K drafts costs against a plain step)")
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


def _meta(args: argparse.Namespace, records: list[dict]) -> dict:
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
            "backend": next((r.get("backend") for r in records if "backend" in r), None),
            "args": {k: str(v) for k, v in vars(args).items() if k != "func"}}


def run_speculation(args: argparse.Namespace) -> int:
    from ..bench.plan import spec_configs
    from ..bench.spec_report import pass_cost_lines, profile_table, spec_table, summarise_spec

    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    problem = _speculation_problem(split(args.speculation), split(args.workloads), args) or _store_problem(args)
    if problem:
        print(f"moed bench: {problem}", file=sys.stderr)
        return 2
    common = {"workloads": list(split(args.workloads)), "max_tokens": args.max_tokens, "prompts": args.prompts}
    extra = {"draft_model": args.draft_model, "max_draft": args.num_draft}
    common.update({k: v for k, v in extra.items() if v is not None})
    if args.no_adaptive:
        common["adaptive"] = False
    if args.pass_rows:
        common["pass_rows"] = [int(x) for x in split(args.pass_rows)]
    records, load0 = [], os.getloadavg()
    for cfg in spec_configs(args.store, args.reference, split(args.budgets), split(args.speculation), common,
                            args.repeat):
        t0 = time.perf_counter()
        records.append(run_one(cfg))
        print(f"[bench] {cfg['kind']} {cfg.get('budget', '')} {cfg.get('speculation', '')}: "
              f"{time.perf_counter() - t0:.0f} s" + (" ERROR" if "error" in records[-1] else ""),
              file=sys.stderr, flush=True)
    rows = summarise_spec(records)
    text = spec_table(rows)
    for extra in (profile_table(rows), pass_cost_lines(records)):
        text += f"\n\n{extra}" if extra else ""
    print(text)
    meta = {**_meta(args, records), "loadavg_before": load0}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    if args.results:
        cmd = (f"moed bench {args.store} --speculation {args.speculation} --workloads {args.workloads} "
               f"--budgets {args.budgets} --max-tokens {args.max_tokens} --prompts {args.prompts} "
               f"--repeat {args.repeat}" + (f" --reference {args.reference}" if args.reference else "")
               + (f" --pass-rows {args.pass_rows}" if args.pass_rows else "")
               + (f" --num-draft {args.num_draft}" if args.num_draft else "")
               + (" --no-adaptive" if args.no_adaptive else ""))
        with open(args.results, "a") as f:
            f.write(f"\n### {meta['time']} — {Path(args.store).name}, speculation {args.speculation}, on "
                    f"{meta['backend']} ({meta['cpus']} CPUs, load {load0[0]:.1f} before / "
                    f"{meta['loadavg'][0]:.1f} after)\n\n{args.note}\n\n`{cmd}`\n\n{text}\n")
    return 1 if any("error" in r for r in records) else 0


def _store_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with STORE (not a store, no such name), checked before any configuration runs; else None,
    with args.store resolved to its folder (a pulled store may be given by name)."""
    from ..store.format import StoreError, read_manifest
    from ..store.registry import resolve_store

    try:
        args.store = str(resolve_store(args.store))
        read_manifest(args.store)
    except StoreError as e:
        return str(e)
    return None


def _speculation_problem(modes: tuple[str, ...], workloads: tuple[str, ...], args: argparse.Namespace) -> str | None:
    """What is wrong with the speculation matrix's settings, checked before any configuration runs; None if nothing."""
    from ..bench.workloads import WORKLOADS
    from ..speculation import SpeculationConfig

    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        return f"--workloads {args.workloads!r}: give some of {', '.join(WORKLOADS)}, separated by commas"
    if not modes:
        return "--speculation: give modes separated by commas, e.g. off,lookup"
    try:
        for mode in modes:
            SpeculationConfig(mode=mode, draft_model=args.draft_model if mode == "draft" else None,
                              **({"max_draft": args.num_draft} if args.num_draft is not None else {}))
    except ValueError as e:
        return f"--speculation {args.speculation}: {e}"
    return None


def run(args: argparse.Namespace) -> int:
    if args.speculation:  # its settings are checked first, then the store (run_speculation)
        return run_speculation(args)
    problem = _store_problem(args)
    if problem:
        print(f"moed bench: {problem}", file=sys.stderr)
        return 2
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
    meta = _meta(args, records)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    if args.results:
        with open(args.results, "a") as f:
            f.write(f"\n### {meta['time']} — {Path(args.store).name} on {meta['backend']} "
                    f"({meta['cpus']} CPUs)\n\n{args.note}\n\n`moed bench {args.store} --plan {args.plan} "
                    f"--prompt-len {args.prompt_len} --steps {args.steps} --repeat {args.repeat}`\n\n{text}\n")
    return 1 if any("error" in r for r in records) else 0
