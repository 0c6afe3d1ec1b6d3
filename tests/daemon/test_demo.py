"""`moed demo` (the README's main job) makes a model, serves it, streams a generation to a client, and stops."""

from __future__ import annotations

import subprocess
import sys


def test_demo_serves_and_streams(tmp_path):
    out = subprocess.run([sys.executable, "-m", "moed.daemon.cli", "demo", "--dir", str(tmp_path), "--size", "tiny",
                          "--max-tokens", "6"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "6 generated (length)" in out.stderr and "hit rate" in out.stderr
    assert (tmp_path / "qwen3_moe-tiny-store" / "manifest.json").is_file()
    # the second run reuses the store and still works in-process
    again = subprocess.run([sys.executable, "-m", "moed.daemon.cli", "demo", "--dir", str(tmp_path), "--size", "tiny",
                            "--max-tokens", "4", "--in-process"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "converting" not in again.stderr, again.stderr[-2000:]
