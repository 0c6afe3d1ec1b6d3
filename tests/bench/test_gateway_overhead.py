"""bench/gateway_overhead.py: a daemon and a gateway as subprocesses on the tiny store, one round of every path at 1
and 8 clients; the record's shape (not its timings), the pairing of ratios, and the CPU clock it reads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import psutil
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


def test_cpu_seconds_counts_a_child_process_like_psutil_but_finer():
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nend = time.process_time() + 0.3\n"
                              "while time.process_time() < end: pass\nsys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        proc = psutil.Process(child.pid)
        deadline = time.monotonic() + 60
        while sum(proc.cpu_times()[:2]) < 0.3:  # the child spins for 0.3 s of CPU, then waits on its stdin
            assert time.monotonic() < deadline, "the child did not spin"
            time.sleep(0.02)
        time.sleep(0.1)
        fine, coarse = gateway_overhead.cpu_seconds(proc), sum(proc.cpu_times()[:2])
        assert fine >= 0.3 and abs(fine - coarse) < 0.05  # the same quantity; psutil's ticks are 10 ms
        if sys.platform == "linux":  # the process clock, not psutil's ticks
            assert abs(fine * 100 - round(fine * 100)) > 1e-6
        assert gateway_overhead.cpu_seconds(proc) - fine < 0.01  # a waiting process's clock stands still
    finally:
        child.communicate(b"")


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
