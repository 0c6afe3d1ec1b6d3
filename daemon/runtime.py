"""Process plumbing of `moed serve`: the endpoint lock, the socket file and signals.

- EndpointLock: an exclusive flock(2) on a file beside the ipc socket (`moed.sock.lock`), or in the runtime
  folder for tcp (`tcp-127.0.0.1-7878.lock`), taken before binding: a second daemon on the same endpoint fails
  with a message naming the first one's pid instead of silently stealing the socket (a second ipc bind would
  unlink and replace the first one's socket file). The kernel drops the lock when the process dies, so a crash
  leaves no stale lock; a stale socket file is removed only while holding the lock.
  A lock belongs to a file (an inode), not to its name, and `release()` deletes the file: a daemon that opened
  the name just before the holder deleted it would lock the orphaned inode once the holder lets go, while a
  third daemon creates and locks a new file under the name: two owners. So `acquire()` checks, after locking,
  that the name still leads to the inode it locked (else it starts over), and `release()` removes the socket
  file first, then deletes the lock file only if the name is still its own, and only then lets the lock go.
- Signals: SIGTERM and SIGINT begin a graceful shutdown; a second one ends running requests at once.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
from pathlib import Path
from types import FrameType
from typing import Callable

from moed.clients.endpoints import ipc_path, make_runtime_dir, runtime_dir


ACQUIRE_TRIES = 16  # lock files replaced under us this often in a row means something is wrong


class EndpointInUse(RuntimeError):
    """Another daemon holds the endpoint's lock (or, for tcp, another program holds the port)."""


def lock_path(endpoint: str) -> Path:
    """The lock file that guards an endpoint."""
    sock = ipc_path(endpoint)
    if sock is not None:
        return sock.with_name(sock.name + ".lock")
    name = re.sub(r"[^A-Za-z0-9.]+", "-", endpoint.split("://", 1)[-1]).strip("-")
    return runtime_dir() / f"tcp-{name}.lock"


def prepare_endpoint_dir(endpoint: str) -> None:
    """Create and check the private (0700, ours) folder that holds the socket or the tcp lock file.

    Raises:
        PermissionError: the folder belongs to someone else or is open to others.
    """
    make_runtime_dir(lock_path(endpoint).parent)


class EndpointLock:
    """Held for the daemon's lifetime; `release()` removes the socket file (ipc) and the lock file."""

    def __init__(self, endpoint: str):
        self.endpoint, self.path = endpoint, lock_path(endpoint)
        self._fd: int | None = None

    def acquire(self) -> EndpointLock:
        """Take the lock and clear a stale ipc socket file.

        Raises:
            EndpointInUse: another process holds it; the message names its pid.
        """
        for _ in range(ACQUIRE_TRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise EndpointInUse(f"another moed daemon (pid {pid}) is serving {self.endpoint}; stop it first "
                                    f"(`moectl shutdown`) or choose another endpoint") from None
            if self._owns_name(fd):
                break
            os.close(fd)  # we locked a file its last owner had already deleted: the name leads elsewhere now
        else:
            raise EndpointInUse(f"the lock file {self.path} keeps being replaced; another moed daemon is starting "
                                f"or stopping on {self.endpoint}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        sock = ipc_path(self.endpoint)
        if sock is not None and sock.exists():
            sock.unlink()  # left by a daemon that died; we hold the lock, so nobody serves it
        return self

    def release(self) -> None:
        """Remove the socket file, then the lock file if the name is still ours, then let the lock go (this order:
        see the module docstring)."""
        if self._fd is None:
            return
        sock = ipc_path(self.endpoint)
        if sock is not None:
            sock.unlink(missing_ok=True)
        if self._owns_name(self._fd):
            self.path.unlink(missing_ok=True)  # a daemon that opened it meanwhile sees the name gone and retries
        os.close(self._fd)  # releases the flock
        self._fd = None

    def _owns_name(self, fd: int) -> bool:
        """Whether `self.path` still names the file open as `fd`."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def install_signal_handlers(on_signal: Callable[[str, int], None]) -> None:
    """Call on_signal(name, count) on SIGTERM / SIGINT (count: how many so far). Main thread only."""
    counts = {"n": 0}

    def handler(signum: int, _frame: FrameType | None) -> None:
        counts["n"] += 1
        on_signal(signal.Signals(signum).name, counts["n"])

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)

