"""moed's memory bound: peak RSS <= dense weights + cache budget + a fixed overhead, and under a memory cap below
the model's size moed completes generation while mlx-lm is killed (where memory cgroups are permitted).

The model has ~220 MB of 4-bit experts (8 layers x 64 experts of 0.44 MB) so that the experts dominate the
Python/MLX runtime. Peak RSS is the child process's ru_maxrss (reported by `moed generate --json`, and by a small
mlx-lm script for the reference).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moed.daemon.bench.membound import cgroup_available, run_capped
from moed.daemon.store.format import read_manifest

# The fixed overhead stated in the README: Python + MLX + mlx-lm/transformers imports, tokenizer, read buffers,
# KV cache and activations of a short generation.
OVERHEAD_BYTES = 256 << 20
BUDGET = "12.5%"
MLX_LM_SCRIPT = """
import sys
from mlx_lm import load, generate
model, tok = load(sys.argv[1])
generate(model, tok, "We hold these truths", max_tokens=8)
from moed.daemon.engine.generate import peak_rss_bytes
print(peak_rss_bytes())
"""


@pytest.fixture(scope="module")
def mem_model(tmp_path_factory):
    from moed.daemon.store.convert import convert
    from moed.daemon.testmodel import make_test_model

    base = tmp_path_factory.mktemp("mem")
    ckpt = make_test_model(base / "ckpt", arch="qwen3_moe", size="small", hidden=512, experts=64, expert_inter=512,
                           layers=8, progress=False)
    store = base / "store"
    convert(ckpt, store)
    return ckpt, store


def moed_cmd(store) -> list[str]:
    return [sys.executable, "-m", "moed.daemon.cli", "generate", str(store), "We hold these truths",
            "--max-tokens", "8", "--cache-budget", BUDGET, "--read-mode", "direct", "--json"]


def test_peak_rss_is_dense_plus_budget_plus_overhead(mem_model):
    ckpt, store = mem_model
    m = read_manifest(store)
    out = subprocess.run(moed_cmd(store), capture_output=True, text=True, check=True)
    peak = json.loads(out.stdout)["stats"]["peak_rss_bytes"]
    dense = sum((store / f).stat().st_size for f in m.dense_files)
    budget = m.total_expert_bytes // 8
    assert peak <= dense + budget + OVERHEAD_BYTES, (peak, dense, budget)
    ref = subprocess.run([sys.executable, "-c", MLX_LM_SCRIPT, str(ckpt)], capture_output=True, text=True,
                         check=True)
    ref_peak = int(ref.stdout.strip().splitlines()[-1])
    # mlx-lm holds every expert; moed holds an eighth of them
    assert ref_peak - peak >= 0.6 * m.total_expert_bytes, (ref_peak, peak)


@pytest.mark.skipif(not cgroup_available(), reason="memory cgroups are not permitted here (need root, cgroup v1)")
def test_under_a_cap_below_the_model_moed_completes_and_mlx_lm_is_killed(mem_model):
    ckpt, store = mem_model
    m = read_manifest(store)
    cap = m.total_expert_bytes // 2 + 160 * 2**20  # well below the model (experts alone exceed it)
    assert cap < m.total_expert_bytes + OVERHEAD_BYTES
    moed = run_capped(moed_cmd(store), cap)
    assert moed["returncode"] == 0, moed["stderr"]
    assert json.loads(moed["stdout"])["stats"]["generation_tokens"] == 8
    ref = run_capped([sys.executable, "-c", MLX_LM_SCRIPT, str(ckpt)], cap)
    assert ref["killed"] or ref["returncode"] != 0, ref
