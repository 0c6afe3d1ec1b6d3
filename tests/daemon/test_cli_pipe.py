"""`moed ... | head`: when the reader of its output leaves early, a moed command ends quietly with 141, as Unix
tools do, instead of a BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys


def test_generate_into_a_reader_that_leaves_ends_quietly(model_dir):
    store = model_dir("qwen3_moe", "store-mlx")
    proc = subprocess.Popen([sys.executable, "-m", "moed.daemon.cli", "generate", str(store), "The house",
                             "--max-tokens", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first piece of text (as after `head -c 0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
