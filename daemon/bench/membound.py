"""Run a command under a memory cap (a Linux cgroup v1 memory controller) and report how it ended.

Used to show moed's memory bound: under a cap below the model's size, moed completes where mlx-lm is killed.
Needs root and a writable /sys/fs/cgroup/memory; `cgroup_available()` says whether this machine allows it
(tests skip cleanly where it does not).

    python -m moed.daemon.bench.membound --cap 2GB -- moed generate STORE "..." --cache-budget 25%
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def cgroup_available() -> bool:
    """True if a memory cgroup can be created and removed here."""
    probe = CGROUP_ROOT / f"moed-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "memory.limit_in_bytes").exists()
    finally:
        probe.rmdir()


def run_capped(cmd: list[str], cap_bytes: int, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run `cmd` in a fresh memory cgroup limited to cap_bytes (swap included where the kernel accounts it).

    Returns {"returncode", "killed" (by the OOM killer: SIGKILL), "max_usage_bytes", "failcnt", "seconds",
    "stdout", "stderr"}. Raises OSError if the cgroup cannot be made."""
    cg = CGROUP_ROOT / f"moed-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    try:
        (cg / "memory.limit_in_bytes").write_text(str(cap_bytes))
        memsw = cg / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            try:
                memsw.write_text(str(cap_bytes))  # no escape into swap
            except OSError:
                pass
        procs = str(cg / "cgroup.procs")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              preexec_fn=lambda: Path(procs).write_text(str(os.getpid())))
        out = {
            "returncode": proc.returncode,
            "killed": proc.returncode in (-9, 137),
            "max_usage_bytes": int((cg / "memory.max_usage_in_bytes").read_text()),
            "failcnt": int((cg / "memory.failcnt").read_text()),
            "seconds": time.perf_counter() - t0,
            "stdout": proc.stdout[-4000:],
            "stderr": proc.stderr[-4000:],
        }
    finally:
        _remove(cg)
    return out


def _remove(cg: Path) -> None:
    for _ in range(50):  # the cgroup is busy until its last process has been reaped
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    from ..budget import parse_size

    p = argparse.ArgumentParser(prog="python -m moed.daemon.bench.membound", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap", required=True, help="memory cap, e.g. 2GB or 1536MiB")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cgroup_available():
        print("memory cgroups are not available here (need root and /sys/fs/cgroup/memory)", file=sys.stderr)
        return 2
    res = run_capped(cmd, parse_size(args.cap))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
