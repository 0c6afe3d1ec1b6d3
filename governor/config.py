"""GovernorConfig: the governor's thresholds and laws, one frozen, validated dataclass.

The daemon's config file maps its `[governor]` section onto this class with `GovernorConfig.from_dict`; every key
is validated at construction and an error names the key. Per-state keys are lists of four values, in the order
PERFORMANCE, BALANCED, SAVER, CRITICAL. docs/governor.md has the table (the `doc` metadata below).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

PROFILES = ("auto", "performance", "balanced", "saver")
MAX_PAUSE_S = 0.8  # a steps/s cap must imply pauses below ~1 s: Apple GPUs clock down after longer ones
MIN_PACE_STEPS_PER_S = 1.0 / MAX_PAUSE_S

Check = Callable[[Any], "str | None"]


class GovernorConfigError(ValueError):
    """A governor configuration problem; the message names the key."""


def _key(default: Any, doc: str, check: Check | None = None) -> Any:
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"doc": doc, "check": check})
    return field(default=default, metadata={"doc": doc, "check": check})


def _num(lo: float, hi: float = math.inf) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must be a finite number"
        return None if lo <= v <= hi else f"must be in [{lo}, {hi}]"
    return check


def _int(lo: int) -> Check:
    return lambda v: (None if isinstance(v, int) and not isinstance(v, bool) and v >= lo
                      else f"must be an integer >= {lo}")


def _per_state(item: Check, non_increasing: bool = False, non_decreasing_positive: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, (list, tuple)) or len(v) != 4:
            return "must be a list of 4 values (PERFORMANCE, BALANCED, SAVER, CRITICAL)"
        for x in v:
            if (err := item(x)) is not None:
                return f"each value {err}"
        if non_increasing and any(a < b for a, b in zip(v, v[1:])):
            return "must not increase from PERFORMANCE to CRITICAL"
        if non_decreasing_positive:
            caps = [x if x > 0 else math.inf for x in v]
            if any(a < b for a, b in zip(caps, caps[1:])):
                return "caps must not loosen from PERFORMANCE to CRITICAL (0 = none only before the first cap)"
        return None
    return check


def _pace(v: Any) -> str | None:
    if (err := _num(0)(v)) is not None:
        return err
    return None if v == 0 or v >= MIN_PACE_STEPS_PER_S else f"must be 0 (no cap) or >= {MIN_PACE_STEPS_PER_S}"


@dataclass(frozen=True)
class GovernorConfig:
    profile: str = _key("auto", "`auto` (from readings), `performance`, `balanced` or `saver`",
                        lambda v: None if v in PROFILES else f"must be one of {', '.join(PROFILES)}")
    tick_s: float = _key(1.0, "seconds between governor ticks (GovernorThread), in [0.05, 60]", _num(0.05, 60))
    fast_interval_s: float = _key(1.0, "sample period of fast sources (thermal, PSI, engine, NVML), [0.05, 600]",
                                  _num(0.05, 600))
    slow_interval_s: float = _key(30.0, "sample period of slow sources (battery, power_supply, pmset), [0.05, 3600]",
                                  _num(0.05, 3600))
    read_timeout_s: float = _key(0.5, "a sensor read taking longer counts as unknown until it returns, [0.01, 10]",
                                 _num(0.01, 10))
    dwell_s: float = _key(60.0, "seconds readings must stay inside the exit band before relaxing one state, "
                          "and the least time between relaxations, [0, 3600]", _num(0, 3600))
    battery_saver_pct: float = _key(20.0, "on battery at or below this percent: SAVER, [0, 100]", _num(0, 100))
    battery_critical_pct: float = _key(7.0, "on battery at or below this percent: CRITICAL, [0, 100]",
                                       _num(0, 100))
    battery_hysteresis_pct: float = _key(5.0, "a battery state clears only above its threshold plus this, [0, 50]",
                                         _num(0, 50))
    thermal_balanced: float = _key(0.4, "thermal score at or above which: BALANCED, [0, 1]", _num(0, 1))
    thermal_saver: float = _key(0.7, "thermal score at or above which: SAVER, [0, 1]", _num(0, 1))
    thermal_critical: float = _key(0.9, "thermal score at or above which: CRITICAL, [0, 1]", _num(0, 1))
    thermal_hysteresis: float = _key(0.1, "a thermal state clears only below its threshold minus this, [0, 0.5]",
                                     _num(0, 0.5))
    batch_fractions: tuple[float, ...] = _key((1.0, 0.5, 0.25, 0.0), "per state: batch ceiling as a fraction of "
                                              "the daemon's max_batch (at least 1), each in [0, 1], non-increasing",
                                              _per_state(_num(0, 1), non_increasing=True))
    batch_decrease: float = _key(0.5, "multiplicative decrease of the batch ceiling when above its target, "
                                 "[0.1, 0.9]", _num(0.1, 0.9))
    batch_increase: int = _key(1, "additive increase of the batch ceiling per interval, >= 1", _int(1))
    batch_interval_s: float = _key(5.0, "least seconds between batch ceiling increases, [0, 600]", _num(0, 600))
    prefetch_balanced: int = _key(1, "prefetch depth in BALANCED (capped by the daemon's depth); SAVER and "
                                  "CRITICAL prefetch nothing, >= 0", _int(0))
    mem_reserve_mib: int = _key(1024, "memory kept free: available below it shrinks the cache, below twice it "
                                "holds the cache, >= 0", _int(0))
    psi_warn: float = _key(10.0, "memory PSI some avg10 (%) at or above which the cache stops growing, [0, 100]",
                           _num(0, 100))
    psi_critical: float = _key(30.0, "memory PSI some avg10 (%) at or above which the cache shrinks, [0, 100]",
                               _num(0, 100))
    psi_full_critical: float = _key(10.0, "memory PSI full avg10 (%) at or above which the cache shrinks, [0, 100]",
                                    _num(0, 100))
    cache_shrink_step: float = _key(0.1, "cache shrink per step, fraction of the configured budget, (0, 1]",
                                    _num(1e-6, 1))
    cache_grow_step: float = _key(0.05, "cache regrowth per step, fraction of the configured budget, (0, 1]",
                                  _num(1e-6, 1))
    cache_interval_s: float = _key(5.0, "least seconds between cache shrink steps, [0, 600]", _num(0, 600))
    cache_grow_interval_s: float = _key(30.0, "least seconds between cache regrowth steps, [0, 3600]",
                                        _num(0, 3600))
    cache_min_fraction: float = _key(0.05, "the cache never shrinks below this fraction of the configured budget "
                                     "for pressure, [0, 1]", _num(0, 1))
    pace_steps_per_s: tuple[float, ...] = _key((0.0, 0.0, 0.0, 0.0), "per state: decode steps/s cap; 0 = none, "
                                               f"else >= {MIN_PACE_STEPS_PER_S} (pauses < {MAX_PAUSE_S} s)",
                                               _per_state(_pace, non_decreasing_positive=True))
    power_cap_w: tuple[float, ...] = _key((0.0, 0.0, 0.0, 0.0), "per state: average power cap in W (needs a "
                                          "power reading); 0 = none", _per_state(_num(0, 100000),
                                                                                 non_decreasing_positive=True))
    pace_interval_s: float = _key(2.0, "seconds between power-cap controller updates, [0.1, 600]",
                                  _num(0.1, 600))
    pace_gain: float = _key(0.5, "power-cap controller gain (log steps/s per relative power error), (0, 1.5]",
                            _num(1e-3, 1.5))
    pace_max_steps_per_s: float = _key(5000.0, "the controller's cap is released above this, "
                                       f">= {MIN_PACE_STEPS_PER_S}", _num(MIN_PACE_STEPS_PER_S))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            check = f.metadata.get("check")
            if check is not None and (err := check(value)) is not None:
                raise GovernorConfigError(f"governor.{f.name} = {value!r}: {err}")
            if isinstance(value, tuple):
                object.__setattr__(self, f.name, tuple(float(x) for x in value))
        self._check_order()

    def _check_order(self) -> None:
        if not self.battery_critical_pct <= self.battery_saver_pct:
            raise GovernorConfigError("governor.battery_critical_pct must be <= battery_saver_pct")
        if not self.thermal_balanced <= self.thermal_saver <= self.thermal_critical:
            raise GovernorConfigError("governor.thermal_balanced <= thermal_saver <= thermal_critical must hold")
        if not self.psi_warn <= self.psi_critical:
            raise GovernorConfigError("governor.psi_warn must be <= psi_critical")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GovernorConfig:
        """Builds a config from a mapping (the `[governor]` table); raises GovernorConfigError naming an unknown
        key or a bad value."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise GovernorConfigError(f"governor.{key}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> GovernorConfig:
        """A copy with `changes` applied and validated."""
        return dataclasses.replace(self, **changes)


def describe() -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every key, for documentation."""
    return [(f.name, getattr(GovernorConfig(), f.name), f.metadata["doc"]) for f in dataclasses.fields(GovernorConfig)]
