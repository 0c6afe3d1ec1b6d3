"""Instrumentation of the synced layer call: a probe the cache and the streaming layer report phases to.

The default `Probe` does nothing (not even read the clock), so the hot path pays one method call per phase.
Benchmarks pass a `PhaseTimer` (ExpertCache(probe=...), load_engine(probe=...)) to split the time of the synced
layer calls into the phases below; daemon/bench/single.py reports them per token (bench/results/notebook.md).
"""

from __future__ import annotations

import time
from enum import Enum


class Phase(Enum):
    """The phases of a synced layer call, in order; the values name them in benchmark records."""

    READ_BACK = "routing read back (with the prediction)"  # the host sync of the call
    DISTINCT = "distinct experts"
    QUEUED = "acquire: bookkeeping, demand reads queued"
    PREFETCH = "acquire: prefetch issued"
    WAIT = "acquire: waiting for reads"
    COUNTED = "acquire: use counted"
    GRAPH = "expert graph built"


class Probe:
    """Receives the phases of the synced layer calls; this one ignores them. MLX thread."""

    def now(self) -> float:
        """A time stamp to pass to the first `lap` of a call."""
        return 0.0

    def lap(self, phase: Phase, t0: float) -> float:
        """`phase` ran from `t0` until now; returns the stamp the next phase starts from."""
        return 0.0


class PhaseTimer(Probe):
    """Adds up wall-clock seconds per phase (perf_counter)."""

    def __init__(self) -> None:
        self.seconds: dict[Phase, float] = {}

    def now(self) -> float:
        return time.perf_counter()

    def lap(self, phase: Phase, t0: float) -> float:
        t = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + t - t0
        return t

    def snapshot(self) -> dict[str, float]:
        """Seconds so far per phase, keyed by the phase's name (its value)."""
        return {p.value: s for p, s in self.seconds.items()}
