"""bench/gateway_overhead.py: a daemon and a gateway as subprocesses on the tiny store, one round of every path at 1
and 8 clients; the record's shape (not its timings), and the pairing of ratios."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gateway_overhead

REPO = Path(__file__).resolve().parents[2]  # `python -m bench.X` runs from the repository root


def test_ratios_pair_the_values_of_the_same_round():
    values = {"direct": {"ttft_s": [0.1, 0.2], "decode_tps": [100.0, 50.0], "aggregate_tps": [80.0, 40.0],
                         "cpu_ms_per_token": [{"daemon": 2.0, "clients": 0.1}, {"daemon": 4.0, "clients": 0.3}]},
              "gateway": {"ttft_s": [0.2, 0.2], "decode_tps": [50.0, 50.0], "aggregate_tps": [40.0, 40.0],
                          "cpu_ms_per_token": [{"daemon": 2.0, "clients": 0.2}, {"daemon": 2.0, "clients": 0.2}]}}
    out = gateway_overhead.summarise(values)
    ratio = out["ratio"]["gateway"]
    assert ratio["ttft_s"] == [2.0, 1.0] and ratio["decode_tps"] == [0.5, 1.0]
    assert out["median_ratio"]["gateway"]["aggregate_tps"] == 0.75
    assert out["median"]["direct"]["ttft_s"] == pytest.approx(0.15)
    assert out["median"]["direct"]["cpu_ms_per_token"] == {"daemon": 3.0, "clients": pytest.approx(0.2)}
    assert set(out["ratio"]) == {"gateway"}  # no ratio of direct to itself


@pytest.mark.slow
def test_one_round_on_the_tiny_store(model_dir, tmp_path):
    pytest.importorskip("mlx.core")
    pytest.importorskip("openai")
    out = tmp_path / "gateway.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gateway_overhead", str(model_dir("qwen3_moe", "store-mlx")),
                           "--clients", "1,8", "--tokens", "2", "--rounds", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["clients"] == [1, 8] and record["tokens"] == 2 and record["rounds"] == 1
    assert record["command"].startswith("python -m bench.gateway_overhead ")
    assert set(record["results"]) == {"1", "8"} and record["via"] == ["aiohttp", "openai"]
    for n, res in record["results"].items():
        for path in ("direct", "gateway", "gateway-openai"):
            assert set(res["values"][path]) == {"ttft_s", "decode_tps", "aggregate_tps", "generated",
                                                "cpu_ms_per_token"}
            assert len(res["values"][path]["ttft_s"]) == 1 and res["values"][path]["ttft_s"][0] > 0
            assert int(n) <= res["values"][path]["generated"][0] <= 2 * int(n)  # every request answered
            assert set(res["median"][path]) == {"ttft_s", "decode_tps", "aggregate_tps", "cpu_ms_per_token"}
            assert set(res["median"][path]["cpu_ms_per_token"]) == {"daemon", "gateway", "clients"}
            assert res["median"][path]["cpu_ms_per_token"]["daemon"] > 0  # the daemon worked for every path
        assert res["values"]["direct"]["generated"] == res["values"]["gateway"]["generated"]  # same greedy text
        assert res["values"]["direct"]["generated"] == res["values"]["gateway-openai"]["generated"]
        for path in ("gateway", "gateway-openai"):
            assert set(res["median_ratio"][path]) == {"ttft_s", "decode_tps", "aggregate_tps"}
            assert math.isfinite(res["median_ratio"][path]["ttft_s"]) and len(res["ratio"][path]["aggregate_tps"]) == 1
