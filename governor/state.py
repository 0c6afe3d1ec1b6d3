"""The governor's states and their hysteresis: PERFORMANCE < BALANCED < SAVER < CRITICAL.

Each signal gives two levels: the *entry* level (thresholds as configured) and the *hold* level (thresholds moved
by the hysteresis band, so a state is held until its signal is clearly out). The machine escalates at once to the
entry level, and relaxes one level at a time, only after the hold level has stayed below the current state for
`dwell_s` and at least `dwell_s` after the previous change. Unknown signals give no constraint.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import signals as S
from .config import GovernorConfig
from .signals import Reading


class State(enum.IntEnum):
    PERFORMANCE = 0
    BALANCED = 1
    SAVER = 2
    CRITICAL = 3


def _battery(reading: Reading, cfg: GovernorConfig, band: float) -> State:
    on_ac = S.flag(reading, S.ON_AC)
    if on_ac is None or on_ac:
        return State.PERFORMANCE
    pct = S.number(reading, S.BATTERY_PERCENT)
    if pct is not None and pct <= cfg.battery_critical_pct + band:
        return State.CRITICAL
    if pct is not None and pct <= cfg.battery_saver_pct + band:
        return State.SAVER
    return State.BALANCED  # on battery


def _thermal(reading: Reading, cfg: GovernorConfig, band: float) -> State:
    h = S.thermal_score(reading)
    if h is None:
        return State.PERFORMANCE
    for level, threshold in ((State.CRITICAL, cfg.thermal_critical), (State.SAVER, cfg.thermal_saver),
                             (State.BALANCED, cfg.thermal_balanced)):
        if h >= threshold - band:
            return level
    return State.PERFORMANCE


def levels(reading: Reading, cfg: GovernorConfig, hold: bool) -> dict[str, State]:
    """Per cause ("battery", "thermal", "low_power"): the state it asks for (entry, or hold when `hold`)."""
    return {"battery": _battery(reading, cfg, cfg.battery_hysteresis_pct if hold else 0.0),
            "thermal": _thermal(reading, cfg, cfg.thermal_hysteresis if hold else 0.0),
            "low_power": State.SAVER if S.flag(reading, S.LOW_POWER) else State.PERFORMANCE}


def apply_profile(causes: dict[str, State], profile: str) -> dict[str, State]:
    """The causes a profile lets count: `performance` keeps only critical heat (a safety floor), `balanced` and
    `saver` add a floor of their own state, `auto` keeps all."""
    if profile == "performance":
        return {"thermal": causes["thermal"] if causes["thermal"] == State.CRITICAL else State.PERFORMANCE}
    if profile == "balanced":
        return {**causes, "profile": State.BALANCED}
    if profile == "saver":
        return {**causes, "profile": State.SAVER}
    return causes


def describe(causes: dict[str, State], level: State) -> str:
    """'battery, thermal' — the causes at `level`, or 'nominal'."""
    names = [k for k, v in causes.items() if v == level and v != State.PERFORMANCE]
    return ", ".join(names) if names else "nominal"


@dataclass
class StateMachine:
    """Escalate at once; relax one level per dwell while the hold level stays below the state."""

    dwell_s: float
    state: State = State.PERFORMANCE
    changed_at: float | None = None
    calm_since: float | None = None
    reason: str = "start"

    def step(self, enter: dict[str, State], hold: dict[str, State], now: float) -> bool:
        """Moves to the next state for this tick; returns whether the state changed."""
        up, keep = max(enter.values()), max(hold.values())
        if up > self.state:
            self.state, self.changed_at, self.calm_since = up, now, None
            self.reason = f"escalate: {describe(enter, up)}"
            return True
        if keep >= self.state:
            self.calm_since = None
            return False
        if self.calm_since is None:
            self.calm_since = now
        since_change = now - self.changed_at if self.changed_at is not None else float("inf")
        if now - self.calm_since >= self.dwell_s and since_change >= self.dwell_s:
            self.state = State(self.state - 1)
            self.changed_at = now
            self.calm_since = now if keep < self.state else None
            self.reason = f"relax after {self.dwell_s:g} s dwell"
            return True
        return False
