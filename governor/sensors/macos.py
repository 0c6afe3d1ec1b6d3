"""macOS sources: thermal pressure through libSystem notify (ctypes), `pmset` and `sysctl` output parsers.

The parsers are pure functions over the commands' text (tested on recorded output); the sources run the commands
with a timeout. On other platforms `ThermalPressureSource` reports unknown without touching ctypes' libSystem.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from typing import Callable, Mapping

from .. import signals as S

THERMAL_NOTIFY_NAME = b"com.apple.system.thermalpressurelevel"
# Thermal pressure levels: 0 nominal, 1 moderate, 2 heavy, 3 trapping, 4 sleeping. With the default thresholds
# (0.4 / 0.7 / 0.9) moderate → BALANCED, heavy → SAVER, trapping and sleeping → CRITICAL.
PRESSURE_SCORES = {0: 0.0, 1: 0.5, 2: 0.75, 3: 0.95, 4: 1.0}

Runner = Callable[[list[str]], str]


def run_command(argv: list[str], timeout_s: float = 2.0) -> str:
    """A command's stdout; raises on failure or timeout (the Sampler turns that into unknown)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=True).stdout


_BATT_LINE = re.compile(r"(\d+)%;\s*([^;]+);\s*(.*)")
_TIME = re.compile(r"(\d+):(\d\d)\s+remaining")


def parse_pmset_batt(text: str) -> dict[str, object]:
    """`pmset -g batt` → battery_percent, on_ac, battery_time_left_s (discharging with an estimate only).

    The first line says where power comes from ('AC Power', 'Battery Power', 'UPS Power'); a machine without a
    battery prints only that line, and then battery_percent stays unknown.
    """
    out: dict[str, object] = {}
    first = text.strip().splitlines()[0] if text.strip() else ""
    if "AC Power" in first:
        out[S.ON_AC] = True
    elif "Battery Power" in first or "UPS Power" in first:
        out[S.ON_AC] = False
    for line in text.splitlines():
        if "InternalBattery" not in line:
            continue
        m = _BATT_LINE.search(line)
        if m is None:
            continue
        out[S.BATTERY_PERCENT] = float(m.group(1))
        state = m.group(2).strip().lower()
        t = _TIME.search(m.group(3))
        if state == "discharging" and t is not None:
            out[S.BATTERY_TIME_LEFT_S] = int(t.group(1)) * 3600.0 + int(t.group(2)) * 60.0
        break
    return out


def parse_pmset_g(text: str) -> dict[str, object]:
    """`pmset -g` → low_power from `lowpowermode 1` or `powermode 1` (1 = low power; 0 auto, 2 high power)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("lowpowermode", "powermode"):
            values[parts[0]] = parts[1]
    if not values:
        return {}
    return {S.LOW_POWER: values.get("lowpowermode") == "1" or values.get("powermode") == "1"}


def parse_vm_pressure(text: str) -> dict[str, object]:
    """`sysctl kern.memorystatus_vm_pressure_level` (or with -n) → vm_pressure_level (1 normal, 2 warn, 4 crit)."""
    value = text.strip().rpartition(":")[2].strip()
    return {S.VM_PRESSURE_LEVEL: float(value)} if value.isdigit() else {}


class PmsetSource:
    """`pmset -g batt` and `pmset -g`: battery, on_ac, time left, low_power."""

    name = "pmset"
    fast = False
    blocking = True

    def __init__(self, run: Runner = run_command) -> None:
        self._run = run

    def read(self, now: float) -> Mapping[str, object]:
        return {**parse_pmset_batt(self._run(["pmset", "-g", "batt"])), **parse_pmset_g(self._run(["pmset", "-g"]))}


class VmPressureSource:
    """`sysctl -n kern.memorystatus_vm_pressure_level`."""

    name = "vm-pressure"
    fast = True
    blocking = True

    def __init__(self, run: Runner = run_command) -> None:
        self._run = run

    def read(self, now: float) -> Mapping[str, object]:
        return parse_vm_pressure(self._run(["sysctl", "-n", "kern.memorystatus_vm_pressure_level"]))


class ThermalPressureSource:
    """macOS thermal pressure level (0..4) via notify_register_check/notify_get_state; unknown off macOS."""

    name = "thermal-pressure"
    fast = True
    blocking = True

    def __init__(self, platform: str = sys.platform) -> None:
        self._platform = platform
        self._lib: ctypes.CDLL | None = None
        self._token: int | None = None

    def _register(self) -> None:
        lib = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
        lib.notify_register_check.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
        lib.notify_register_check.restype = ctypes.c_uint32
        lib.notify_get_state.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
        lib.notify_get_state.restype = ctypes.c_uint32
        token = ctypes.c_int(0)
        if lib.notify_register_check(THERMAL_NOTIFY_NAME, ctypes.byref(token)) != 0:
            raise OSError("notify_register_check failed")
        self._lib, self._token = lib, token.value

    def read(self, now: float) -> Mapping[str, object]:
        if self._platform != "darwin":
            return {}
        if self._lib is None:
            self._register()
        assert self._lib is not None and self._token is not None
        state = ctypes.c_uint64(0)
        if self._lib.notify_get_state(self._token, ctypes.byref(state)) != 0:
            raise OSError("notify_get_state failed")
        level = int(state.value)
        return {S.THERMAL_PRESSURE_LEVEL: float(level), S.THERMAL_OS: PRESSURE_SCORES.get(level, 1.0)}
