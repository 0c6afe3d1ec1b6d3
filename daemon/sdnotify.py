"""sd_notify(3) in pure Python: tell systemd about readiness, liveness and stopping over $NOTIFY_SOCKET.

    n = Notifier.from_env()          # disabled (every send a no-op) unless systemd set NOTIFY_SOCKET
    n.send("READY=1", "STATUS=serving")
    n.watchdog_interval_s            # half of $WATCHDOG_USEC (when it is meant for this pid), else None

The protocol is one datagram of newline-separated `KEY=value` assignments sent to a unix datagram socket whose path
is in $NOTIFY_SOCKET; a leading '@' names a socket in Linux's abstract namespace. systemd sets WATCHDOG_USEC (and
WATCHDOG_PID, the pid it is meant for) when the unit has WatchdogSec=; the service must send WATCHDOG=1 more often
than that, conventionally every half interval. Failures to send are swallowed: notifications are a courtesy to
the service manager, never a reason for the daemon to fail.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    """Sends notifications to the address systemd gave (nothing when there is none)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address or None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (the watchdog counts only if the pid is ours)."""
        env = os.environ if env is None else env
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            pass
        wpid = env.get("WATCHDOG_PID")
        if wpid and wpid != str(os.getpid() if pid is None else pid):
            usec = None  # meant for another process (e.g. our parent that exec'd a shell)
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the manager's timeout, or None when no watchdog is asked for."""
        return self._watchdog_usec / 2e6 if self.enabled and self._watchdog_usec else None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram; True if it was sent."""
        if self.address is None or not assignments:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall("\n".join(assignments).encode())
            return True
        except OSError:
            return False
