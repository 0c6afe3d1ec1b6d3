"""bench/soak.py: a few seconds of the soak with 4 clients on the tiny store (a daemon subprocess); the report's
shape and its invariants (not its timings), and the greedy check on hand-made requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import soak

REPO = Path(__file__).resolve().parents[2]  # `python -m bench.X` runs from the repository root
ANSWERS = [{"tokens": [5, 6, 7, 8], "done_reason": "length"}, {"tokens": [1, 2], "done_reason": "stop"}]


def finished(kind: str, prompt: int, max_tokens: int, tokens: list[int], reason: str) -> soak.Req:
    final = {"type": "final", "status": "ok", "result": {"done_reason": reason, "generated_tokens": len(tokens)}}
    return soak.Req("r", kind, prompt, max_tokens, finals=1, tokens=tokens, final=final)


def test_the_greedy_check_against_the_solo_answers():
    assert soak.check(finished("plain", 0, 3, [5, 6, 7], "length"), ANSWERS) == ("length", None)
    assert soak.check(finished("plain", 1, 4, [1, 2], "stop"), ANSWERS) == ("stop", None)
    assert soak.check(finished("cancel", 0, 4, [5, 6], "cancelled"), ANSWERS) == ("cancelled", None)
    assert soak.check(finished("plain", 0, 3, [5, 6, 9], "length"), ANSWERS)[1] is not None  # a wrong token
    assert soak.check(finished("plain", 0, 4, [5, 6], "length"), ANSWERS)[1] is not None  # short of max_tokens
    assert soak.check(finished("cancel", 0, 4, [6], "cancelled"), ANSWERS)[1] is not None  # not a prefix
    assert soak.check(finished("poison", 0, 4, [5], "length"), ANSWERS)[1] is not None  # a poisoned one served
    refused = soak.Req("p", "poison", 0, 4, finals=1, final={"status": "error", "error": {"code": "invalid_params"}})
    assert soak.check(refused, ANSWERS) == ("invalid_params", None)
    twice = finished("plain", 0, 3, [5, 6, 7], "length")
    twice.finals = 2
    assert soak.check(twice, ANSWERS)[0] == "no_final"


@pytest.mark.slow
def test_a_short_soak_on_the_tiny_store(model_dir, tmp_path):
    pytest.importorskip("mlx.core")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", str(model_dir("qwen3_moe", "store-mlx")),
                           "--clients", "4", "--minutes", "0.1", "--poison", "0.2", "--max-tokens", "16",
                           "--read-mode", "buffered", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["command"].startswith("python -m bench.soak ") and record["settings"]["clients"] == 4
    assert record["ok"] and all(record["invariants"].values()), record["invariants"]
    assert record["problems"] == [] and record["client_errors"] == []
    req = record["requests"]
    assert req["total"] == sum(req["by_kind"].values()) > 0 and set(req["by_kind"]) <= set(soak.KINDS)
    assert req["by_kind"].get("poison", 0) > 0
    assert sum(n for k, n in req["outcomes"].items() if k.startswith("poison:")) == req["by_kind"]["poison"]
    assert all(k == "poison:invalid_params" for k in req["outcomes"] if k.startswith("poison:"))
    assert req["greedy_checked"] > 0
    counted = record["daemon_finished"]  # the daemon's own count of the finals it sent during the soak
    assert counted["abandoned"] == req["by_kind"].get("disconnect", 0)
    assert counted["during_soak"]["invalid_params"] >= req["by_kind"]["poison"]
    mem = record["memory"]
    assert mem["bound_bytes"] == mem["dense_bytes"] + mem["cache_budget_bytes"] + mem["overhead_bytes"]
    assert 0 < mem["rss_max_bytes"] <= mem["bound_bytes"]
    assert record["fds"]["end"] <= record["fds"]["baseline"]
    assert record["threads"]["end"] <= record["threads"]["baseline"]
    assert record["samples"]["columns"] == ["t_s", "rss_bytes", "fds", "threads"]
