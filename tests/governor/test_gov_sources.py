"""Sampler deadlines and failures, psutil battery, NVML (fake pynvml), EngineSource and TraceSource."""

from __future__ import annotations

import json
import sys
import threading
import types
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from moed.governor import signals as S
from moed.governor.sensors import EngineSource, FunctionSource, Sampler, TraceError, TraceSource, load_trace
from moed.governor.sensors.battery import PsutilBatterySource
from moed.governor.replay import TRACES
from moed.governor.sensors.nvml import NvmlSource, gpu_score


def test_sampler_ok_raise_nan() -> None:
    ok = Sampler(FunctionSource("ok", lambda now: {"a": 1, "b": True}), 1.0)
    assert ok.sample(0.0) == ({"a": 1.0, "b": True}, "ok")
    bad = Sampler(FunctionSource("bad", lambda now: 1 / 0), 1.0)
    reading, status = bad.sample(0.0)
    assert reading == {} and status.startswith("error: ZeroDivisionError")
    nan = Sampler(FunctionSource("nan", lambda now: {S.THERMAL: float("nan"), S.POWER_W: float("inf")}), 1.0)
    assert nan.sample(0.0) == ({S.THERMAL: None, S.POWER_W: None}, "ok")


def test_sampler_abandons_a_hung_read_until_it_returns() -> None:
    release = threading.Event()
    calls: list[float] = []

    def read(now: float) -> dict[str, object]:
        calls.append(now)
        if len(calls) == 1:
            release.wait(10.0)
        return {"x": now}

    sampler = Sampler(FunctionSource("slow", read), 0.05)
    assert sampler.sample(1.0) == ({}, "timeout")
    assert sampler.sample(2.0) == ({}, "hung")  # no second read is started while the first hangs
    assert calls == [1.0]
    release.set()
    assert sampler._pending is not None
    sampler._pending.join(5.0)
    assert sampler.sample(3.0) == ({"x": 3.0}, "ok")


def test_inline_source_is_guarded() -> None:
    src = FunctionSource("inline", lambda now: {}[0], blocking=False)  # type: ignore[index]
    assert Sampler(src, 0.01).sample(0.0)[1].startswith("error: KeyError")


Battery = namedtuple("Battery", "percent secsleft power_plugged")


def test_psutil_battery() -> None:
    assert PsutilBatterySource(lambda: None).read(0.0) == {}
    r = PsutilBatterySource(lambda: Battery(33.0, 5400, False)).read(0.0)
    assert r == {S.BATTERY_PERCENT: 33.0, S.ON_AC: False, S.BATTERY_TIME_LEFT_S: 5400.0}
    r = PsutilBatterySource(lambda: Battery(90.0, -2, True)).read(0.0)  # POWER_TIME_UNLIMITED
    assert r == {S.BATTERY_PERCENT: 90.0, S.ON_AC: True}

    def raising() -> None:
        raise RuntimeError("no /sys/class/power_supply in this container")

    assert Sampler(PsutilBatterySource(raising), 1.0).sample(0.0)[0] == {}


RECORDED = json.loads((Path(__file__).parent / "data" / "nvml_h200_idle.json").read_text())


def fake_pynvml(recorded: dict[str, Any] = RECORDED, devices: int = 1) -> types.ModuleType:
    """A pynvml stand-in replaying readings recorded with the real pynvml (tests/governor/data/nvml_*.json): the
    n-th read of a device gets the n-th recorded sample (the last one repeats)."""
    nv = types.ModuleType("pynvml")
    raw = recorded["raw"]
    count = {h: 0 for h in range(devices)}

    def sample(h: int, key: str) -> Any:
        return raw[min(count[h], len(raw) - 1)][key]

    def energy(h: int) -> int:
        value = sample(h, "energy_mj")
        count[h] += 1  # the energy counter is the last call of a read
        return int(value)

    attrs: dict[str, Any] = {
        "NVML_TEMPERATURE_GPU": recorded["NVML_TEMPERATURE_GPU"],
        "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN": recorded["SLOWDOWN"],
        "nvmlInit": lambda: None, "nvmlDeviceGetCount": lambda: devices,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetTemperature": lambda h, kind: sample(h, "temp_c"),
        "nvmlDeviceGetTemperatureThreshold": lambda h, kind: recorded["slowdown_c"],
        "nvmlDeviceGetPowerUsage": lambda h: sample(h, "power_mw"),
        "nvmlDeviceGetTotalEnergyConsumption": energy,
    }
    for name, value in attrs.items():
        setattr(nv, name, value)
    return nv


def test_nvml_readings_and_average_power() -> None:
    raw = RECORDED["raw"]
    src = NvmlSource(fake_pynvml())
    first = src.read(raw[0]["t"])
    assert first[S.GPU_TEMP_C] == 37.0 and first[S.POWER_W] == pytest.approx(78.237)
    assert first[S.ENERGY_J] == pytest.approx(3494.009) and S.POWER_AVG_W not in first
    assert first[S.THERMAL_GPU] == pytest.approx(gpu_score(37.0, 89.0)) == 0.0
    second = src.read(raw[1]["t"])
    # (3533.311 - 3494.009) J over 0.507 s: 77.5 W, next to the 78.3 W instantaneous reading.
    assert second[S.POWER_AVG_W] == pytest.approx(77.52, abs=0.05)
    two = NvmlSource(fake_pynvml(devices=2)).read(0.0)  # over GPUs: power sums, the hottest counts
    assert two[S.POWER_W] == pytest.approx(2 * 78.237) and two[S.GPU_TEMP_C] == 37.0


def test_nvml_absent_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert Sampler(NvmlSource(), 1.0).sample(0.0)[0] == {}


def test_nvml_imported_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    assert NvmlSource().read(0.0)[S.GPU_TEMP_C] == 37.0


def test_gpu_score() -> None:
    assert gpu_score(50.0, 90.0) == 0.0 and gpu_score(85.0, 90.0) == pytest.approx(0.6)
    assert gpu_score(90.0, 90.0) == pytest.approx(1.0) and gpu_score(99.0, 90.0) == 1.0


def test_engine_source_tracks_idle() -> None:
    t = [100.0]
    engine = EngineSource(lambda: t[0])
    assert engine.read(130.0)[S.IDLE_S] == 30.0  # idle since construction
    engine.update(active=2, queue_len=1, decode_tok_s=20.0, hit_rate=0.9, bytes_read=1000)
    r = engine.read(140.0)
    assert r[S.IDLE_S] == 0.0 and r[S.DECODE_TOK_S] == 20.0 and r[S.QUEUE_LEN] == 1
    t[0] = 150.0
    engine.update(active=0, queue_len=0)
    assert engine.read(200.0)[S.IDLE_S] == 50.0


def test_trace_replay(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('# comment\n{"t": 0, "battery_percent": 80, "on_ac": false}\n\n'
                    '{"t": 5, "battery_percent": 79}\n{"t": 10, "on_ac": null}\n')
    src = TraceSource(path, start=100.0)
    assert src.read(99.0) == {}
    assert src.read(100.0) == {S.BATTERY_PERCENT: 80.0, S.ON_AC: False}
    assert src.read(107.0) == {S.BATTERY_PERCENT: 79.0, S.ON_AC: False}
    assert src.read(500.0) == {S.BATTERY_PERCENT: 79.0, S.ON_AC: None}
    looped = TraceSource(path, loop=True)
    assert looped.read(50.0)[S.BATTERY_PERCENT] == 80.0  # first read starts the replay
    assert looped.read(56.0)[S.BATTERY_PERCENT] == 79.0 and looped.read(61.0)[S.BATTERY_PERCENT] == 80.0


@pytest.mark.parametrize("content", ['{"t": 1}\n{"t": 0}\n', "not json\n", '{"x": 1}\n', "", '[1, 2]\n'])
def test_bad_traces(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError, match="bad.jsonl"):
        load_trace(path)


def test_shipped_traces_load() -> None:
    traces = sorted(TRACES.glob("*.jsonl"))
    assert {p.name for p in traces} >= {"discharge.jsonl", "thermal_ramp.jsonl", "plug_flap.jsonl",
                                        "memory_spike.jsonl"}
    for p in traces:
        assert len(load_trace(p)) > 5
