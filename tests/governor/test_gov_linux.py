"""Linux sysfs, PSI and cgroup parsers on fake trees under tmp_path, and the real files where present."""

from __future__ import annotations

from pathlib import Path

import pytest

from moed.governor import signals as S
from moed.governor.sensors.memory import MemorySource, PressureSource, cgroup_memory, parse_psi
from moed.governor.sensors.sysfs import PowerSupplySource, ThermalZonesSource, Trip, Zone, zone_score


def put(root: Path, rel: str, content: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content + "\n")


def zone(root: Path, n: int, temp_mc: int, trips: list[tuple[int, str, int]], kind: str = "x86_pkg_temp") -> None:
    base = f"sys/class/thermal/thermal_zone{n}"
    put(root, f"{base}/type", kind)
    put(root, f"{base}/temp", str(temp_mc))
    for i, (t, ty, hyst) in enumerate(trips):
        put(root, f"{base}/trip_point_{i}_temp", str(t))
        put(root, f"{base}/trip_point_{i}_type", ty)
        put(root, f"{base}/trip_point_{i}_hyst", str(hyst))


def test_thermal_zones_score_against_trips(tmp_path: Path) -> None:
    zone(tmp_path, 0, 45000, [(80000, "passive", 2000), (100000, "critical", 0)])
    zone(tmp_path, 1, 90000, [(80000, "passive", 2000), (100000, "critical", 0)], kind="acpitz")
    zone(tmp_path, 2, 99000, [])  # no trips: counts for temp_c only
    put(tmp_path, "sys/class/thermal/cooling_device0/cur_state", "3")
    put(tmp_path, "sys/class/thermal/cooling_device0/max_state", "10")
    put(tmp_path, "sys/class/thermal/cooling_device1/cur_state", "1")
    put(tmp_path, "sys/class/thermal/cooling_device1/max_state", "2")
    r = ThermalZonesSource(tmp_path).read(0.0)
    assert r[S.THERMAL_ZONES] == pytest.approx(0.8)  # zone 1: halfway from passive (0.6) to critical (1.0)
    assert r[S.TEMP_C] == 99.0 and r[S.COOLING] == 0.5


def test_zone_score_shape() -> None:
    trips = (Trip(80.0, "passive", 2.0), Trip(100.0, "critical", 0.0))
    at = lambda t: zone_score(Zone("z", "t", t, trips))  # noqa: E731
    assert at(50.0) == 0.0 and at(60.0) == 0.0
    assert at(70.0) == pytest.approx(0.3) and at(80.0) == pytest.approx(0.6)
    assert at(100.0) == pytest.approx(1.0) and at(120.0) == 1.0
    assert zone_score(Zone("z", "t", 90.0, (Trip(95.0, "critical", 0.0),))) == pytest.approx(0.6 + 0.4 * 10 / 15)
    assert zone_score(Zone("z", "t", 90.0, (Trip(-273.0, "critical", 0.0),))) is None


def test_no_thermal_tree_is_unknown(tmp_path: Path) -> None:
    assert ThermalZonesSource(tmp_path).read(0.0) == {S.THERMAL_ZONES: None, S.TEMP_C: None, S.COOLING: None}


def battery(root: Path, status: str, capacity: int, energy: int | None = None, power: int | None = None) -> None:
    put(root, "sys/class/power_supply/BAT0/type", "Battery")
    put(root, "sys/class/power_supply/BAT0/present", "1")
    put(root, "sys/class/power_supply/BAT0/status", status)
    put(root, "sys/class/power_supply/BAT0/capacity", str(capacity))
    if energy is not None and power is not None:
        put(root, "sys/class/power_supply/BAT0/energy_now", str(energy))
        put(root, "sys/class/power_supply/BAT0/power_now", str(power))


def test_power_supply_discharging(tmp_path: Path) -> None:
    battery(tmp_path, "Discharging", 42, energy=20_000_000, power=10_000_000)  # 20 Wh at 10 W
    put(tmp_path, "sys/class/power_supply/AC/type", "Mains")
    put(tmp_path, "sys/class/power_supply/AC/online", "0")
    put(tmp_path, "sys/firmware/acpi/platform_profile", "low-power")
    r = PowerSupplySource(tmp_path).read(0.0)
    assert r[S.BATTERY_PERCENT] == 42.0 and r[S.ON_AC] is False
    assert r[S.BATTERY_TIME_LEFT_S] == pytest.approx(7200.0) and r[S.BATTERY_POWER_W] == pytest.approx(10.0)
    assert r[S.LOW_POWER] is True and r[S.PLATFORM_PROFILE] == "low-power"


def test_power_supply_charge_units_and_no_mains(tmp_path: Path) -> None:
    battery(tmp_path, "Discharging", 80)
    put(tmp_path, "sys/class/power_supply/BAT0/charge_now", "2000000")   # 2 Ah
    put(tmp_path, "sys/class/power_supply/BAT0/current_now", "1000000")  # 1 A
    put(tmp_path, "sys/class/power_supply/BAT0/voltage_now", "12000000")  # 12 V
    r = PowerSupplySource(tmp_path).read(0.0)
    assert r[S.ON_AC] is False and r[S.BATTERY_TIME_LEFT_S] == pytest.approx(7200.0)


def test_power_supply_on_ac_and_server(tmp_path: Path) -> None:
    battery(tmp_path, "Charging", 55)
    put(tmp_path, "sys/class/power_supply/ADP1/type", "Mains")
    put(tmp_path, "sys/class/power_supply/ADP1/online", "1")
    put(tmp_path, "sys/firmware/acpi/platform_profile", "balanced")
    r = PowerSupplySource(tmp_path).read(0.0)
    assert r[S.ON_AC] is True and S.BATTERY_TIME_LEFT_S not in r and r[S.LOW_POWER] is False
    assert PowerSupplySource(tmp_path / "empty").read(0.0) == {}


PSI = "some avg10=12.50 avg60=3.00 avg300=0.50 total=123456\nfull avg10=4.00 avg60=1.00 avg300=0.10 total=6543\n"


def test_psi(tmp_path: Path) -> None:
    assert parse_psi(PSI) == {"some_avg10": 12.5, "some_avg60": 3.0, "full_avg10": 4.0, "full_avg60": 1.0}
    put(tmp_path, "proc/pressure/memory", PSI)
    put(tmp_path, "proc/pressure/cpu", "some avg10=1.00 avg60=0.00 avg300=0.00 total=1")
    r = PressureSource(tmp_path).read(0.0)
    assert r[S.MEM_PRESSURE_SOME_AVG10] == 12.5 and r[S.MEM_PRESSURE_FULL_AVG10] == 4.0
    assert r["cpu_pressure_some_avg10"] == 1.0 and "io_pressure_some_avg10" not in r
    assert PressureSource(tmp_path / "none").read(0.0) == {}


def test_cgroup_v2_tightest_ancestor(tmp_path: Path) -> None:
    put(tmp_path, "proc/self/cgroup", "0::/user.slice/app.scope")
    put(tmp_path, "sys/fs/cgroup/cgroup.controllers", "memory")
    put(tmp_path, "sys/fs/cgroup/user.slice/memory.max", "4294967296")
    put(tmp_path, "sys/fs/cgroup/user.slice/app.scope/memory.max", "max")
    put(tmp_path, "sys/fs/cgroup/user.slice/app.scope/memory.current", "1073741824")
    assert cgroup_memory(tmp_path) == (4 << 30, 1 << 30)


def test_cgroup_v2_namespaced_root(tmp_path: Path) -> None:
    put(tmp_path, "proc/self/cgroup", "0::/")
    put(tmp_path, "sys/fs/cgroup/cgroup.controllers", "memory")
    put(tmp_path, "sys/fs/cgroup/memory.max", "max")
    put(tmp_path, "sys/fs/cgroup/memory.current", "5000")
    assert cgroup_memory(tmp_path) == (None, 5000)


def test_cgroup_v1_hybrid(tmp_path: Path) -> None:
    put(tmp_path, "proc/self/cgroup", "4:memory:/process_api/abc\n1:cpu:/\n0::/")
    put(tmp_path, "sys/fs/cgroup/unified/cgroup.procs", "")
    put(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")
    put(tmp_path, "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes", "2147483648")
    put(tmp_path, "sys/fs/cgroup/memory/process_api/abc/memory.usage_in_bytes", "1048576")
    assert cgroup_memory(tmp_path) == (2 << 30, 1 << 20)


def test_no_cgroup_file(tmp_path: Path) -> None:
    assert cgroup_memory(tmp_path) == (None, None)


def test_memory_source_from_meminfo(tmp_path: Path) -> None:
    put(tmp_path, "proc/meminfo", "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB")
    r = MemorySource(tmp_path, "linux").read(0.0)
    assert r[S.MEM_TOTAL_BYTES] == 16000000 * 1024 and r[S.MEM_AVAILABLE_BYTES] == 8000000 * 1024
    assert r[S.CGROUP_MEM_LIMIT_BYTES] is None


REAL = Path("/")


@pytest.mark.skipif(not (REAL / "proc/pressure/memory").exists(), reason="no PSI (/proc/pressure) on this kernel")
def test_real_psi() -> None:
    r = PressureSource(REAL).read(0.0)
    for key in (S.MEM_PRESSURE_SOME_AVG10, S.MEM_PRESSURE_FULL_AVG10, "io_pressure_some_avg10"):
        assert isinstance(r[key], float) and 0.0 <= r[key] <= 100.0


@pytest.mark.skipif(not (REAL / "proc/self/cgroup").exists() or not (REAL / "proc/meminfo").exists(),
                    reason="no /proc/self/cgroup or /proc/meminfo")
def test_real_memory_and_cgroup() -> None:
    r = MemorySource(REAL, "linux").read(0.0)
    assert r[S.MEM_TOTAL_BYTES] >= r[S.MEM_AVAILABLE_BYTES] > 0
    limit, usage = cgroup_memory(REAL)
    if usage is None and limit is None:
        pytest.skip("this process has no readable memory cgroup")
    assert usage is None or usage > 0
    assert limit is None or limit > 0
