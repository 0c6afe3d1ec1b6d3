"""The step profile (bench/steps.py) runs end to end on a tiny model and reports every part it names:
the split and pipelined steps and BatchGenerator rates for mlx-lm and moed, and moed's variants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # `python -m bench.X` runs from the repository root


def test_step_profile_reports_every_part(model_dir):
    ck, st = model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")
    out = subprocess.run([sys.executable, "-m", "bench.steps", str(ck), str(st), "--steps", "4",
                          "--batch", "1,2", "--variants"], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    assert d["backend"] == "cpu" and d["upload"] == "plain"
    for run in ("mlx-lm", "moed"):
        split = d[run]["split"]
        assert split["build_ms"] > 0 and split["eval_ms"] > 0
        assert abs(split["step_ms"] - split["build_ms"] - split["eval_ms"]) < 1e-6
        assert d[run]["pipelined"]["tok_s"] > 0
        assert [(b["sequences"], b["tokens"]) for b in d[run]["batch"]] == [(1, 4), (2, 8)]
    v = d["moed_variants"]
    assert set(v) == {"no_bookkeeping", "flush_ms_per_step", "fresh_rows", "synced"}  # upload_*: CUDA only
    assert v["synced"]["split"]["step_ms"] > 0 and v["fresh_rows"]["pipelined"]["tok_s"] > 0
