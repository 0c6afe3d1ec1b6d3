"""The policy: readings and the injected time in, a Decision out. Pure and deterministic: no clock, no sensors.

Per tick: the state machine (state.py) moves on the readings' entry and hold levels under the profile; then each
knob law (knobs.py) moves toward the state's target; explicit overrides replace a knob's value last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .config import MIN_PACE_STEPS_PER_S, PROFILES, GovernorConfig
from .knobs import BatchLaw, CacheLaw, PaceLaw
from .limits import KNOBS, Decision, Limits
from .signals import Reading
from .state import State, StateMachine, apply_profile, levels


_PREFETCH_WHY = {State.PERFORMANCE: "PERFORMANCE: the daemon's depth",
                 State.BALANCED: "BALANCED: min(daemon's depth, prefetch_balanced)",
                 State.SAVER: "SAVER: off while saving", State.CRITICAL: "CRITICAL: off while saving"}


@dataclass(frozen=True)
class Bounds:
    """What the daemon is configured with: the knobs' values when nothing holds them back.

    max_batch >= 1; prefetch_depth >= 0; cache_budget_bytes and idle_cache_budget_bytes >= 0 (resolved from the
    daemon's cache_budget and idle_cache_budget); keep_alive_s: idle seconds before the idle budget (< 0 never).
    """

    max_batch: int
    prefetch_depth: int
    cache_budget_bytes: int
    idle_cache_budget_bytes: int
    keep_alive_s: float = -1.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.prefetch_depth < 0 or self.cache_budget_bytes < 0 \
                or self.idle_cache_budget_bytes < 0:
            raise ValueError(f"invalid governor bounds: {self}")


def check_override(knob: str, value: Any) -> Any:
    """The validated value for an override of `knob`; raises ValueError naming the knob."""
    if knob not in KNOBS:
        raise ValueError(f"unknown knob {knob!r} (knobs: {', '.join(KNOBS)})")
    if knob == "pace_steps_per_s":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < MIN_PACE_STEPS_PER_S:
            raise ValueError(f"{knob} must be None or a number >= {MIN_PACE_STEPS_PER_S}")
        return float(value)
    low = 1 if knob == "batch_ceiling" else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{knob} must be an integer >= {low}")
    return value


class Policy:
    """The governor's decisions; `step(reading, now)` is the only thing that moves it."""

    def __init__(self, config: GovernorConfig, bounds: Bounds) -> None:
        self.config = config
        self.bounds = bounds
        self.profile = config.profile
        self.overrides: dict[str, Any] = {}
        self.power_cap_w: float | None = None  # a cap set at run time (governor_set), in every state
        self.machine = StateMachine(config.dwell_s)
        self.batch = BatchLaw(bounds.max_batch)
        self.cache = CacheLaw(bounds.cache_budget_bytes, bounds.idle_cache_budget_bytes, bounds.keep_alive_s)
        self.pace = PaceLaw()
        self.limits = Limits(bounds.max_batch, bounds.prefetch_depth, bounds.cache_budget_bytes, None)
        self.limits_changed_at: float | None = None
        self._budget = bounds.cache_budget_bytes  # the law's own last value, overrides aside

    def set_profile(self, name: str) -> None:
        """Switches profile (auto, performance, balanced, saver); takes effect at the next step."""
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r} (profiles: {', '.join(PROFILES)})")
        self.profile = name

    def set_override(self, knob: str, value: Any) -> None:
        """Pins a knob to `value` until cleared (validated; raises ValueError)."""
        self.overrides[knob] = check_override(knob, value)

    def clear_overrides(self) -> None:
        self.overrides.clear()

    def set_power_cap(self, watts: float | None) -> None:
        """An average-power cap in W for every state (None: only the states' own `power_cap_w`); the pace
        controller holds the tightest one. Raises ValueError for a value that is not a positive finite number."""
        if watts is not None and (isinstance(watts, bool) or not isinstance(watts, (int, float))
                                  or not math.isfinite(watts) or watts <= 0):
            raise ValueError(f"power_cap_w must be a positive number of watts or None, got {watts!r}")
        self.power_cap_w = None if watts is None else float(watts)

    def step(self, reading: Reading, now: float) -> Decision:
        cfg, b = self.config, self.bounds
        enter = apply_profile(levels(reading, cfg, hold=False), self.profile)
        hold = apply_profile(levels(reading, cfg, hold=True), self.profile)
        self.machine.step(enter, hold, now)
        state = self.machine.state
        target = max(1, math.floor(b.max_batch * cfg.batch_fractions[state]))
        batch_why = self.batch.step(target, cfg, now)
        prefetch = b.prefetch_depth if state == State.PERFORMANCE else \
            min(b.prefetch_depth, cfg.prefetch_balanced) if state == State.BALANCED else 0
        budget, cache_why = self.cache.step(reading, cfg, now, self._budget)
        self._budget = budget
        caps = [c for c in (cfg.power_cap_w[state], self.power_cap_w) if c]
        pace, pace_why = self.pace.step(reading, cfg, cfg.pace_steps_per_s[state], min(caps) if caps else 0.0, now)
        values: dict[str, Any] = {"batch_ceiling": self.batch.ceiling, "prefetch_depth": prefetch,
                                  "cache_budget_bytes": budget, "pace_steps_per_s": pace}
        reasons = {"state": f"{state.name}: {self.machine.reason}",
                   "batch_ceiling": f"{state.name} target {target}; {batch_why}",
                   "prefetch_depth": _PREFETCH_WHY[state], "cache_budget_bytes": cache_why, "pace_steps_per_s": pace_why}
        for knob, value in self.overrides.items():
            values[knob] = value
            reasons[knob] = "override"
        limits = Limits(**values)
        if limits != self.limits:
            self.limits, self.limits_changed_at = limits, now
        known = {k: v for k, v in reading.items() if v is not None}
        return Decision(state=state, limits=limits, reasons=reasons, readings=known, profile=self.profile,
                        overrides=dict(self.overrides), state_changed_at=self.machine.changed_at,
                        limits_changed_at=self.limits_changed_at, at=now)
