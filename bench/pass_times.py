"""Where a speculating request's time goes, pass by pass: each Decoder step timed, against plain decoding.

    python -m bench.pass_times STORE --budget 25% --tokens 128 --prompts 3 [--workload free] [--out F.json]

For each prompt of the workload: mode "off" (the engine's mlx-lm loop: the time between yielded tokens) and mode
"lookup" (each Decoder.step: its seconds, rows and tokens emitted). Summarised per mode: median ms of a plain token,
every verification pass (rows, ms, tokens), the plain steps right after a pass (a run restarting: its first step
is not pipelined), and the total decode seconds. One warm-up generation first, as the speculation bench does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def _run(eng, ids, n, speculation, passes):
    from moed.daemon.engine.generate import generate

    kw = {"speculation": speculation} if speculation is not None else {}
    stamps = []
    for _ in generate(eng, ids, max_tokens=n, temp=0.0, **kw):
        stamps.append(time.perf_counter())
    return stamps


def measure(store: str, budget: str, tokens: int, prompts: int, workload: str) -> dict:
    from moed.daemon.bench.speculation import WARMUP_TOKENS, _ignore_eos
    from moed.daemon.bench.workloads import prompts as workload_prompts
    from moed.daemon.config import engine_config
    from moed.daemon.engine import speculative_loop
    from moed.daemon.engine.model import load_engine
    from moed.daemon.speculation import SpeculationConfig

    passes: list[dict] = []
    step = speculative_loop.Decoder.step

    def timed(self, index, limit):
        t0 = time.perf_counter()
        toks, drafted, accepted = step(self, index, limit)
        passes.append({"ms": (time.perf_counter() - t0) * 1e3, "rows": drafted + 1 if drafted else 1,
                       "tokens": len(toks)})
        return toks, drafted, accepted

    speculative_loop.Decoder.step = timed
    eng = load_engine(engine_config(store, cache_budget=budget))
    eng.cache.wait_loads()
    _ignore_eos(eng.tokenizer)
    lookup = SpeculationConfig(mode="lookup")
    work = workload_prompts(workload, eng.tokenizer, count=prompts, max_tokens=tokens)
    for spec in (None, lookup):
        _run(eng, list(work[0].ids[:16]), WARMUP_TOKENS, spec, passes)
    out = {"store": store, "budget": budget, "workload": workload, "prompts": []}
    for p in work:
        row = {}
        for name, spec in (("off", None), ("lookup", lookup), ("off2", None)):
            passes.clear()
            stamps = _run(eng, list(p.ids), tokens, spec, passes)
            gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
            r = {"decode_ms": (stamps[-1] - stamps[0]) * 1e3, "median_gap_ms": statistics.median(gaps)}
            if spec is not None:
                plain = [q["ms"] for q in passes if q["rows"] == 1]
                ver = [i for i, q in enumerate(passes) if q["rows"] > 1]
                r["plain_median_ms"] = statistics.median(plain) if plain else None
                r["verify"] = [passes[i] for i in ver]
                r["after_verify_ms"] = [round(passes[i + 1]["ms"], 2) for i in ver if i + 1 < len(passes)]
                r["passes"] = len(passes)
            row[name] = r
        out["prompts"].append(row)
        print(json.dumps({k: {x: (round(y, 2) if isinstance(y, float) else y) for x, y in v.items()}
                          for k, v in row.items()}), flush=True)
    eng.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--budget", default="25%")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--workload", default="free")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    r = measure(a.store, a.budget, a.tokens, a.prompts, a.workload)
    if a.out:
        a.out.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
