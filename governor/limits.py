"""What the governor hands the daemon: `Limits` (the knob values) and `Decision` (limits plus why)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .signals import Value
from .state import State

KNOBS = ("batch_ceiling", "prefetch_depth", "cache_budget_bytes", "pace_steps_per_s")


@dataclass(frozen=True)
class Limits:
    """The knob values the daemon applies between steps.

    batch_ceiling: requests decoded together, >= 1. prefetch_depth: MoE layers ahead to prefetch, >= 0 (0 = off).
    cache_budget_bytes: the expert cache budget, >= 0. pace_steps_per_s: a cap on decode steps per second
    (the daemon pauses between steps, each pause < 1 s), or None for no cap.
    """

    batch_ceiling: int
    prefetch_depth: int
    cache_budget_bytes: int
    pace_steps_per_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KNOBS}


@dataclass(frozen=True)
class Decision:
    """One tick's outcome: the state, the limits, a reason per knob (and for the state), the readings used,
    when the state last changed and when the limits last changed (governor clock, None = never)."""

    state: State
    limits: Limits
    reasons: Mapping[str, str]
    readings: Mapping[str, Value]
    profile: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    state_changed_at: float | None = None
    limits_changed_at: float | None = None
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A msgpack/JSON-friendly dict (the daemon's status and governor_get)."""
        return {"state": self.state.name, "profile": self.profile, "limits": self.limits.as_dict(),
                "reasons": dict(self.reasons), "readings": dict(self.readings), "overrides": dict(self.overrides),
                "state_changed_at": self.state_changed_at, "limits_changed_at": self.limits_changed_at,
                "at": self.at}
