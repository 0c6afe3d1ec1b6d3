"""Linux pressure (PSI) and memory sources, with the root directory as a parameter.

- `PressureSource`: /proc/pressure/{memory,io,cpu}: `some`/`full` avg10 and avg60 (percent of time stalled).
- `MemorySource`: MemAvailable/MemTotal from /proc/meminfo (psutil off Linux), and the process's own cgroup
  memory limit and usage: the cgroup path from /proc/self/cgroup, then v2 memory.max/memory.current (the tightest
  limit on the path up to the root) or v1 memory/…/memory.limit_in_bytes/memory.usage_in_bytes.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Mapping

from .. import signals as S
from .sysfs import read_text

V1_UNLIMITED = 1 << 60  # v1 prints ~2^63 rounded down to a page for "no limit"


def parse_psi(text: str) -> dict[str, float]:
    """`some avg10=1.00 avg60=… total=…` lines → {"some_avg10": 1.0, "some_avg60": …, "full_avg10": …}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        for item in parts[1:]:
            key, _, value = item.partition("=")
            if key in ("avg10", "avg60"):
                try:
                    out[f"{parts[0]}_{key}"] = float(value)
                except ValueError:
                    pass
    return out


class PressureSource:
    """Linux PSI: mem/io/cpu_pressure_{some,full}_{avg10,avg60}; unknown where /proc/pressure is absent."""

    name = "psi"
    fast = True
    blocking = True

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def read(self, now: float) -> Mapping[str, object]:
        out: dict[str, object] = {}
        for resource, prefix in (("memory", "mem"), ("io", "io"), ("cpu", "cpu")):
            text = read_text(self.root / "proc/pressure" / resource)
            if text is not None:
                for key, value in parse_psi(text).items():
                    out[f"{prefix}_pressure_{key}"] = value
        return out


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo → {"MemTotal": bytes, "MemAvailable": bytes, …}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key.strip()] = int(fields[0]) * (1024 if len(fields) > 1 and fields[1] == "kB" else 1)
    return out


def _limit(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= V1_UNLIMITED else value


def _walk(base: Path, rel: str, limit_file: str, usage_file: str) -> tuple[int | None, int | None]:
    # Limits of every ancestor apply, so the tightest one on the way up counts; usage is the group's own.
    own = base / rel if rel and (base / rel).is_dir() else base  # inside a namespace the path may not resolve
    limits: list[int] = []
    d = own
    while True:
        limit = _limit(read_text(d / limit_file))
        if limit is not None:
            limits.append(limit)
        if d == base or base not in d.parents:
            break
        d = d.parent
    usage = read_text(own / usage_file)
    return (min(limits) if limits else None), (int(usage) if usage and usage.isdigit() else None)


def cgroup_memory(root: Path) -> tuple[int | None, int | None]:
    """(limit, usage) in bytes of the process's own memory cgroup, None where there is none or it is unlimited.

    A v1 memory controller wins over the v2 line (hybrid systems list both; memory then lives in v1). The v2
    hierarchy is at /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems.
    """
    text = read_text(root / "proc/self/cgroup")
    if text is None:
        return None, None
    base = root / "sys/fs/cgroup"
    v2: str | None = None
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip().lstrip("/")
        if "memory" in controllers.split(","):
            return _walk(base / "memory", rel, "memory.limit_in_bytes", "memory.usage_in_bytes")
        if hid == "0" and controllers == "":
            v2 = rel
    if v2 is None:
        return None, None
    unified = base if (base / "cgroup.controllers").exists() or not (base / "unified").is_dir() else base / "unified"
    return _walk(unified, v2, "memory.max", "memory.current")


class MemorySource:
    """Available and total memory, and the process's cgroup memory limit and usage."""

    name = "memory"
    fast = True
    blocking = True

    def __init__(self, root: str | Path = "/", platform: str = sys.platform) -> None:
        self.root = Path(root)
        self.platform = platform

    def read(self, now: float) -> Mapping[str, object]:
        out: dict[str, object] = {}
        if self.platform.startswith("linux"):
            info = parse_meminfo(read_text(self.root / "proc/meminfo") or "")
            out[S.MEM_AVAILABLE_BYTES] = info.get("MemAvailable")
            out[S.MEM_TOTAL_BYTES] = info.get("MemTotal")
            limit, usage = cgroup_memory(self.root)
            out[S.CGROUP_MEM_LIMIT_BYTES] = limit
            out[S.CGROUP_MEM_USAGE_BYTES] = usage
        else:
            vm = importlib.import_module("psutil").virtual_memory()
            out[S.MEM_AVAILABLE_BYTES] = vm.available
            out[S.MEM_TOTAL_BYTES] = vm.total
        return out
