"""`GovernorThread`: ticks a Governor every `tick_s` on a daemon thread and calls back when the limits change.

The callback gets (limits, decision) on the first tick and then whenever the limits differ from the last ones
delivered; a callback that raises is logged and does not stop the thread. The daemon's callback should only hand
the limits to the MLX-owning thread (e.g. put them in a slot it reads between steps), not apply them itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .governor import Governor
from .limits import Decision, Limits

log = logging.getLogger("moed.governor")


class GovernorThread:
    """start() / stop() a thread that calls `governor.tick()` every `tick_s` seconds."""

    def __init__(self, governor: Governor, on_change: Callable[[Limits, Decision], None],
                 tick_s: float | None = None) -> None:
        self.governor = governor
        self.on_change = on_change
        self.tick_s = governor.config.tick_s if tick_s is None else tick_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._delivered: Limits | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("GovernorThread already started")
        self._thread = threading.Thread(target=self._run, name="moed-governor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the thread; waits up to timeout_s for the tick in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """Tick now instead of at the next period (a profile or override was set, or work arrived while idle);
        thread-safe."""
        self._wake.set()

    def tick_once(self) -> Decision:
        """One tick and, if the limits changed, the callback (the thread's body; also for tests)."""
        decision = self.governor.tick()
        if decision.limits != self._delivered:
            self._delivered = decision.limits
            try:
                self.on_change(decision.limits, decision)
            except Exception:  # noqa: BLE001 - the daemon's callback failing must not stop governing
                log.exception("governor: limits callback failed")
        return decision

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick_once()
            except Exception:  # noqa: BLE001 - keep governing; the policy is pure, so this is a bug to log
                log.exception("governor: tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()
