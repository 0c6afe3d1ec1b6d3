"""bench/single.py's moed record: the time split of synchronised layer calls, and mlx-lm's pipelined loop."""

from __future__ import annotations

import pytest

from moed.daemon.bench.single import run_mlx_lm, run_moed
from moed.daemon.engine import cache as cache_mod

PHASES = {"routing read back (with the prediction)", "distinct experts", "acquire: bookkeeping, demand reads queued",
          "acquire: prefetch issued", "acquire: waiting for reads", "acquire: use counted", "expert graph built"}


@pytest.fixture(scope="module")
def small(model_dir):
    return model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")


def test_a_synced_run_splits_each_layer_call_into_phases(small):
    _, store = small
    r = run_moed({"kind": "moed", "store": str(store), "budget": "25%", "read_mode": "buffered", "prompt_len": 8,
                  "steps": 12, "phases": True})
    assert cache_mod.PHASES is None  # switched off again for whatever runs next
    phases = r["phases_ms_per_token"]
    assert set(phases) == PHASES and all(v >= 0 for v in phases.values())
    synced, sync = r["decode_synced_call_ms_per_token"], r["decode_sync_ms_per_token"]
    assert r["syncs_per_token"] > 0 and 0 < sync < synced
    assert phases["routing read back (with the prediction)"] == pytest.approx(sync, rel=0.01)
    assert phases["acquire: waiting for reads"] == pytest.approx(r["decode_wait_ms_per_token"], rel=0.05, abs=0.05)
    # the phases cover the synced calls end to end (only the few statements between laps are left out)
    assert 0.9 * synced <= sum(phases.values()) <= synced * 1.001


def test_the_phase_switch_is_off_by_default_and_pipelined_loops_are_measured(small):
    ckpt, store = small
    r = run_moed({"kind": "moed", "store": str(store), "budget": "100%", "read_mode": "buffered", "prompt_len": 8,
                  "steps": 8, "pipelined": True})
    assert "phases_ms_per_token" not in r and r["pipelined_decode_tps"] > 0
    assert r["syncs_per_token"] == 0 and r["decode_synced_call_ms_per_token"] == 0  # all resident: no sync
    ref = run_mlx_lm({"kind": "mlx-lm", "model": str(ckpt), "prompt_len": 8, "steps": 8, "pipelined": True})
    assert ref["pipelined_decode_tps"] > 0 and "sampled_decode_tps" not in ref
