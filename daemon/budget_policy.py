"""Who decides the expert cache's budget from moment to moment: a policy the scheduler asks at each step boundary.

    decision = policy.decide(now, idle_since, active, configured)   # -> BudgetDecision(budget, reason, wake_at)

`configured` is the budget in force by config or by the controls (Limits.cache_budget), in bytes; the policy may
hold the cache below it (e.g. while idle) and says when it wants to be asked again even if nothing happens
(`wake_at`, a time.monotonic() value, or None). The scheduler resizes the cache when the decision differs from the
cache's current budget, logging `reason`. A policy runs on the scheduler thread only and never touches MLX.

IdleKeepAlive is the daemon's own: after `keep_alive_s` without requests, shrink to the idle budget; the next
request restores the configured budget before it is admitted. The governor is meant to be another BudgetPolicy
that owns the budget and takes idle keep-alive as one of its inputs (wrapping an IdleKeepAlive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BudgetDecision:
    budget: int  # bytes
    reason: str  # why, for the log: "set", "idle", "restore", or a policy's own
    wake_at: float | None = None  # ask again at this monotonic time even if nothing else happens


class BudgetPolicy(Protocol):
    def decide(self, now: float, idle_since: float, active: int, configured: int) -> BudgetDecision:
        """The budget for now.

        Args:
            now: time.monotonic().
            idle_since: when the last request ended (monotonic); meaningful when active == 0.
            active: requests running or waiting.
            configured: the budget the controls ask for, in bytes.
        """
        ...


class IdleKeepAlive:
    """Shrink to `idle_budget` bytes after `keep_alive_s` idle seconds (never, if keep_alive_s < 0)."""

    def __init__(self, keep_alive_s: float, idle_budget: int):
        self.keep_alive_s, self.idle_budget = keep_alive_s, idle_budget
        self._idle = False  # the last decision was an idle one

    def decide(self, now: float, idle_since: float, active: int, configured: int) -> BudgetDecision:
        if active == 0 and self.keep_alive_s >= 0:
            due = idle_since + self.keep_alive_s
            if now >= due:
                self._idle = True
                return BudgetDecision(min(self.idle_budget, configured), "idle")
            return BudgetDecision(configured, self._reason(), wake_at=due)
        return BudgetDecision(configured, self._reason())

    def _reason(self) -> str:
        reason = "restore" if self._idle else "set"
        self._idle = False
        return reason
