"""Signal names and the reading type every sensor returns.

A reading is a flat mapping from a signal name to a number, a flag or a short string. A signal that is absent or
None is *unknown*: the policy then assumes nothing about it (no constraint), which is the safe default for a
server without sensors. `clean` turns whatever a source returned into a valid reading (NaN and infinities become
unknown, booleans stay booleans, everything else numeric becomes float).
"""

from __future__ import annotations

import math
from typing import Mapping, Union

Value = Union[float, bool, str, None]
Reading = Mapping[str, Value]

# Power.
BATTERY_PERCENT = "battery_percent"          # 0..100
ON_AC = "on_ac"                              # bool
BATTERY_TIME_LEFT_S = "battery_time_left_s"  # seconds, while discharging
BATTERY_POWER_W = "battery_power_w"          # battery draw, W
LOW_POWER = "low_power"                      # bool: OS low-power mode / platform_profile low-power
PLATFORM_PROFILE = "platform_profile"        # str (Linux ACPI platform_profile)

# Heat: every thermal_* signal is a score, 0 = cool, 1 = severe; the policy takes the highest known one.
THERMAL = "thermal"                          # from a trace, or any source with its own score
THERMAL_OS = "thermal_os"                    # macOS thermal pressure level mapped to a score
THERMAL_ZONES = "thermal_zones"              # Linux thermal zones against their trip points
THERMAL_GPU = "thermal_gpu"                  # NVML GPU temperature against its slowdown threshold
THERMAL_KEYS = (THERMAL, THERMAL_OS, THERMAL_ZONES, THERMAL_GPU)
THERMAL_PRESSURE_LEVEL = "thermal_pressure_level"  # macOS raw level 0..4
TEMP_C = "temp_c"                            # hottest Linux zone, °C
GPU_TEMP_C = "gpu_temp_c"                    # °C
COOLING = "cooling"                          # hottest cooling device's cur_state / max_state, 0..1

# Power draw.
POWER_W = "power_w"                          # instantaneous board/package power, W
POWER_AVG_W = "power_avg_w"                  # average power since the previous read (from an energy counter), W
ENERGY_J = "energy_j"                        # energy counter, J

# Memory and pressure (PSI values are percentages of time stalled, as the kernel prints them).
MEM_AVAILABLE_BYTES = "mem_available_bytes"
MEM_TOTAL_BYTES = "mem_total_bytes"
CGROUP_MEM_LIMIT_BYTES = "cgroup_mem_limit_bytes"
CGROUP_MEM_USAGE_BYTES = "cgroup_mem_usage_bytes"
MEM_PRESSURE_SOME_AVG10 = "mem_pressure_some_avg10"
MEM_PRESSURE_FULL_AVG10 = "mem_pressure_full_avg10"
VM_PRESSURE_LEVEL = "vm_pressure_level"      # macOS kern.memorystatus_vm_pressure_level: 1 normal, 2 warn, 4 critical

# The engine's own signals (pushed by the daemon through EngineSource).
DECODE_TOK_S = "decode_tok_s"
STEPS_PER_S = "steps_per_s"
HIT_RATE = "hit_rate"
BYTES_READ = "bytes_read"
QUEUE_LEN = "queue_len"
ACTIVE = "active"
IDLE_S = "idle_s"                            # seconds since the engine last had work; 0 while busy


def clean(raw: Mapping[str, object]) -> dict[str, Value]:
    """Returns a valid reading from `raw`: drops NaN/inf and values of other types (they mean unknown)."""
    out: dict[str, Value] = {}
    for key, value in raw.items():
        if value is None or isinstance(value, (bool, str)):
            out[str(key)] = value
        elif isinstance(value, (int, float)):
            f = float(value)
            out[str(key)] = f if math.isfinite(f) else None
    return out


def number(reading: Reading, key: str) -> float | None:
    """The reading's value for `key` as a float, or None when unknown (or not a number)."""
    v = reading.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def flag(reading: Reading, key: str) -> bool | None:
    """The reading's value for `key` as a bool, or None when unknown."""
    v = reading.get(key)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and math.isfinite(v):
        return bool(v)
    return None


def thermal_score(reading: Reading) -> float | None:
    """The highest known thermal score in the reading, clamped to 0..1, or None when none is known."""
    scores = [s for s in (number(reading, k) for k in THERMAL_KEYS) if s is not None]
    return min(1.0, max(0.0, max(scores))) if scores else None
