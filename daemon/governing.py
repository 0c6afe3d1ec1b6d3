"""The governor inside the daemon: its sensors, its thread, and the seam to the scheduler and the socket loop.

    governing = Governing.create(config, manifest)        # None when `governor = "off"`
    governing.start(controls)                             # the GovernorThread hands each new Limits to the controls
    scheduler observes the engine through governing.observe(...)    (between steps, on the MLX thread)
    server answers governor_get / governor_set / status through governing.status() and governing.apply(params)
    governing.stop()

moed.governor is policy (readings in, limits out, no MLX); this module only connects it. The governor owns the cache
budget: its keep-alive input replaces the scheduler's own idle shrink (`GovernedBudget` passes its budget through),
so two policies never fight over the cache. Limits reach the MLX thread at its next step boundary through the
controls (handover.py); a profile or override set with `governor_set` ticks the governor at once, and so does work
arriving while idle, so both take effect within a step.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from moed.governor import (KNOBS, PROFILES, Bounds, EngineSource, Governor, GovernorThread, Limits, TraceSource,
                           platform_sources)

from . import budget
from .budget_policy import BudgetDecision
from .limits import MIN_PACE
from .limits import Limits as DaemonLimits

if TYPE_CHECKING:
    from moed.governor import Decision

    from .config import DaemonConfig
    from .handover import Handover
    from .store.format import Manifest

log = logging.getLogger(__name__)


class GovernedBudget:
    """The scheduler's budget policy while the governor runs: the governor's budget (idle keep-alive included)
    is the budget."""

    def decide(self, now: float, idle_since: float, active: int, configured: int) -> BudgetDecision:
        return BudgetDecision(configured, "governor")


class Governing:
    def __init__(self, governor: Governor, engine: EngineSource) -> None:
        self.governor, self.engine = governor, engine
        self._thread: GovernorThread | None = None
        self._controls: Handover | None = None
        self._busy = False

    @classmethod
    def create(cls, config: DaemonConfig, manifest: Manifest) -> Governing | None:
        """The daemon's governor from its config (None when it is off). Raises ConfigError-like ValueErrors for
        a bad trace file or governor section (serve checks these before binding)."""
        if config.governor.governor == "off":
            return None
        ec, sc = config.engine, config.scheduler
        total, one = manifest.total_expert_bytes, manifest.expert_bytes
        bounds = Bounds(max_batch=sc.max_batch, prefetch_depth=ec.prefetch_depth,
                        cache_budget_bytes=budget.resolve(ec.cache_budget, total, one).bytes,
                        idle_cache_budget_bytes=budget.resolve(sc.idle_cache_budget, total, one).bytes,
                        keep_alive_s=sc.keep_alive_s)
        engine = EngineSource(clock=time.monotonic)
        trace = config.governor.sensor_trace
        sources = [TraceSource(trace)] if trace else platform_sources()
        return cls(Governor(config.governor_config(), bounds, [*sources, engine], clock=time.monotonic), engine)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, controls: Handover) -> None:
        self._controls = controls
        self._thread = GovernorThread(self.governor, on_change=self._hand_over)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()

    def _hand_over(self, limits: Limits, decision: Decision) -> None:
        """On the governor thread: give the new limits to the controls (applied at the next step boundary)."""
        assert self._controls is not None
        self._controls.set_limits(as_daemon_limits(limits))

    # -- the MLX thread ------------------------------------------------------------------------------------
    def observe(self, *, active: int, queue_len: int, decode_tok_s: float | None = None,
                steps_per_s: float | None = None, hit_rate: float | None = None,
                bytes_read: int | None = None) -> None:
        """The engine's figures for the governor (EngineSource); work arriving after idleness ticks it at once,
        so an idle-shrunk cache is restored without waiting for the next period."""
        self.engine.update(active=active, queue_len=queue_len, decode_tok_s=decode_tok_s, steps_per_s=steps_per_s,
                           hit_rate=hit_rate, bytes_read=bytes_read)
        busy = active > 0 or queue_len > 0
        if busy != self._busy:
            self._busy = busy
            if busy and self._thread is not None:
                self._thread.wake()

    # -- the socket loop -----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.governor.to_status()

    def apply(self, params: dict[str, Any]) -> dict[str, Any]:
        """governor_set: `profile` (a name), `set` (knob -> value, overrides), `clear_overrides` (true), `auto`
        (true: profile auto, no overrides, no power cap), `power_cap_w` (watts, or None to drop it). Raises
        ValueError naming what is wrong; nothing changes then."""
        unknown = set(params) - {"profile", "set", "clear_overrides", "auto", "power_cap_w"}
        if unknown:
            raise ValueError(f"unknown governor_set settings: {', '.join(sorted(unknown))} (settings: profile, set, "
                             f"clear_overrides, auto, power_cap_w)")
        if "profile" in params and params["profile"] not in PROFILES:
            raise ValueError(f"unknown profile {params['profile']!r} (profiles: {', '.join(PROFILES)})")
        cap = params.get("power_cap_w")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0
                                or cap == float("inf")):
            raise ValueError(f"power_cap_w must be a positive number of watts or null, got {cap!r}")
        overrides = params.get("set") or {}
        if not isinstance(overrides, dict):
            raise ValueError("`set` must be a map of knob -> value (knobs: " + ", ".join(KNOBS) + ")")
        from moed.governor.policy import check_override

        checked = {k: check_override(k, v) for k, v in overrides.items()}  # all or nothing
        if params.get("auto"):
            self.governor.clear_overrides()
            self.governor.set_profile("auto")
            self.governor.set_power_cap(None)
        if "power_cap_w" in params:
            self.governor.set_power_cap(cap)
        if params.get("clear_overrides"):
            self.governor.clear_overrides()
        if "profile" in params:
            self.governor.set_profile(str(params["profile"]))
        for knob, value in checked.items():
            self.governor.set_override(knob, value)
        if self._thread is not None:
            self._thread.wake()  # the governor ticks now: the new limits reach the next step boundary
        return self.status()


def as_daemon_limits(limits: Limits) -> DaemonLimits:
    pace = limits.pace_steps_per_s
    return DaemonLimits(max_batch=limits.batch_ceiling, prefetch_depth=limits.prefetch_depth,
                        cache_budget=max(1, int(limits.cache_budget_bytes)),
                        pace=None if pace is None else max(MIN_PACE, float(pace)))
