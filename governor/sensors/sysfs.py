"""Linux sysfs sources, with the root directory as a parameter (tests point it at a fake tree).

- `ThermalZonesSource`: /sys/class/thermal/thermal_zone*/temp (m°C) against each zone's trip points
  (trip_point_N_{temp,type,hyst}); cooling_device*/{cur_state,max_state}.
- `PowerSupplySource`: /sys/class/power_supply/*/ (Battery: capacity, status, energy_now/power_now or
  charge_now/current_now; Mains/USB: online) and /sys/firmware/acpi/platform_profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import signals as S

LOW_POWER_PROFILES = ("low-power", "quiet", "cool")


def read_text(path: Path) -> str | None:
    """The stripped content of a small sysfs file, or None when it is missing or unreadable."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: Path) -> int | None:
    """A sysfs integer, or None."""
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Trip:
    temp_c: float
    type: str
    hyst_c: float


@dataclass(frozen=True)
class Zone:
    name: str
    type: str
    temp_c: float
    trips: tuple[Trip, ...]


def read_zones(root: Path) -> list[Zone]:
    """Every readable thermal zone under root/sys/class/thermal, with its trip points."""
    zones: list[Zone] = []
    for d in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        temp = read_int(d / "temp")
        if temp is None:
            continue
        trips: list[Trip] = []
        for n in range(32):
            t = read_int(d / f"trip_point_{n}_temp")
            if t is None:
                if not (d / f"trip_point_{n}_temp").exists():
                    break
                continue
            hyst = read_int(d / f"trip_point_{n}_hyst") or 0
            trips.append(Trip(t / 1000.0, read_text(d / f"trip_point_{n}_type") or "", hyst / 1000.0))
        zones.append(Zone(d.name, read_text(d / "type") or "", temp / 1000.0, tuple(trips)))
    return zones


def zone_score(zone: Zone) -> float | None:
    """0 (cool) .. 1 (severe) for a zone with trip points, else None.

    With the lowest passive/active trip P and the critical (or hot) trip C: 0 at or below P - 20 °C, rising
    linearly to 0.6 at P, then to 1.0 at C. A zone with only a critical trip uses P = C - 15 °C; a zone with only
    passive trips uses C = P + 15 °C. Trips at or below 0 °C (disabled) are ignored.
    """
    valid = [t for t in zone.trips if t.temp_c > 0]
    crit = [t.temp_c for t in valid if t.type in ("critical", "hot")]
    soft = [t.temp_c for t in valid if t.type not in ("critical", "hot")]
    if not crit and not soft:
        return None
    c = min(crit) if crit else min(soft) + 15.0
    p = min(min(soft) if soft else c - 15.0, c - 1.0)
    t = zone.temp_c
    if t <= p - 20.0:
        return 0.0
    if t <= p:
        return 0.6 * (t - (p - 20.0)) / 20.0
    return min(1.0, 0.6 + 0.4 * (t - p) / (c - p))


def read_cooling(root: Path) -> float | None:
    """The highest cur_state / max_state over cooling devices, or None when there are none."""
    fractions: list[float] = []
    for d in sorted((root / "sys/class/thermal").glob("cooling_device*")):
        cur, top = read_int(d / "cur_state"), read_int(d / "max_state")
        if cur is not None and top:
            fractions.append(min(1.0, max(0.0, cur / top)))
    return max(fractions) if fractions else None


class ThermalZonesSource:
    """Linux thermal zones and cooling devices: thermal_zones score, temp_c (hottest zone), cooling."""

    name = "sysfs-thermal"
    fast = True
    blocking = True

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def read(self, now: float) -> Mapping[str, object]:
        zones = read_zones(self.root)
        scores = [s for s in (zone_score(z) for z in zones) if s is not None]
        return {S.THERMAL_ZONES: max(scores) if scores else None,
                S.TEMP_C: max((z.temp_c for z in zones), default=None),
                S.COOLING: read_cooling(self.root)}


def read_power_supply(root: Path) -> dict[str, object]:
    """Battery percent, on AC, time left and draw from root/sys/class/power_supply (unknown where absent)."""
    out: dict[str, object] = {}
    mains_online: list[bool] = []
    percents: list[float] = []
    statuses: list[str] = []
    energy = power = 0.0
    for d in sorted((root / "sys/class/power_supply").glob("*")):
        kind = read_text(d / "type") or ""
        if kind in ("Mains", "USB", "USB_C", "USB_PD"):
            online = read_int(d / "online")
            if online is not None:
                mains_online.append(online == 1)
        elif kind == "Battery" and read_int(d / "present") != 0:
            cap = read_int(d / "capacity")
            if cap is not None:
                percents.append(float(cap))
            statuses.append(read_text(d / "status") or "Unknown")
            e, p = read_int(d / "energy_now"), read_int(d / "power_now")  # µWh, µW
            if e is None or p is None:
                q, i, v = read_int(d / "charge_now"), read_int(d / "current_now"), read_int(d / "voltage_now")
                if q is not None and i is not None and v is not None:  # µAh, µA, µV
                    e, p = int(q * v / 1e6), int(i * v / 1e6)
            energy += e or 0
            power += abs(p or 0)
    if percents:
        out[S.BATTERY_PERCENT] = sum(percents) / len(percents)
        out[S.BATTERY_POWER_W] = power / 1e6
    if mains_online:
        out[S.ON_AC] = any(mains_online)
    elif statuses:
        out[S.ON_AC] = not any(s == "Discharging" for s in statuses)
    if statuses and any(s == "Discharging" for s in statuses) and power > 0:
        out[S.BATTERY_TIME_LEFT_S] = energy / power * 3600.0
    return out


class PowerSupplySource:
    """Linux power_supply class and ACPI platform_profile: battery, on_ac, time left, low_power."""

    name = "sysfs-power"
    fast = False
    blocking = True

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def read(self, now: float) -> Mapping[str, object]:
        out = read_power_supply(self.root)
        profile = read_text(self.root / "sys/firmware/acpi/platform_profile")
        if profile is not None:
            out[S.PLATFORM_PROFILE] = profile
            out[S.LOW_POWER] = profile in LOW_POWER_PROFILES
        return out
