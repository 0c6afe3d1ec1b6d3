"""The knob laws: batch ceiling (AIMD), cache budget (memory pressure), pace (steps/s cap, power-cap controller).

Each law keeps its own small state and is stepped once per governor tick with the injected time `now`; none
reads a clock or a sensor itself. Tightening is immediate (an escalation takes effect within one tick); loosening
is rate-limited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import signals as S
from .config import MIN_PACE_STEPS_PER_S, GovernorConfig
from .signals import Reading

MIB = 1 << 20


@dataclass
class BatchLaw:
    """Additive increase (`batch_increase` per `batch_interval_s`) toward the target; multiplicative decrease at
    once when above it: to the lower of the target and ceiling × `batch_decrease` (AIMD may undershoot the target
    and climb back additively)."""

    ceiling: int
    changed_at: float | None = None

    def step(self, target: int, cfg: GovernorConfig, now: float) -> str:
        if self.ceiling > target:
            self.ceiling = max(1, min(target, math.floor(self.ceiling * cfg.batch_decrease)))
            self.changed_at = now
            return "decrease (multiplicative)"
        if self.ceiling < target:
            if self.changed_at is None or now - self.changed_at >= cfg.batch_interval_s:
                self.ceiling = min(target, self.ceiling + cfg.batch_increase)
                self.changed_at = now
                return "increase (additive)"
            return "waiting to increase"
        return "at target"


def memory_level(reading: Reading, cfg: GovernorConfig) -> tuple[int, str]:
    """0 none, 1 warn (hold the cache), 2 critical (shrink it), with the cause.

    From PSI (some/full avg10), macOS vm pressure level (2 warn, 4 critical) and the memory left: available memory,
    or what the process's cgroup limit leaves when that is smaller, against `mem_reserve_mib` (below it: 2, below
    twice it: 1).
    """
    found: list[tuple[int, str]] = [(0, "no memory pressure")]
    some = S.number(reading, S.MEM_PRESSURE_SOME_AVG10)
    full = S.number(reading, S.MEM_PRESSURE_FULL_AVG10)
    if some is not None and some >= cfg.psi_critical:
        found.append((2, f"PSI memory some avg10 {some:g} % >= {cfg.psi_critical:g}"))
    elif some is not None and some >= cfg.psi_warn:
        found.append((1, f"PSI memory some avg10 {some:g} % >= {cfg.psi_warn:g}"))
    if full is not None and full >= cfg.psi_full_critical:
        found.append((2, f"PSI memory full avg10 {full:g} % >= {cfg.psi_full_critical:g}"))
    vm = S.number(reading, S.VM_PRESSURE_LEVEL)
    if vm is not None and vm >= 2:
        found.append((2 if vm >= 4 else 1, f"vm pressure level {vm:g}"))
    left = memory_left(reading)
    reserve = cfg.mem_reserve_mib * MIB
    if left is not None and reserve > 0 and left < 2 * reserve:
        found.append((2 if left < reserve else 1, f"{left // MIB} MiB left, reserve {cfg.mem_reserve_mib} MiB"))
    return max(found, key=lambda x: x[0])


def memory_left(reading: Reading) -> int | None:
    """Available memory, or the room under the process's cgroup limit when that is smaller; None if unknown."""
    left = [v for v in (S.number(reading, S.MEM_AVAILABLE_BYTES),) if v is not None]
    limit, usage = S.number(reading, S.CGROUP_MEM_LIMIT_BYTES), S.number(reading, S.CGROUP_MEM_USAGE_BYTES)
    if limit is not None and usage is not None:
        left.append(max(0.0, limit - usage))
    return int(min(left)) if left else None


@dataclass
class CacheLaw:
    """The cache budget: the configured budget (or the idle budget after keep-alive), under a pressure cap that
    shrinks by `cache_shrink_step` per `cache_interval_s` while memory is critical, holds while it is at warn,
    and regrows by `cache_grow_step` per `cache_grow_interval_s` once it clears. Battery and heat never shrink it."""

    full: int               # the configured budget, bytes
    idle: int               # the budget after keep_alive_s idle, bytes
    keep_alive_s: float     # < 0: never idle
    cap: int | None = None  # the pressure cap; None = no cap
    changed_at: float | None = None

    def step(self, reading: Reading, cfg: GovernorConfig, now: float, current: int) -> tuple[int, str]:
        level, cause = memory_level(reading, cfg)
        floor = int(self.full * cfg.cache_min_fraction)
        since = now - self.changed_at if self.changed_at is not None else math.inf
        if level == 2 and since >= cfg.cache_interval_s:
            base = current if self.cap is None else self.cap
            new_cap = max(floor, base - max(1, int(self.full * cfg.cache_shrink_step)))
            if new_cap < base:
                self.cap, self.changed_at = new_cap, now
        elif level == 0 and self.cap is not None and since >= cfg.cache_grow_interval_s:
            grow = max(1, int(self.full * cfg.cache_grow_step))
            self.cap, self.changed_at = self.cap + grow, now
            if self.full - self.cap < grow / 2:  # the last step absorbs the steps' rounding
                self.cap = None
        idle_s = S.number(reading, S.IDLE_S)
        idle = self.keep_alive_s >= 0 and idle_s is not None and idle_s >= self.keep_alive_s
        budget = self.idle if idle else self.full
        why = f"idle {idle_s:g} s >= keep_alive {self.keep_alive_s:g} s" if idle else "configured budget"
        if self.cap is not None and self.cap < budget:
            budget = self.cap
            why = f"memory pressure cap ({cause})" if level else "regrowing after memory pressure"
        elif level:
            why += f"; holding: {cause}"
        return budget, why


# The pace a loop achieves lags the cap it is given (each paced step also pays the loop's own work), so the cap
# may run ahead of the measured steps/s by this much: at 1.25 a GPU run settled 7 % under its power cap with the
# cap pinned at the clamp (docs/performance.md, the governor on the lent GPU).
WINDUP_HEADROOM = 2.0


@dataclass
class PaceLaw:
    """A steps/s cap: the state's fixed cap, and a power-cap controller that multiplies its cap by
    exp(gain × (cap_w − P) / cap_w) every `pace_interval_s` from the measured average power P.

    Anti-windup: the controller's cap never rises above WINDUP_HEADROOM × the measured steps/s (when known) nor above
    `pace_max_steps_per_s`; at that top with power under the cap it is released (None). It never goes below the
    least cap that keeps pauses under a second."""

    cap: float | None = None
    updated_at: float | None = None

    def step(self, reading: Reading, cfg: GovernorConfig, fixed: float, power_cap_w: float,
             now: float) -> tuple[float | None, str]:
        power = S.number(reading, S.POWER_AVG_W)
        power = power if power is not None else S.number(reading, S.POWER_W)
        why = "no pace cap"
        if power_cap_w <= 0:
            self.cap = None
        elif power is None:
            why = "power cap set but no power reading"
        elif self.updated_at is None or now - self.updated_at >= cfg.pace_interval_s:
            self.updated_at = now
            self._adjust(power, power_cap_w, S.number(reading, S.STEPS_PER_S), cfg)
        if self.cap is not None:
            why = f"power cap {power_cap_w:g} W (measured {power:g} W)" if power is not None else why
        caps = [c for c in (self.cap, fixed if fixed > 0 else None) if c is not None]
        if fixed > 0 and (self.cap is None or fixed <= self.cap):
            why = f"state cap {fixed:g} steps/s"
        return (min(caps) if caps else None), why

    def _adjust(self, power: float, cap_w: float, steps: float | None, cfg: GovernorConfig) -> None:
        top = cfg.pace_max_steps_per_s
        if steps is not None and steps > 0:
            top = min(top, max(MIN_PACE_STEPS_PER_S, WINDUP_HEADROOM * steps))
        current = self.cap if self.cap is not None else top
        factor = math.exp(max(-0.7, min(0.4, cfg.pace_gain * (cap_w - power) / cap_w)))
        new = min(top, max(MIN_PACE_STEPS_PER_S, current * factor))
        self.cap = None if new >= cfg.pace_max_steps_per_s and power < cap_w else new
