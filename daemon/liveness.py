"""systemd readiness, watchdog and stopping notifications, taken from the daemon's own answers to `health`.

    reporter = ServiceReporter(Notifier.from_env(), endpoint)
    reporter.start()        # no thread at all unless systemd gave a NOTIFY_SOCKET
    ...serve...
    reporter.stop()         # STOPPING=1 if not sent yet

A side thread asks the daemon's socket `health` over a DEALER connection of its own, like any client: that answer
comes from the socket loop, which reads the state the scheduler publishes. So:

- READY=1 when the state first reads `ready` (the model is loaded);
- WATCHDOG=1 at most every half watchdog interval ($WATCHDOG_USEC / 2), and only after the loop answered: a
  hung socket loop, or a daemon whose model thread died, stops the pings and systemd restarts it;
- STOPPING=1 when the state reads `draining` (a `shutdown` request or a signal), or at the end at the latest.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

import zmq

from moed.clients import protocol

from .sdnotify import Notifier

log = logging.getLogger(__name__)
PROBE_EVERY_S = 0.25  # how often the state is read (a probe costs one small request to the socket loop)
PROBE_TIMEOUT_S = 1.0  # a probe unanswered within this is a missed beat, not an error


class HealthProbe:
    """One DEALER connection that asks `health`; answers of probes that timed out are skipped by id."""

    def __init__(self, endpoint: str, timeout_s: float = PROBE_TIMEOUT_S):
        self._sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._timeout_ms = int(timeout_s * 1000)
        self._ids = itertools.count()

    def state(self) -> str | None:
        """The daemon's state (`loading`, `ready`, `draining`), or None if the socket loop did not answer in time."""
        rid = f"sd-{next(self._ids)}"
        try:
            self._sock.send(protocol.pack(protocol.request(rid, "health")), flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        deadline = time.monotonic() + self._timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(left * 1000) + 1):
                break
            reply = protocol.unpack(self._sock.recv())
            if reply.get("id") == rid and reply.get("type") == "final" and reply.get("status") == "ok":
                return str(reply["result"]["state"])
        return None

    def close(self) -> None:
        self._sock.close(linger=0)


class ServiceReporter:
    """Reports the daemon's life to systemd from a side thread (see the module docstring)."""

    def __init__(self, notifier: Notifier, endpoint: str, *, probe_every_s: float = PROBE_EVERY_S):
        self._notifier, self._endpoint, self._every = notifier, endpoint, probe_every_s
        self._stop = threading.Event()
        self._stopping_sent = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._notifier.enabled:
            self._thread = threading.Thread(target=self._run, name="moed-sdnotify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread; STOPPING=1 unless it was sent when draining began."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._send_stopping()

    def _run(self) -> None:
        interval = self._notifier.watchdog_interval_s
        probe = HealthProbe(self._endpoint, min(PROBE_TIMEOUT_S, interval / 4) if interval else PROBE_TIMEOUT_S)
        ready, last_ping = False, float("-inf")
        try:
            while not self._stop.is_set():
                state = probe.state()
                if state == "ready" and not ready:
                    ready = True
                    self._notifier.send("READY=1", "STATUS=serving")
                elif state == "draining":
                    self._send_stopping()
                now = time.monotonic()
                # systemd arms the watchdog once start-up is complete; beats go only to a loop that answered
                if state is not None and ready and interval and now - last_ping >= interval:
                    last_ping = now
                    self._notifier.send("WATCHDOG=1")
                self._stop.wait(self._every)
        except Exception:  # noqa: BLE001 - reporting must never take the daemon down; systemd will notice
            log.exception("systemd notification thread failed")
        finally:
            probe.close()

    def _send_stopping(self) -> None:
        if not self._stopping_sent:
            self._stopping_sent = True
            self._notifier.send("STOPPING=1", "STATUS=stopping")
