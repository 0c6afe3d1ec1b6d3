"""Per-user default locations, by platform convention (nothing is hard-coded to a home folder).

- data (demo models, stores):  $MOED_HOME, else $XDG_DATA_HOME/moed (Linux), ~/Library/Application Support/moed (macOS)
- config file:  $XDG_CONFIG_HOME/moed/moed.toml, else ~/.config/moed/moed.toml (Linux);
                ~/Library/Application Support/moed/moed.toml (macOS)
- state (saved cache statistics, last-run stats):  $XDG_STATE_HOME/moed, else ~/.local/state/moed (Linux);
                ~/Library/Application Support/moed/state (macOS)
- logs (when a log file is asked for without a path):  <state>/log (Linux), ~/Library/Logs/moed (macOS)
- runtime (socket and lock):  $XDG_RUNTIME_DIR/moed, else /tmp/moed-<uid>, mode 0700 — defined beside the default
  endpoint in moed.clients.endpoints, which clients share.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from moed.clients.endpoints import make_runtime_dir, runtime_dir

__all__ = ["config_path", "data_dir", "log_dir", "make_private_dir", "make_runtime_dir", "runtime_dir", "state_dir"]


def _mac_support() -> Path:
    return Path.home() / "Library" / "Application Support" / "moed"


def data_dir() -> Path:
    """Where moed keeps models and stores it makes itself (the demo model)."""
    if env := os.environ.get("MOED_HOME"):
        return Path(env)
    if sys.platform == "darwin":
        return _mac_support()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "moed"


def config_path() -> Path:
    """The default config file of `moed serve` (it need not exist)."""
    if sys.platform == "darwin":
        return _mac_support() / "moed.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "moed" / "moed.toml"


def state_dir() -> Path:
    """Where the daemon saves what should survive a restart (expert usage statistics, last-run stats)."""
    if sys.platform == "darwin":
        return _mac_support() / "state"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "moed"


def log_dir() -> Path:
    """The conventional folder for the daemon's log file."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Logs" / "moed"
    return state_dir() / "log"


def make_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed, the last component with mode 0700; returns it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
