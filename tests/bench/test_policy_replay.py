"""The cache replay: moed's policy replayed exactly as the real ExpertCache + Prefetcher run it, Belady optimal on
small traces and never beaten without prefetch, and the other policies' rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.policy_replay import Replay, replay, run, table, with_gaps
from bench.routing_io import Trace, load_trace, save_trace
from bench.routing_policies import LFUDA, make_policy


def synthetic(tokens: int = 120, layers: int = 4, experts: int = 16, k: int = 3, depth: int = 2,
              seed: int = 0) -> Trace:
    """Skewed, temporally correlated routing with predictions that are right about 2 times in 3."""
    rng = np.random.default_rng(seed)
    pop = [rng.permutation(1.0 / np.arange(1, experts + 1)) for _ in range(layers)]
    ids = np.empty((tokens, layers, k), np.int64)
    for t in range(tokens):
        for layer in range(layers):
            p = pop[layer] / pop[layer].sum()
            ids[t, layer] = np.sort(rng.choice(experts, k, replace=False, p=p))
    preds = np.full((tokens, layers, depth, k), -1, np.int64)
    for t in range(tokens):
        for layer in range(layers):
            for d in range(1, depth + 1):
                if layer + d < layers:
                    row = ids[t, layer + d].copy()
                    if rng.random() < 0.33:
                        row[rng.integers(k)] = rng.integers(experts)
                    preds[t, layer, d - 1] = row
    return Trace(ids, preds, np.zeros(tokens, np.int64), np.zeros(tokens, np.int64), experts, {})


def real_cache_hits(trace: Trace, policy: str, slots: int, depth: int, half_life_tokens: float = 16.0):
    """Hits and the final resident keys when moed's own ExpertCache and Prefetcher run the trace (reads land at
    once), calling them as StreamingSwitchGLU does."""
    from bench.hostcost import LAYOUT, InstantReader
    from moed.daemon.engine.cache import ExpertCache
    from moed.daemon.engine.prefetch import Prefetcher

    probe = ExpertCache(LAYOUT, InstantReader(), 1 << 20)
    cache = ExpertCache(LAYOUT, InstantReader(), slots * probe.expert_bytes, policy=policy,
                        half_life=half_life_tokens * trace.layers)
    pf = Prefetcher(cache, [None] * trace.layers, depth)
    hits = 0
    for t in range(trace.tokens):
        for layer in range(trace.layers):
            experts = np.unique(trace.ids[t, layer])
            hits += sum(cache.contains(layer, int(e)) for e in experts)
            preds = [(layer + d, trace.preds[t, layer, d - 1]) for d in range(1, depth + 1)
                     if layer + d < trace.layers]

            def issue(layer=layer, experts=experts, preds=preds):
                pf.issue(layer, experts, preds)

            cache.acquire(layer, experts, before_wait=issue if depth else None)
    return hits, set(cache.resident())


@pytest.mark.parametrize("policy,depth,slots", [("lfu", 0, 16), ("lfu", 1, 12), ("lfu", 2, 16), ("lru", 2, 20)])
def test_moed_policy_replays_as_the_real_cache_runs(policy, depth, slots):
    trace = synthetic()
    hits, resident = real_cache_hits(trace, policy, slots, depth, half_life_tokens=4.0)
    name = f"moed-lfu@4" if policy == "lfu" else "moed-lru"
    r = Replay(trace, make_policy(name), slots, depth)
    out = r.run()
    assert out["hits"] == hits
    assert set(r.where) == resident


def optimum_hits(trace: Trace, slots: int) -> int:
    """The most demand hits any eviction choice gets (exhaustive: tiny traces only)."""
    calls = [(layer, tuple(trace.ids[t, layer])) for t in range(trace.tokens) for layer in range(trace.layers)]
    best = {frozenset(): 0}
    for layer, experts in calls:
        keys = {(layer, int(e)) for e in experts}
        nxt: dict[frozenset, int] = {}
        for held, h in best.items():
            hit = len(keys & held)
            rest = held - keys
            room = slots - len(keys)
            for kept in itertools.combinations(sorted(rest), min(room, len(rest))):
                s = frozenset(kept) | keys
                nxt[s] = max(nxt.get(s, -1), h + hit)
        best = nxt
    return max(best.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_belady_is_the_demand_optimum_on_small_traces(seed):
    trace = synthetic(tokens=14, layers=2, experts=5, k=2, depth=1, seed=seed)
    assert Replay(trace, make_policy("belady"), 4, 0).run()["hits"] == optimum_hits(trace, 4)


def test_no_policy_beats_belady_without_prefetch():
    trace = synthetic(tokens=200, seed=3)
    for budget in (0.125, 0.25, 0.5):
        opt = replay(trace, "belady", budget, 0)["hit_rate"]
        for p in ("moed-lfu", "moed-lru", "lru", "lfu", "lfuda"):
            assert replay(trace, p, budget, 0)["hit_rate"] <= opt


def test_lru_is_moeds_lru_without_prefetch():
    trace = synthetic(seed=4)
    assert replay(trace, "lru", 0.25, 0)["hits"] == replay(trace, "moed-lru", 0.25, 0)["hits"]


def test_lfuda_ages_out_old_counts():
    p = LFUDA()
    p.reset(2, synthetic(tokens=2))
    state = np.ones(2, np.int8)  # both READY
    none = np.zeros(0, np.int64)
    p.enter(0, (0, 0), 0, None)
    for call in range(5):  # slot 0: five uses long ago
        p.begin_call(call)
        p.used(0, np.array([0]), call)
    p.enter(1, (0, 1), 5, None)
    p.used(0, np.array([1]), 5)
    assert p.victims(1, state, none, none, False) == [1]  # plain LFU: the old favourite stays
    for _ in range(6):  # each eviction raises the age; slot 1 is refilled and used once each time
        p.forget(1)
        p.enter(1, (0, 1), 5, None)
        p.used(0, np.array([1]), 5)
    assert p.victims(1, state, none, none, False) == [0]


def test_prefetch_counts_and_gaps(tmp_path):
    trace = synthetic(seed=5)
    save_trace(tmp_path / "t.npz", trace)
    back = load_trace(tmp_path / "t.npz")
    assert np.array_equal(back.ids, trace.ids) and np.array_equal(back.preds, trace.preds)
    res = run([str(tmp_path / "t.npz")], ["moed-lfu", "lru", "belady"], [0.25], [0, 1], "report", 5)
    rows = {(r["policy"], r["depth"]): r for r in res["rows"]}
    assert res["tokens"] == trace.tokens - trace.tokens // 2
    assert rows[("lru", 1)]["prefetch_reads"] > 0 and rows[("lru", 0)]["prefetch_reads"] == 0
    assert rows[("lru", 1)]["hit_rate"] > rows[("lru", 0)]["hit_rate"]  # predictions are mostly right
    assert rows[("lru", 0)]["gap"] == 0.0 and rows[("belady", 0)]["gap"] == 1.0
    assert "| 25.0% | depth 1 |" in table(with_gaps(res["rows"]))


def test_a_budget_below_one_call_is_refused():
    with pytest.raises(ValueError, match="slots"):
        replay(synthetic(), "lru", 0.01, 0)


def test_tuning_picks_on_the_first_half_and_reports_the_second(tmp_path):
    from bench.routing_tune import DEFAULT, tune

    save_trace(tmp_path / "t.npz", synthetic(tokens=80, seed=6))
    res = tune([str(tmp_path / "t.npz")], [4.0, 16.0], [0.25], [0, 1], 5)
    assert res["best"] == max(res["tuning_scores"], key=res["tuning_scores"].get)
    assert {DEFAULT, "lru", "belady", res["best"]} <= set(res["report_scores"])
    assert res["report"]["part"] == "report" and res["tuning"]["part"] == "tune"
    assert res["report_scores"]["belady"] >= res["report_scores"]["lru"]


def test_the_default_half_life_holds_on_the_fixtures_held_out_trace():
    """The committed trace of the trained fixture (bench/results/routing.md): the engine's half-life beats the
    previous 16 tokens and LRU on the held-out half at a 25 % budget, with and without prefetch."""
    from pathlib import Path

    from moed.daemon.engine.slot_policy import HALF_LIFE_TOKENS

    path = Path(__file__).resolve().parents[2] / "bench" / "results" / "routing" / "fixture-forced.npz"
    held = load_trace(path).halves()[1]
    for depth in (0, 1):
        ours = replay(held, f"moed-lfu@{HALF_LIFE_TOKENS}", 0.25, depth, 32)["hit_rate"]
        assert ours > replay(held, "moed-lfu@16", 0.25, depth, 32)["hit_rate"]
        assert ours > replay(held, "lru", 0.25, depth, 32)["hit_rate"]
