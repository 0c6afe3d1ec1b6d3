"""bench/governor_power.py runs end to end here (no NVML: power fields null) and writes its JSON shape."""

from __future__ import annotations

import json

import pytest

from bench import governor_power


@pytest.mark.slow
def test_profiles_and_cap_run_without_nvml(model_dir, tmp_path):
    store = model_dir("qwen3_moe", "store-mlx")
    out = tmp_path / "gp.json"
    assert governor_power.main([str(store), "--budgets", "25%", "--profiles", "saver", "--seconds", "1",
                                "--cap-seconds", "11", "--clients", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    row = doc["profiles"][0]
    assert doc["nvml"] is False and row["state"] == "SAVER" and row["limits"]["prefetch_depth"] == 0
    assert row["tokens"] > 0 and row["wasted_prefetch_bytes"] == 0 and row["avg_w"] is None
    cap = doc["cap"]
    assert cap["exact_under_cap"] is True and cap["cap_w"] is None and len(cap["windows"]) >= 1
