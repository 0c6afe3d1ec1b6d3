"""bench/single.py's moed record: the time split of synchronised layer calls, and mlx-lm's pipelined loop."""

from __future__ import annotations

import pytest

from moed.daemon.bench.single import run_mlx_lm, run_moed
from moed.daemon.engine.probe import Phase

PHASES = {"routing read back (with the prediction)", "distinct experts", "acquire: bookkeeping, demand reads queued",
          "acquire: prefetch issued", "acquire: waiting for reads", "acquire: use counted", "expert graph built"}


@pytest.fixture(scope="module")
def small(model_dir):
    return model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")


def test_a_synced_run_splits_each_layer_call_into_phases(small):
    _, store = small
    r = run_moed({"kind": "moed", "store": str(store), "budget": "25%", "read_mode": "buffered", "prompt_len": 8,
                  "steps": 12})
    phases = r["phases_ms_per_token"]
    assert PHASES == {p.value for p in Phase}  # the record's names are the probe's phases
    assert set(phases) == PHASES and all(v > 0 for v in phases.values())
    synced, sync = r["decode_synced_call_ms_per_token"], r["decode_sync_ms_per_token"]
    assert r["syncs_per_token"] > 0 and 0 < sync < synced
    assert sync == phases["routing read back (with the prediction)"] and synced == pytest.approx(sum(phases.values()))
    # the waiting phase is the time acquire's own counter (CacheStats.wait_seconds) saw blocked on reads
    assert phases["acquire: waiting for reads"] == pytest.approx(r["decode_wait_ms_per_token"], rel=0.05, abs=0.05)


def test_an_all_resident_run_has_no_synced_phase_and_pipelined_loops_are_measured(small):
    ckpt, store = small
    r = run_moed({"kind": "moed", "store": str(store), "budget": "100%", "read_mode": "buffered", "prompt_len": 8,
                  "steps": 8, "pipelined": True})
    assert r["pipelined_decode_tps"] > 0
    assert r["syncs_per_token"] == 0 and r["decode_synced_call_ms_per_token"] == 0  # all resident: no sync
    assert all(v == 0 for v in r["phases_ms_per_token"].values())
    ref = run_mlx_lm({"kind": "mlx-lm", "model": str(ckpt), "prompt_len": 8, "steps": 8, "pipelined": True})
    assert ref["pipelined_decode_tps"] > 0 and "sampled_decode_tps" not in ref
