"""Choose a cache policy on one part of the traces and report it on the other (policy_replay.py underneath).

    python -m bench.routing_tune TRACE.npz [TRACE.npz ...] [--half-lives 2,4,8,16,32,64,128,256]
        [--budgets 0.125,0.25,0.5] [--depths 0,1] [--warmup 32] [--default moed-lfu@16] [--out tune.json]

Tuning: every candidate (moed's LFU at each half-life in tokens, moed's LRU, LRU, LFU, LFUDA) is replayed on the
first half of each trace's tokens; its score is the mean hit rate over the budgets and depths given. Report: the
best candidate, the default it is to beat (`--default`; moed's own: LFU at HALF_LIFE_TOKENS, slot_policy.py) and
the references (LRU, Belady) replayed on the second half, with the fraction of the LRU-to-Belady gap each closes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from moed.daemon.engine.slot_policy import HALF_LIFE_TOKENS

from .policy_replay import run, table

DEFAULT = f"moed-lfu@{HALF_LIFE_TOKENS:g}"


def score(rows: list[dict], policy: str) -> float:
    return float(np.mean([r["hit_rate"] for r in rows if r["policy"] == policy]))


def tune(paths: list[str], half_lives: list[float], budgets: list[float], depths: list[int], warmup: int,
         default: str = DEFAULT) -> dict:
    candidates = [f"moed-lfu@{h:g}" for h in half_lives] + ["moed-lru", "lru", "lfu", "lfuda"]
    if default not in candidates:
        candidates.insert(0, default)
    tuning = run(paths, candidates, budgets, depths, "tune", warmup)
    scores = {p: score(tuning["rows"], p) for p in candidates}
    best = max(candidates, key=lambda p: scores[p])
    shown = list(dict.fromkeys([best, default, "lru", "lfuda", "belady"]))
    report = run(paths, shown, budgets, depths, "report", warmup)
    held = {p: score(report["rows"], p) for p in shown}
    return {"tuning_scores": scores, "best": best, "default": default, "report_scores": held,
            "best_beats_default": held[best] > held[default], "tuning": tuning, "report": report}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--half-lives", default="2,4,8,16,32,64,128,256")
    ap.add_argument("--budgets", default="0.125,0.25,0.5")
    ap.add_argument("--depths", default="0,1")
    ap.add_argument("--warmup", type=int, default=32)
    ap.add_argument("--default", default=DEFAULT, help="the policy to beat (moed's own by default)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    res = tune(a.traces, [float(h) for h in a.half_lives.split(",")], [float(b) for b in a.budgets.split(",")],
               [int(d) for d in a.depths.split(",")], a.warmup, a.default)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    print("tuning (first halves), mean hit rate:", json.dumps({p: round(s, 4) for p, s in
                                                               res["tuning_scores"].items()}))
    print(f"best {res['best']}; held-out (second halves), mean hit rate:",
          json.dumps({p: round(s, 4) for p, s in res["report_scores"].items()}))
    print(table(res["report"]["rows"]))


if __name__ == "__main__":
    main()
