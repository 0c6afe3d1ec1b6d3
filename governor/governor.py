"""`Governor`: sources sampled at their own rates, merged into one reading, and the policy stepped on it.

`tick(now)` is the whole loop body: sample every source that is due (fast ones every `fast_interval_s`, slow
ones every `slow_interval_s`; all due reads start together and share one `read_timeout_s` deadline, so a tick
waits at most that long however many sources hang), merge the latest readings (the first
source listing a known value wins), step the policy, log state transitions once with readings and reason.
The profile and override setters are thread-safe, for the daemon's `governor_set` handler.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

from .config import GovernorConfig
from .limits import Decision
from .policy import Bounds, Policy
from .sensors.base import Sampler, Source
from .signals import Value

log = logging.getLogger("moed.governor")


class _Slot:
    def __init__(self, source: Source, timeout_s: float, interval_s: float) -> None:
        self.sampler = Sampler(source, timeout_s)
        self.interval_s = interval_s
        self.due = float("-inf")
        self.reading: dict[str, Value] = {}
        self.status = "not sampled"
        self.sampled_at: float | None = None


class Governor:
    """Holds the sources and the policy; `tick(now)` returns the Decision for `now` (default: the clock)."""

    def __init__(self, config: GovernorConfig, bounds: Bounds, sources: Sequence[Source] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.policy = Policy(config, bounds)
        self._slots = [_Slot(s, config.read_timeout_s, config.fast_interval_s if s.fast else config.slow_interval_s)
                       for s in sources]
        self._lock = threading.Lock()
        self._last: Decision | None = None

    def tick(self, now: float | None = None) -> Decision:
        """Samples due sources, steps the policy and returns its Decision. Never raises for a sensor's sake."""
        now = self.clock() if now is None else now
        due = [slot for slot in self._slots if now >= slot.due]
        for slot in due:
            slot.sampler.begin(now)
        deadline = time.monotonic() + self.config.read_timeout_s  # real time: a hung read is a real wait
        for slot in due:
            slot.reading, slot.status = slot.sampler.finish(deadline)
            slot.sampled_at, slot.due = now, now + slot.interval_s
        reading = self.reading()
        with self._lock:
            previous = self._last
            decision = self.policy.step(reading, now)
            self._last = decision
        self._log(previous, decision)
        return decision

    def reading(self) -> dict[str, Value]:
        """The merged latest reading: for each signal, the first source (in order) that knows it."""
        merged: dict[str, Value] = {}
        for slot in self._slots:
            for key, value in slot.reading.items():
                if merged.get(key) is None:
                    merged[key] = value
        return merged

    @property
    def decision(self) -> Decision | None:
        """The latest Decision (None before the first tick)."""
        return self._last

    def set_profile(self, name: str) -> None:
        """auto | performance | balanced | saver; raises ValueError for another name. Applies at the next tick."""
        with self._lock:
            self.policy.set_profile(name)
        log.info("governor: profile set to %s", name)

    def set_override(self, knob: str, value: Any) -> None:
        """Pins `knob` (batch_ceiling, prefetch_depth, cache_budget_bytes, pace_steps_per_s) to `value`; raises
        ValueError for an unknown knob or a value out of range. Applies at the next tick."""
        with self._lock:
            self.policy.set_override(knob, value)
        log.info("governor: override %s = %r", knob, value)

    def clear_overrides(self) -> None:
        with self._lock:
            self.policy.clear_overrides()
        log.info("governor: overrides cleared")

    def set_power_cap(self, watts: float | None) -> None:
        """An average-power cap (W) in every state, or None; raises ValueError. Applies at the next tick."""
        with self._lock:
            self.policy.set_power_cap(watts)
        log.info("governor: power cap %s", "off" if watts is None else f"{watts:g} W")

    def to_status(self) -> dict[str, Any]:
        """The status dict for the daemon's `status` / `governor_get` (msgpack-friendly; docs/governor.md)."""
        with self._lock:
            last, profile, overrides = self._last, self.policy.profile, dict(self.policy.overrides)
            power_cap_w = self.policy.power_cap_w
        sources = {slot.sampler.source.name: {"status": slot.status, "sampled_at": slot.sampled_at,
                                              "interval_s": slot.interval_s} for slot in self._slots}
        if last is None:
            return {"state": None, "profile": profile, "overrides": overrides, "power_cap_w": power_cap_w,
                    "sources": sources}
        return {**last.to_dict(), "profile": profile, "overrides": overrides, "power_cap_w": power_cap_w,
                "sources": sources}

    def _log(self, previous: Decision | None, decision: Decision) -> None:
        if previous is None or previous.state != decision.state:
            was = previous.state.name if previous is not None else "start"
            log.info("governor: %s -> %s (%s); readings %s; limits %s", was, decision.state.name,
                     decision.reasons["state"], _brief(decision.readings), decision.limits.as_dict())
        elif previous.limits != decision.limits:
            changed = {k: v for k, v in decision.limits.as_dict().items() if previous.limits.as_dict()[k] != v}
            log.info("governor: limits %s (%s)", changed,
                     "; ".join(f"{k}: {decision.reasons[k]}" for k in changed))


def _brief(reading: dict[str, Value] | Any) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(reading.items()) if v is not None)
