"""Replay routing traces through a cache of expert slots under each eviction policy, against Belady's optimum.

    python -m bench.policy_replay TRACE.npz [TRACE.npz ...] [--budgets 0.125,0.25,0.5] [--depths 0,1,2]
        [--policies moed-lfu,moed-lru,lru,lfu,lfuda,belady] [--part all|tune|report] [--warmup 32] [--out R.json]

The cache holds C = budget x (layers x experts) slots, shared by every layer, as ExpertCache's are. The trace is
replayed one layer call at a time (token by token: a decode), exactly as the streaming layer drives the cache:

1. a tick (`begin_call`); the call's distinct experts are looked up; hits are those resident;
2. the missing ones get victims all at once (never one of the call's own hits: a call's experts must all be
   resident together), are evicted and read (reads land at once: the replay counts, it does not time);
3. with prefetch at depth D, the recorded predictions for layers l+1..l+D are read in behind them, as
   Prefetcher.issue and ExpertCache.prefetch do: at most C - (call's experts) reads, never evicting the call's
   experts nor a predicted expert already resident; moed's policy also keeps its rule that an unused prefetch is
   protected from other prefetches until its layer runs; the other policies insert prefetches plainly;
4. the call's slots are marked used, in order.

Hit rate = demand uses found resident (a prefetched expert counts) / all uses, over the calls after `--warmup`
tokens. Also reported: experts read per token (demand misses + prefetches) and wasted prefetches per token
(evicted before any use). `gap` = the fraction of the LRU-to-Belady gap a policy closes at the same budget and
depth: with no prefetch Belady is the demand-paging optimum; with prefetch, Belady's row is its farthest-first
oracle over the same predictions (routing_policies.py), a reference rather than a proven bound, and the
demand-only optimum is kept beside it (`belady_demand`).

`--part tune|report` replays only the first or second half of each trace's tokens (tune a setting on one, report
it on the other). Several traces are concatenated (the cache persists from one to the next, as in a daemon).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from moed.daemon.engine.slot_policy import FREE, READY

from .routing_io import Trace, load_trace
from .routing_policies import make_policy

DEFAULT_POLICIES = ("moed-lfu", "moed-lru", "lru", "lfu", "lfuda", "belady")


class Replay:
    """One cache of `slots` slots under `policy`, fed one trace."""

    def __init__(self, trace: Trace, policy, slots: int, depth: int):
        if slots < trace.k:
            raise ValueError(f"{slots} slots cannot hold one call's {trace.k} experts")
        if depth > trace.depth:
            raise ValueError(f"prefetch depth {depth}: the trace has predictions to depth {trace.depth}")
        self.trace, self.policy, self.slots, self.depth = trace, policy, slots, depth
        self.state = np.full(slots, FREE, dtype=np.int8)
        self.keys: list[tuple[int, int] | None] = [None] * slots
        self.where: dict[tuple[int, int], int] = {}
        self.unused_prefetch: set[int] = set()
        self.counts = {"uses": 0, "hits": 0, "demand_reads": 0, "prefetch_reads": 0, "wasted": 0}
        policy.reset(slots, trace)

    def run(self, warmup: int = 0) -> dict:
        """Replay every call; counts start after `warmup` tokens. Returns the counts and rates."""
        tr = self.trace
        counted_tokens = 0
        for t in range(tr.tokens):
            counting = t >= warmup
            counted_tokens += counting
            for layer in range(tr.layers):
                self.call(t, layer, counting)
        c = self.counts
        per_tok = max(counted_tokens, 1)
        return {**c, "tokens": counted_tokens, "hit_rate": c["hits"] / max(c["uses"], 1),
                "reads_per_token": (c["demand_reads"] + c["prefetch_reads"]) / per_tok,
                "wasted_per_token": c["wasted"] / per_tok}

    def call(self, t: int, layer: int, counting: bool) -> None:
        tr, policy = self.trace, self.policy
        call = t * tr.layers + layer
        experts = np.unique(tr.ids[t, layer])
        policy.begin_call(call)
        slots = np.array([self.where.get((layer, int(e)), -1) for e in experts], dtype=np.int64)
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            victims = policy.victims(len(missing), self.state, slots[slots >= 0], np.zeros(0, np.int64), False)
            assert len(victims) == len(missing), "a demand read found no slot"
            for i, slot in zip(missing, victims):
                self._load(slot, (layer, int(experts[i])), call, None)
                slots[i] = slot
        if counting:
            c = self.counts
            c["uses"] += len(experts)
            c["hits"] += len(experts) - len(missing)
            c["demand_reads"] += len(missing)
        if self.depth:
            self._prefetch(t, layer, call, slots, counting)
        self.unused_prefetch.difference_update(slots.tolist())
        policy.used(layer, slots, call)

    def _prefetch(self, t: int, layer: int, call: int, busy: np.ndarray, counting: bool) -> None:
        """Prefetcher.issue + ExpertCache.prefetch for layers layer+1..layer+depth."""
        tr = self.trace
        room = self.slots - len(busy)
        for d in range(1, self.depth + 1):
            j = layer + d
            if j >= tr.layers or room <= 0:
                break
            pred = tr.preds[t, layer, d - 1]
            asked = [int(e) for e in np.unique(pred[pred >= 0])]
            held = np.array([self.where[(j, e)] for e in asked if (j, e) in self.where], dtype=np.int64)
            todo = [(j, e) for e in asked if (j, e) not in self.where][:room]
            todo = self.policy.admit(todo, call, self.state, held, busy) if todo else todo
            chosen = self.policy.victims(len(todo), self.state, held, busy, True) if todo else []
            for key, slot in zip(todo, chosen):
                self._load(slot, key, call, j)
                self.unused_prefetch.add(slot)
            room -= len(chosen)
            if counting:
                self.counts["prefetch_reads"] += len(chosen)

    def _load(self, slot: int, key: tuple[int, int], call: int, prefetch_for: int | None) -> None:
        if self.state[slot] == READY:  # evict
            del self.where[self.keys[slot]]
            if slot in self.unused_prefetch:
                self.unused_prefetch.discard(slot)
                self.counts["wasted"] += 1
            self.policy.forget(slot)
        self.state[slot], self.keys[slot] = READY, key
        self.where[key] = slot
        self.policy.enter(slot, key, call, prefetch_for)


def replay(trace: Trace, policy: str, budget: float, depth: int, warmup: int = 0) -> dict:
    """Hit rate etc. of `policy` (routing_policies.make_policy) at `budget` (a fraction of all experts)."""
    slots = int(budget * trace.layers * trace.experts)
    out = Replay(trace, make_policy(policy), slots, depth).run(warmup)
    return {"policy": policy, "budget": budget, "depth": depth, "slots": slots, **out}


def with_gaps(rows: list[dict]) -> list[dict]:
    """Adds `gap` (fraction of the LRU-to-Belady gap closed, same budget and depth) and `belady_demand`."""
    by = {(r["budget"], r["depth"], r["policy"]): r["hit_rate"] for r in rows}
    for r in rows:
        lru, opt = by.get((r["budget"], r["depth"], "lru")), by.get((r["budget"], r["depth"], "belady"))
        r["belady_demand"] = by.get((r["budget"], 0, "belady"))
        r["gap"] = (r["hit_rate"] - lru) / (opt - lru) if lru is not None and opt is not None and opt > lru else None
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table: one row per (budget, depth), one column per policy (hit rate, gap closed)."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    by = {(r["budget"], r["depth"], r["policy"]): r for r in rows}
    lines = ["| budget | prefetch | " + " | ".join(policies) + " |", "|---|---|" + "---|" * len(policies)]
    for budget, depth in dict.fromkeys((r["budget"], r["depth"]) for r in rows):
        cells = []
        for p in policies:
            r = by.get((budget, depth, p))
            gap = "" if r is None or r["gap"] is None or p in ("lru", "belady") else f" ({r['gap']:.0%})"
            cells.append("" if r is None else f"{r['hit_rate']:.1%}{gap}")
        lines.append(f"| {budget:.1%} | {'depth ' + str(depth) if depth else 'off'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(paths: list[str], policies: list[str], budgets: list[float], depths: list[int], part: str,
        warmup: int) -> dict:
    traces = [load_trace(p) for p in paths]
    if part != "all":
        traces = [t.halves()[0 if part == "tune" else 1] for t in traces]
    trace = traces[0] if len(traces) == 1 else Trace.concat(traces)
    rows, t0 = [], time.perf_counter()
    for budget in budgets:
        for depth in depths:
            for p in policies:
                rows.append(replay(trace, p, budget, depth, warmup))
    return {"traces": paths, "part": part, "warmup": warmup, "tokens": trace.tokens, "layers": trace.layers,
            "experts": trace.experts, "k": trace.k, "seconds": round(time.perf_counter() - t0, 1),
            "rows": with_gaps(rows)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    ap.add_argument("--budgets", default="0.125,0.25,0.5")
    ap.add_argument("--depths", default="0,1,2")
    ap.add_argument("--part", choices=("all", "tune", "report"), default="all")
    ap.add_argument("--warmup", type=int, default=32, help="tokens replayed before counting")
    ap.add_argument("--out", help="write the JSON here (else print it)")
    ap.add_argument("--table", action="store_true", help="print the markdown table")
    a = ap.parse_args(argv)
    res = run(a.traces, a.policies.split(","), [float(b) for b in a.budgets.split(",")],
              [int(d) for d in a.depths.split(",")], a.part, a.warmup)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    if a.table or not a.out:
        print(table(res["rows"]) if a.table else json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
