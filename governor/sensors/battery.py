"""psutil's battery reading (any platform psutil supports); None (no battery) and errors give unknown."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from .. import signals as S


def _psutil_battery() -> Any:
    return importlib.import_module("psutil").sensors_battery()


class PsutilBatterySource:
    """battery_percent, on_ac, battery_time_left_s from `psutil.sensors_battery()`."""

    name = "psutil-battery"
    fast = False
    blocking = True

    def __init__(self, probe: Callable[[], Any] = _psutil_battery) -> None:
        self._probe = probe

    def read(self, now: float) -> Mapping[str, object]:
        b = self._probe()
        if b is None:
            return {}
        out: dict[str, object] = {S.BATTERY_PERCENT: float(b.percent)}
        if b.power_plugged is not None:
            out[S.ON_AC] = bool(b.power_plugged)
        # psutil uses negative sentinels for "unlimited" (on AC) and "unknown".
        if isinstance(b.secsleft, (int, float)) and b.secsleft >= 0 and not b.power_plugged:
            out[S.BATTERY_TIME_LEFT_S] = float(b.secsleft)
        return out
