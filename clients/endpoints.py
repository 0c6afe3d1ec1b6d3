"""Where the daemon listens by default: one per-user ipc socket, shared by the daemon and its clients.

    $MOED_ENDPOINT                      overrides everything (any ZeroMQ endpoint: ipc://..., tcp://127.0.0.1:5555)
    ipc://$XDG_RUNTIME_DIR/moed/moed.sock   when XDG_RUNTIME_DIR is set (Linux sessions, systemd RuntimeDirectory)
    ipc:///tmp/moed-<uid>/moed.sock         otherwise (macOS, plain shells)

The socket lives in a directory of its own with mode 0700, because socket-file permissions alone are not portable
(serving.md). This module needs only the standard library: the daemon imports it from here (daemon -> clients).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

ENV_ENDPOINT = "MOED_ENDPOINT"
SOCKET_NAME = "moed.sock"
MAX_IPC_PATH_BYTES = 103  # macOS sun_path holds 104 bytes including the terminating NUL


def runtime_dir() -> Path:
    """The per-user directory for the daemon's socket and lock file (not created here)."""
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "moed"
    return Path(f"/tmp/moed-{os.getuid()}")


def default_endpoint() -> str:
    """$MOED_ENDPOINT if set, else the ipc socket in runtime_dir()."""
    return os.environ.get(ENV_ENDPOINT) or f"ipc://{runtime_dir() / SOCKET_NAME}"


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc:// endpoint, or None for other transports."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def make_runtime_dir(path: Path | None = None) -> Path:
    """Create (if needed) and check the private socket directory: owned by this user, mode 0700.

    Raises:
        PermissionError: the directory exists but belongs to someone else or is open to others; an attacker could
            otherwise pre-create /tmp/moed-<uid> and listen in.
    """
    path = path or runtime_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.getuid()}")
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} has mode {oct(st.st_mode & 0o777)}; it must be 0700 (chmod 700 {path})")
    return path


def check_ipc_endpoint(endpoint: str) -> None:
    """Raise ValueError when an ipc:// socket path is too long for macOS (the limit is also safe on Linux)."""
    path = ipc_path(endpoint)
    if path is not None and len(os.fsencode(path)) > MAX_IPC_PATH_BYTES:
        raise ValueError(f"ipc socket path {str(path)!r} is longer than {MAX_IPC_PATH_BYTES} bytes; "
                         f"set {ENV_ENDPOINT} or XDG_RUNTIME_DIR to a shorter directory")
