"""The governor against a real co-tenant: moed and a memory-hungry process share one memory cgroup.

    python -m bench.governor_memory STORE --limit 4.5GB --budget 50% --governor on|off
        [--tenant-target 2.5GB --tenant-step 64MB --tenant-interval 2] [--seconds 150] [--out F.json]

One cgroup v1 memory controller (root; swap accounted too where the kernel does) holds both processes: `moed serve
STORE` with the governor on or off (real sensors: the cgroup's limit and usage, PSI, /proc/meminfo), streaming
one greedy client without pause, and a co-tenant that allocates (and touches) `--tenant-step` more every
`--tenant-interval` seconds up to `--tenant-target`, then holds it. Every half second it records the cgroup's usage,
both processes' RSS, the daemon's cache budget (status), its decode tok/s over the last interval, the system's
memory PSI and the governor's state; at the end, how each process ended (an OOM kill is SIGKILL) and the cgroup's
OOM-kill count. Expected: with the governor, moed gives memory back and neither process is killed; without it,
the same run ends in an OOM kill. Results in docs/performance.md (governor section).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

CGROUP = Path("/sys/fs/cgroup/memory")
TENANT = """
import sys, time
step, target, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
held = []
while sum(len(b) for b in held) < target:
    b = bytearray(step)
    b[::4096] = b"x" * len(b[::4096])  # touch every page: resident, not just reserved
    held.append(b)
    print(sum(len(b) for b in held), flush=True)
    time.sleep(interval)
time.sleep(3600)
"""


def size(text: str) -> int:
    from moed.daemon.budget import parse_size

    return parse_size(text)


class Cgroup:
    def __init__(self, limit: int) -> None:
        self.path = CGROUP / f"moed-gm-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            try:
                memsw.write_text(str(limit))
            except OSError:
                pass

    def join(self) -> None:
        """preexec_fn: the child enters the cgroup before it execs."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def usage(self) -> int:
        return int((self.path / "memory.usage_in_bytes").read_text())

    def oom_kills(self) -> int | None:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return None

    def remove(self) -> None:
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def psi_some_avg10() -> float | None:
    try:
        first = Path("/proc/pressure/memory").read_text().splitlines()[0]
    except OSError:
        return None
    return float(dict(kv.split("=") for kv in first.split()[1:])["avg10"])


def rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from moed.clients import Client

    cg = Cgroup(size(args.limit))
    folder = tempfile.mkdtemp(prefix="moed-gm-", dir="/tmp")
    endpoint = f"ipc://{folder}/d.sock"
    Path(folder, "none.toml").write_text("")
    env = {**os.environ, "MOED_CONFIG": f"{folder}/none.toml", "MOED_STATE_DIR": folder}
    daemon = subprocess.Popen([sys.executable, "-m", "moed.daemon.cli", "serve", args.store, "--endpoint", endpoint,
                               "--cache-budget", args.budget, "--governor", args.governor, "--read-mode", "direct",
                               "--keep-alive", "-1", "--log-level", "info"],
                              env=env, stderr=open(f"{folder}/err.log", "wb"), preexec_fn=cg.join)
    tenant: subprocess.Popen | None = None
    samples: list[dict[str, Any]] = []
    tokens = [0]
    stop = threading.Event()
    try:
        _wait_ready(Client, endpoint, daemon)

        def stream() -> None:
            try:
                with Client(endpoint, timeout=60, name="bench") as c:
                    while not stop.is_set():
                        for e in c.generate("The history of the world is", max_tokens=64, temperature=0.0):
                            tokens[0] += len(getattr(e, "tokens", ()))
            except Exception as e:  # noqa: BLE001 - the daemon was killed: the run says so
                samples.append({"client_error": f"{type(e).__name__}: {e}"})

        client = threading.Thread(target=stream, daemon=True)
        client.start()
        time.sleep(args.settle)
        tenant = subprocess.Popen([sys.executable, "-c", TENANT, str(size(args.tenant_step)),
                                   str(size(args.tenant_target)), str(args.tenant_interval)],
                                  stdout=subprocess.PIPE, text=True, preexec_fn=cg.join)
        t0, last_tokens, last_t = time.monotonic(), 0, time.monotonic()
        with Client(endpoint, timeout=5, name="bench-watch") as watch:
            while time.monotonic() - t0 < args.seconds and daemon.poll() is None and tenant.poll() is None:
                time.sleep(0.5)
                now = time.monotonic()
                row: dict[str, Any] = {"t": round(now - t0, 1), "cgroup_usage": cg.usage(), "daemon_rss": rss(daemon.pid),
                                       "tenant_rss": rss(tenant.pid), "psi_some_avg10": psi_some_avg10(),
                                       "tok_s": (tokens[0] - last_tokens) / (now - last_t)}
                last_tokens, last_t = tokens[0], now
                try:
                    st = watch.status()
                    gov = st.raw.get("governor") or {}
                    row.update(cache_budget=st.cache.get("budget_bytes"), state=gov.get("state"),
                               cache_reason=(gov.get("reasons") or {}).get("cache_budget_bytes"))
                except Exception as e:  # noqa: BLE001
                    row["status_error"] = type(e).__name__
                samples.append(row)
    finally:
        stop.set()
        ended = {"daemon": daemon.poll(), "tenant": tenant.poll() if tenant else None}
        oom = cg.oom_kills()
        for p in (tenant, daemon):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        cg.remove()
    log = Path(folder, "err.log").read_text()[-3000:]
    return {"governor": args.governor, "limit": size(args.limit), "budget": args.budget,
            "tenant": {"step": size(args.tenant_step), "target": size(args.tenant_target),
                       "interval_s": args.tenant_interval},
            "daemon_killed": ended["daemon"] in (-9, 137), "tenant_killed": ended["tenant"] in (-9, 137),
            "ended": ended, "cgroup_oom_kills": oom, "samples": samples, "daemon_log_tail": log}


def _wait_ready(client_cls: Any, endpoint: str, daemon: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError("the daemon exited before it was ready")
        try:
            with client_cls(endpoint, timeout=2, name="bench") as c:
                if c.health().ok:
                    return
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.5)
    raise TimeoutError("the daemon did not become ready")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--limit", default="4.5GB", help="the cgroup's memory limit")
    p.add_argument("--budget", default="50%", help="the daemon's cache budget")
    p.add_argument("--governor", choices=("on", "off"), default="on")
    p.add_argument("--tenant-target", default="2.5GB")
    p.add_argument("--tenant-step", default="64MB")
    p.add_argument("--tenant-interval", type=float, default=2.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds of serving before the co-tenant starts")
    p.add_argument("--seconds", type=float, default=150.0, help="how long to watch after the co-tenant starts")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not CGROUP.is_dir() or not os.access(CGROUP, os.W_OK):
        print("needs root and a writable cgroup v1 memory controller at /sys/fs/cgroup/memory", file=sys.stderr)
        return 2
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    last = result["samples"][-1] if result["samples"] else {}
    print(json.dumps({k: result[k] for k in ("governor", "daemon_killed", "tenant_killed", "cgroup_oom_kills")}
                     | {"last": last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
