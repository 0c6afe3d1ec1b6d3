"""EngineSource: the engine's own signals, pushed in by the daemon and read by the governor.

The daemon calls `update(...)` between steps (cheap: a lock and a dict); the governor reads the latest values.
`idle_s` is derived here: the time since the engine last had active or queued requests, on the governor's clock.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping

from .. import signals as S


class EngineSource:
    """The daemon's push-in source of engine signals (decode tok/s, steps/s, hit rate, bytes read, queue)."""

    name = "engine"
    fast = True
    blocking = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, object] = {}
        self._idle_since: float | None = clock()

    def update(self, *, active: int, queue_len: int, decode_tok_s: float | None = None,
               steps_per_s: float | None = None, hit_rate: float | None = None,
               bytes_read: int | None = None) -> None:
        """Records the engine's current figures. `active` and `queue_len` are request counts; the rest may be None
        (unknown). Thread-safe."""
        now = self._clock()
        with self._lock:
            busy = active > 0 or queue_len > 0
            if busy:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now
            self._values = {S.ACTIVE: active, S.QUEUE_LEN: queue_len, S.DECODE_TOK_S: decode_tok_s,
                            S.STEPS_PER_S: steps_per_s, S.HIT_RATE: hit_rate, S.BYTES_READ: bytes_read}

    def read(self, now: float) -> Mapping[str, object]:
        with self._lock:
            idle = 0.0 if self._idle_since is None else max(0.0, now - self._idle_since)
            return {**self._values, S.IDLE_S: idle}
