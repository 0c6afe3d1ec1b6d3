"""Train several fixture recipes at once on one GPU and keep the one that quotes best.

    python -m bench.train_variants OUT_DIR [--only A,C] [--max-seconds S]

Each variant is `python -m bench.train_fixture OUT_DIR/NAME` with the flags in VARIANTS, run as its own process
(one small model leaves most of an H100 idle, so four share it well). The winner is the variant whose 4-bit
checkpoint has the highest held-out copy accuracy among those whose held-out perplexity is at most
--max-ppl-ratio x the unigram's; OUT_DIR/summary.json lists every variant's figures and the winner, and
OUT_DIR/winner is a copy of the winning checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--batch", "32", "--seq-len", "256", "--compile-step", "false", "--eval-every", "50", "--seed", "0"]

# name -> flags beyond COMMON and SHARED. The first two visits (2026-12-06, bench/results/fixture.md) showed:
# random rows of uniform ids, mixed with text from the start, teach text (held-out loss 4.5 by step 400) and a
# copy circuit (~1500 steps) that fires on uniform noise but not on text; a random-only first phase leaves text at
# unigram level; random rows drawn like text (unigram draws, shuffled windows) teach neither in 3000 steps. These
# keep the uniform rows and reward copying *text* that memory cannot recall: shuffled copy rows weighing 1.
VARIANTS: dict[str, list[str]] = {
    "I": ["--random-fraction", "0.6"],
    "J": ["--random-fraction", "0.75"],
    "K": ["--random-fraction", "0.5", "--copy-fraction", "0.75"],
    "L": ["--random-fraction", "0.75", "--dropout", "0.0"],
}
SHARED = ["--steps", "3500", "--random-source", "uniform", "--text-weight", "0.25", "--copy-fraction", "0.5",
          "--shuffled-fraction", "1.0", "--quote-weight", "1.0", "--dropout", "0.1", "--input-noise", "0.0",
          "--patience", "100", "--select-ppl-ratio", "0.5"]


def summarise(out: Path, names: list[str], max_ratio: float) -> dict:
    """Every variant's figures and the winner (None if no variant kept its perplexity under the limit)."""
    rows = {}
    for name in names:
        record = out / name / "training.json"
        if not record.exists():
            rows[name] = {"failed": True}
            continue
        r = json.loads(record.read_text())
        rows[name] = {"flags": SHARED + VARIANTS[name], "best_step": r["best_step"], "steps_run": r["steps_run"],
                      "heldout_ppl_quantized": r["heldout_ppl_quantized"], "unigram_ppl": r["unigram_ppl"],
                      "ppl_ratio": round(r["heldout_ppl_quantized"] / r["unigram_ppl"], 3),
                      "copy_accuracy_quantized": r["heldout_copy_accuracy_quantized"],
                      "random_copy_accuracy_last": r["loss_curve"][-1].get("random_copy_accuracy")}
    eligible = [n for n, r in rows.items() if not r.get("failed") and r["ppl_ratio"] <= max_ratio]
    winner = max(eligible, key=lambda n: rows[n]["copy_accuracy_quantized"], default=None)
    return {"max_ppl_ratio": max_ratio, "variants": rows, "winner": winner}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variant names (default: all)")
    p.add_argument("--max-seconds", default="300", help="each variant's training time limit (after its first step)")
    p.add_argument("--max-ppl-ratio", type=float, default=0.5, help="held-out perplexity / unigram a winner needs")
    a = p.parse_args(argv)
    names = [n for n in a.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    t0, procs = time.perf_counter(), {}
    for name in names:
        cmd = [sys.executable, "-m", "bench.train_fixture", str(a.out / name), *COMMON, *SHARED, *VARIANTS[name],
               "--max-seconds", a.max_seconds, "--note", f"bench/train_variants.py variant {name}"]
        procs[name] = subprocess.Popen(cmd, stdout=(a.out / f"{name}.log").open("w"), stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        print(f"{name}: exit {proc.wait()} after {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarise(a.out, names, a.max_ppl_ratio)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    if summary["winner"]:
        shutil.copytree(a.out / summary["winner"], a.out / "winner", dirs_exist_ok=True)
    return 0 if summary["winner"] else 1


if __name__ == "__main__":
    sys.exit(main())
