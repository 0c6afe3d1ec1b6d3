"""The host-cost benchmark (bench/hostcost.py) drives a real ExpertCache and Prefetcher through a decode's
call sequence and reports every part it names, at a hit rate that follows the budget."""

from __future__ import annotations

from bench.hostcost import run


def test_host_cost_reports_each_part_and_a_budget_dependent_hit_rate():
    small = run(layers=4, experts=32, k=4, budget=0.25, tokens=30, warm=10)
    full = run(layers=4, experts=32, k=4, budget=1.0, tokens=30, warm=10)
    assert set(small["us_per_call"]) == {"unique", "lookup", "acquire", "issue", "slot_ids"}
    assert all(v >= 0 for v in small["us_per_call"].values()) and small["us_per_call_total_median"] > 0
    assert small["slots"] == 32 and full["slots"] == 128
    assert 0.2 < small["hit_rate"] < 1.0 and small["reads_per_token"] > 1
    assert full["hit_rate"] > small["hit_rate"]  # everything fits: after the first reads, nothing misses


def test_the_copy_paths_host_work_is_measured_with_the_same_cache_decisions():
    plain = run(layers=4, experts=32, k=4, budget=0.25, tokens=30, warm=10)
    copy = run(layers=4, experts=32, k=4, budget=0.25, tokens=30, warm=10, upload="copy")
    assert copy["upload"] == "copy" and plain["upload"] == "plain"
    assert copy["hit_rate"] == plain["hit_rate"] and copy["reads_per_token"] == plain["reads_per_token"]
