"""The run-time limits of the serving daemon: one object that the governor (or a person) hands the controls.

    Limits(max_batch=4, prefetch_depth=1, cache_budget=None, pace=None)

Handed to `Handover.set_limits` (or changed one knob at a time with `update_limits`) from any thread; the scheduler
applies them at its next step boundary: the batch ceiling to admission, the prefetch depth to the engine, the cache
budget to the budget policy (budget_policy.py), the pace between steps. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_PACE = 1.0  # steps per second: a slower pace would pause every stream for a second or more between tokens


@dataclass(frozen=True)
class Limits:
    """What the daemon may use now.

    max_batch: requests decoded together (running requests are never evicted; a lower ceiling admits fewer).
    prefetch_depth: MoE layers ahead to predict and prefetch (0 = off).
    cache_budget: expert cache bytes, or None for the configured `cache_budget`; kept within one expert and
        every expert of the store. While idle, the budget policy may hold the cache smaller (keep-alive).
    pace: at most this many steps per second, or None for no cap; at least MIN_PACE.
    """

    max_batch: int
    prefetch_depth: int
    cache_budget: int | None = None
    pace: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if isinstance(self.prefetch_depth, bool) or not isinstance(self.prefetch_depth, int) \
                or self.prefetch_depth < 0:
            raise ValueError(f"prefetch_depth must be an integer >= 0, got {self.prefetch_depth!r}")
        if self.cache_budget is not None and (isinstance(self.cache_budget, bool)
                                              or not isinstance(self.cache_budget, int) or self.cache_budget < 1):
            raise ValueError(f"cache_budget must be a byte count >= 1 or None, got {self.cache_budget!r}")
        if self.pace is not None and (isinstance(self.pace, bool) or not isinstance(self.pace, (int, float))
                                      or not self.pace >= MIN_PACE):
            raise ValueError(f"pace must be None or at least {MIN_PACE} steps per second, got {self.pace!r}")
