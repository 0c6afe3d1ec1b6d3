"""Per-user default locations, by platform convention (nothing is hard-coded to a home folder).

- data (demo models, stores):  $MOED_HOME, else $XDG_DATA_HOME/moed (Linux), ~/Library/Application Support/moed (macOS)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def data_dir() -> Path:
    """Where moed keeps models and stores it makes itself (the demo model)."""
    if env := os.environ.get("MOED_HOME"):
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "moed"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "moed"
