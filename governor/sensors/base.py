"""The source interface and `Sampler`, which reads a source with a deadline and never raises.

A source's `read(now)` may block (a file on a hung filesystem, a subprocess) or raise. `Sampler.sample` starts the
read on a daemon thread and waits at most `timeout_s` (`begin`/`finish` let the Governor start every due source
and wait on all of them against one deadline); a read still running after that is abandoned (the thread
keeps it; while it runs, further samples give unknown without starting another), an exception gives unknown, and
NaN values become unknown through `signals.clean`. Sources that only touch memory (`blocking = False`) are read
inline, still guarded.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping, Protocol

from ..signals import Value, clean

log = logging.getLogger("moed.governor")


class Source(Protocol):
    """A sensor: `name` for logs and status; `fast` picks its sample period (fast ~1 s, slow tens of seconds);
    `blocking` says whether a read may block (then it runs on a thread with a deadline)."""

    name: str
    fast: bool
    blocking: bool

    def read(self, now: float) -> Mapping[str, object]:
        """Returns the current reading; may raise or block."""
        ...


class FunctionSource:
    """A source made of a function `now -> mapping` (tests, quick adapters)."""

    def __init__(self, name: str, fn: Callable[[float], Mapping[str, object]], *, fast: bool = True,
                 blocking: bool = True) -> None:
        self.name, self.fast, self.blocking, self._fn = name, fast, blocking, fn

    def read(self, now: float) -> Mapping[str, object]:
        return self._fn(now)


class Sampler:
    """Reads one source with a deadline; `sample` returns (reading, status) and never raises.

    status is "ok", "error: <exception>", "timeout" (the read outlived the deadline) or "hung" (a previous read
    is still running). On anything but "ok" the reading is empty: every signal of the source is unknown.
    """

    def __init__(self, source: Source, timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self._pending: threading.Thread | None = None
        self._started: tuple[threading.Thread, list[tuple[dict[str, Value], str]]] | None = None
        self._ready: tuple[dict[str, Value], str] | None = None
        self._logged: str | None = None

    def sample(self, now: float) -> tuple[dict[str, Value], str]:
        """Reads the source, waiting at most `timeout_s`."""
        self.begin(now)
        return self.finish(time.monotonic() + self.timeout_s)

    def begin(self, now: float) -> None:
        """Starts a read (inline for non-blocking sources); `finish` collects it. Lets a caller start every due
        source first and then wait on all of them against one deadline."""
        if not self.source.blocking:
            self._ready = self._call(now)
        elif self._pending is not None and self._pending.is_alive():
            self._ready = ({}, "hung")
        else:
            box: list[tuple[dict[str, Value], str]] = []
            thread = threading.Thread(target=lambda: box.append(self._call(now)), daemon=True,
                                      name=f"moed-governor-{self.source.name}")
            thread.start()
            self._started = (thread, box)

    def finish(self, deadline: float) -> tuple[dict[str, Value], str]:
        """The started read's (reading, status), waiting until `deadline` (time.monotonic) at most."""
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return self._note(*ready)
        if self._started is None:
            return self._note({}, "error: not started")
        (thread, box), self._started = self._started, None
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            self._pending = thread
            return self._note({}, "timeout")
        self._pending = None
        return self._note(*(box[0] if box else ({}, "error: no result")))

    def _call(self, now: float) -> tuple[dict[str, Value], str]:
        try:
            return clean(self.source.read(now)), "ok"
        except Exception as e:  # noqa: BLE001 - any sensor failure means unknown, never a crash
            return {}, f"error: {type(e).__name__}: {e}"

    def _note(self, reading: dict[str, Value], status: str) -> tuple[dict[str, Value], str]:
        # Log a failing source once per kind of failure, not every second.
        kind = status.split(":")[0]
        if kind != "ok" and kind != self._logged:
            log.warning("governor: sensor %s gave unknown (%s)", self.source.name, status)
        elif kind == "ok" and self._logged not in (None, "ok"):
            log.info("governor: sensor %s recovered", self.source.name)
        self._logged = kind
        return reading, status

