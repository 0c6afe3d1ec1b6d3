"""NVIDIA GPU temperature, board power and energy counter through NVML (`pynvml`, from nvidia-ml-py).

pynvml is imported only when this source is first read (the `gpu` extra installs it); a missing module, a
missing driver or a failing call gives unknown. Over all visible GPUs: the hottest temperature and its score,
the summed power, the summed energy counter, and the average power between two reads from that counter.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Mapping

from .. import signals as S

DEFAULT_SLOWDOWN_C = 85.0


def gpu_score(temp_c: float, slowdown_c: float) -> float:
    """0 at slowdown - 25 °C or below, 0.6 at slowdown - 5 °C, 1.0 at the slowdown threshold."""
    if temp_c <= slowdown_c - 25.0:
        return 0.0
    if temp_c <= slowdown_c - 5.0:
        return 0.6 * (temp_c - (slowdown_c - 25.0)) / 20.0
    return min(1.0, 0.6 + 0.4 * (temp_c - (slowdown_c - 5.0)) / 5.0)


class NvmlSource:
    """gpu_temp_c, thermal_gpu, power_w, energy_j, power_avg_w over all NVIDIA GPUs."""

    name = "nvml"
    fast = True
    blocking = True

    def __init__(self, module: ModuleType | None = None) -> None:
        self._nv: Any = module
        self._handles: list[Any] | None = None
        self._last: tuple[float, float] | None = None  # (now, energy J)

    def _init(self) -> None:
        if self._nv is None:
            self._nv = importlib.import_module("pynvml")  # the optional `gpu` extra; absent → unknown
        self._nv.nvmlInit()
        count = self._nv.nvmlDeviceGetCount()
        self._handles = [self._nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def _slowdown(self, handle: Any) -> float:
        try:
            return float(self._nv.nvmlDeviceGetTemperatureThreshold(
                handle, self._nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN))
        except Exception:  # noqa: BLE001 - not every board reports it
            return DEFAULT_SLOWDOWN_C

    def read(self, now: float) -> Mapping[str, object]:
        if self._handles is None:
            self._init()
        assert self._handles is not None
        if not self._handles:
            return {}
        nv = self._nv
        temps = [float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)) for h in self._handles]
        scores = [gpu_score(t, self._slowdown(h)) for t, h in zip(temps, self._handles)]
        power = sum(nv.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000.0  # mW → W
        out: dict[str, object] = {S.GPU_TEMP_C: max(temps), S.THERMAL_GPU: max(scores), S.POWER_W: power}
        try:
            energy = sum(nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0  # mJ → J
        except Exception:  # noqa: BLE001 - older boards lack the counter; power_w still serves
            return out
        out[S.ENERGY_J] = energy
        if self._last is not None and now > self._last[0] and energy >= self._last[1]:
            out[S.POWER_AVG_W] = (energy - self._last[1]) / (now - self._last[0])
        self._last = (now, energy)
        return out
