"""The README's walkthrough runs as written, top to bottom: a new user's first session with moed (make a model,
convert, inspect, generate, serve, talk to it with moectl and over HTTP, the governor, ps, the service in dry-run,
shutdown)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Walkthrough"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_walkthrough_is_a_shell_block_of_real_commands():
    block = walkthrough()
    commands = [line.split()[0] for line in block.splitlines() if line and not line.startswith(("#", " "))]
    assert {"moed", "moectl", "curl", "wait"} >= set(commands) - {"echo"}
    assert "moed serve" in block and "moectl shutdown" in block


@pytest.mark.slow
def test_the_walkthrough_runs_as_written():
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    bindir = Path(sys.executable).parent
    if not (bindir / "moed").exists():
        pytest.skip("the moed and moectl commands are not installed beside this interpreter")
    home = Path(tempfile.mkdtemp(prefix="moed-rd-", dir="/tmp"))  # short: the ipc socket path must fit
    try:
        env = {**os.environ, "HOME": str(home), "MOED_HOME": str(home / "data"), "XDG_RUNTIME_DIR": str(home / "r"),
               "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
               "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("MOED_ENDPOINT", None)
        env.pop("MOED_CONFIG", None)
        (home / "r").mkdir(mode=0o700)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=home, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
        out = done.stdout
        assert "every checksum matches" in out and "state" in out and "governor" in out
        assert "data: " in out and "[DONE]" in out  # the OpenAI stream came through curl
        assert "ExecStart=" in out  # the systemd unit, printed by the dry run
        assert "Traceback" not in done.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)
