"""bench/paired.py: mlx-lm and moed engines measured in one process, alternated, with per-round ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import paired

REPO = Path(__file__).resolve().parents[2]  # `python -m bench.X` runs from the repository root


def test_rounds_rotate_the_order_and_ratios_pair_values_of_the_same_round(monkeypatch):
    calls = []
    speeds = {"a": [10.0, 20.0, 40.0], "b": [5.0, 30.0, 20.0]}  # per round, for every measure

    def fake(model, tokenizer, tokens):
        calls.append((model, tokens))
        if tokens == 8:  # the warm-up
            return dict.fromkeys(paired.MEASURES, 1.0)
        i = sum(1 for m, t in calls if m == model and t != 8) - 1
        return dict.fromkeys(paired.MEASURES, speeds[model][i])

    monkeypatch.setattr(paired, "measure", fake)
    out = paired.run([("a", "a", None, paired._as_is), ("b", "b", None, paired._as_is)], rounds=3, tokens=64,
                     baseline="a")
    assert [m for m, t in calls if t == 64] == ["a", "b", "b", "a", "a", "b"]  # round r starts with r mod 2
    assert out["values"]["b"]["sampled"] == [5.0, 30.0, 20.0]
    assert out["median"]["a"]["forced"] == 20.0
    # the median of the rounds' ratios (0.5, 1.5, 0.5), not the ratio of the medians (20 / 20)
    assert out["ratio"]["b"]["pipelined"] == pytest.approx(0.5)
    assert "a" not in out["ratio"]


def test_bookkeeping_off_is_restored_after_its_turn():
    class Cache:
        bookkeeping = True  # ExpertCache.bookkeeping

    c = Cache()
    with paired._no_bookkeeping(c):
        assert c.bookkeeping is False
    assert c.bookkeeping is True


def test_the_command_measures_mlx_lm_and_a_moed_engine_with_no_synced_call(model_dir, tmp_path):
    ckpt, store = model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")
    out = tmp_path / "paired.json"
    p = subprocess.run([sys.executable, "-m", "bench.paired", str(ckpt), str(store), "--rounds", "2",
                        "--tokens", "6", "--uploads", "auto,plain", "--bare", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    # off CUDA every upload path is the plain one: one engine, not two of the same name
    assert set(r["values"]) == {"mlx-lm", "moed-plain", "moed-plain-bare"}
    assert all(len(v) == 2 and min(v) > 0 for ms in r["values"].values() for v in ms.values())
    assert set(r["ratio"]) == {"moed-plain", "moed-plain-bare"}
    assert r["synced_calls"] == {"moed-plain": 0} and r["backend"] == "cpu"
