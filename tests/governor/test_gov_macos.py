"""macOS parsers on command output in the formats of `pmset -g batt`, `pmset -g` and `sysctl` (fixtures in
tests/governor/data, transcribed in those formats: this Linux host has no Mac to capture from), and the sources'
guards off macOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from moed.governor import signals as S
from moed.governor.sensors.base import Sampler
from moed.governor.sensors.macos import (PmsetSource, ThermalPressureSource, VmPressureSource, parse_pmset_batt,
                                         parse_pmset_g, parse_vm_pressure)

DATA = Path(__file__).parent / "data"


def text(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize("name, expected", [
    ("pmset_batt_discharging.txt",
     {S.ON_AC: False, S.BATTERY_PERCENT: 85.0, S.BATTERY_TIME_LEFT_S: 4 * 3600 + 32 * 60}),
    ("pmset_batt_no_estimate.txt", {S.ON_AC: False, S.BATTERY_PERCENT: 96.0}),
    ("pmset_batt_charging.txt", {S.ON_AC: True, S.BATTERY_PERCENT: 67.0}),
    ("pmset_batt_charged.txt", {S.ON_AC: True, S.BATTERY_PERCENT: 100.0}),
    ("pmset_batt_ac_attached.txt", {S.ON_AC: True, S.BATTERY_PERCENT: 80.0}),
    ("pmset_batt_no_battery.txt", {S.ON_AC: True}),
])
def test_pmset_batt(name: str, expected: dict[str, object]) -> None:
    assert parse_pmset_batt(text(name)) == expected


def test_pmset_batt_empty_output_is_unknown() -> None:
    assert parse_pmset_batt("") == {}


@pytest.mark.parametrize("name, low", [
    ("pmset_g_lowpowermode0.txt", False), ("pmset_g_lowpowermode1.txt", True),
    ("pmset_g_powermode1.txt", True), ("pmset_g_powermode2.txt", False),
])
def test_pmset_g_low_power(name: str, low: bool) -> None:
    assert parse_pmset_g(text(name)) == {S.LOW_POWER: low}


def test_pmset_g_without_the_setting_is_unknown() -> None:
    assert parse_pmset_g(text("pmset_g_desktop.txt")) == {}


@pytest.mark.parametrize("name, level", [
    ("sysctl_vm_pressure_normal.txt", 1.0), ("sysctl_vm_pressure_warn.txt", 2.0),
    ("sysctl_vm_pressure_critical_n.txt", 4.0),
])
def test_vm_pressure(name: str, level: float) -> None:
    assert parse_vm_pressure(text(name)) == {S.VM_PRESSURE_LEVEL: level}


def test_sources_run_the_commands() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        return text("pmset_batt_discharging.txt") if argv[-1] == "batt" else text("pmset_g_lowpowermode1.txt")

    reading = PmsetSource(run).read(0.0)
    assert reading[S.BATTERY_PERCENT] == 85.0 and reading[S.LOW_POWER] is True
    assert calls == [["pmset", "-g", "batt"], ["pmset", "-g"]]
    assert VmPressureSource(lambda argv: "2\n").read(0.0) == {S.VM_PRESSURE_LEVEL: 2.0}


def test_missing_pmset_gives_unknown() -> None:
    def run(argv: list[str]) -> str:
        raise FileNotFoundError("pmset")

    reading, status = Sampler(PmsetSource(run), 1.0).sample(0.0)
    assert reading == {} and status.startswith("error: FileNotFoundError")


def test_thermal_pressure_is_unknown_off_macos() -> None:
    assert ThermalPressureSource(platform="linux").read(0.0) == {}
