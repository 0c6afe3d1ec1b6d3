"""bench/row_numerics.py, bench/pass_times.py and bench/sdpa_thrash.py on the trained fixture (MLX's CPU backend)."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from bench import pass_times, row_numerics, sdpa_thrash


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="the CPU backend's row invariance")
def test_the_cpu_backend_computes_a_row_the_same_whatever_the_pass_rows(trained_checkpoint):
    # the premise of exact greedy speculation on the CPU: logits of a position do not depend on the pass's rows
    r = row_numerics.measure(str(trained_checkpoint), tokens=24, prompts=1, chunks=[2, 5], drafts=[2])
    assert r["positions"] == 24 and "float32" in r["dtype"]
    assert r["chunks"] == {"2": {"max_abs_diff": 0.0, "flips": 0}, "5": {"max_abs_diff": 0.0, "flips": 0}}
    assert r["speculative"] == {"2": [None]}  # mlx-lm's own speculative decoding keeps generate_step's tokens
    assert r["top2_gap"]["min"] >= 0.0


def test_pass_times_times_plain_steps_and_verification_passes(trained_store, tmp_path):
    out = tmp_path / "p.json"
    assert pass_times.main([str(trained_store), "--budget", "25%", "--tokens", "24", "--prompts", "1",
                            "--workload", "quote", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["prompts"]
    assert set(row) == {"off", "lookup", "off2"}
    assert row["lookup"]["verify"] and all(p["rows"] > 1 and p["ms"] > 0 for p in row["lookup"]["verify"])
    assert row["lookup"]["passes"] < 23  # the fixture quotes: fewer passes than tokens


def test_sdpa_thrash_runs_passes_at_new_key_lengths(trained_checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("MLX_ENABLE_CACHE_THRASHING_CHECK", raising=False)  # restored after: --moed-env sets it
    assert sdpa_thrash.main([str(trained_checkpoint), "--passes", "5", "--moed-env"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["passes_done"] == 5 and r["error"] is None and r["moed_env"]
