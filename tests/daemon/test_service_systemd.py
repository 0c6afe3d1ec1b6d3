"""Under a real systemd user manager: the rendered unit's [Service] settings start `moed serve` (Type=notify: the
start returns once the daemon sent READY=1), and stopping it drains and exits cleanly within TimeoutStopSec.

The unit runs as a transient unit (systemd-run) with a unique name, so the test writes nothing into the real home
and cannot disturb an installed moed.service. It needs a reachable user manager, which containers and CI runners
usually lack: then it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from daemon_harness import Conn, short_dir
from moed.daemon.service import Host, ServiceSpec, render


def _user_manager() -> str | None:
    """Why the test cannot run here, or None."""
    for tool in ("systemctl", "systemd-run"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    try:
        out = subprocess.run(["systemctl", "--user", "is-system-running"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemctl --user failed: {e}"
    state = out.stdout.strip() or out.stderr.strip()
    if state not in ("running", "degraded"):
        return f"no systemd user manager is running here (`systemctl --user is-system-running`: {state})"
    return None


WHY = _user_manager()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY is not None, reason=WHY or "")]


def service_settings(unit_text: str) -> list[str]:
    """KEY=VALUE lines of the [Service] section, ExecStart excepted."""
    section, out = "", []
    for line in unit_text.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", "ExecStart=")):
            out.append(line)
    return out


def systemctl(*args: str, check: bool = True) -> str:
    out = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out.stdout


def test_unit_starts_the_daemon_and_stop_drains_it(model_dir):
    store = model_dir("qwen3_moe", "store-mlx")
    name = f"moed-test-{uuid.uuid4().hex[:8]}"
    runtime = Path(systemctl("show-environment").split("XDG_RUNTIME_DIR=", 1)[1].split()[0])
    state, log = short_dir(), Path(short_dir()) / "err.log"
    host = Host("systemd", Path.home(), os.getuid())
    spec = ServiceSpec.build(host, interpreter=Path(sys.executable).absolute(), store=store, config=None,
                             drain_timeout_s=10.0)
    props = [s.replace("RuntimeDirectory=moed", f"RuntimeDirectory={name}")
             for s in service_settings(render(host, spec))]
    props += [f"Environment=MOED_STATE_DIR={state}", "Environment=MOED_READ_MODE=buffered",
              f"StandardError=file:{log}"]
    endpoint = f"ipc://{runtime}/{name}/d.sock"
    cmd = ["systemd-run", "--user", f"--unit={name}", *(f"--property={p}" for p in props), *spec.program,
           "--endpoint", endpoint]
    try:
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # returns after READY=1
        assert started.returncode == 0, started.stderr
        assert systemctl("is-active", name, check=False).strip() == "active"
        c = Conn(endpoint)
        try:
            assert c.result("health")["ok"]  # READY=1 came once the daemon serves
        finally:
            c.close()
        systemctl("stop", name)
        text = log.read_text()
        assert "msg=\"shutting down\"" in text and "msg=stopped" in text, text[-2000:]
        assert systemctl("show", "-p", "Result", "--value", name).strip() in ("success", "")
    finally:
        subprocess.run(["systemctl", "--user", "stop", name], capture_output=True, timeout=120)
        subprocess.run(["systemctl", "--user", "reset-failed", name], capture_output=True, timeout=30)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(log.parent, ignore_errors=True)
