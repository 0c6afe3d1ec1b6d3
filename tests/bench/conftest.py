"""The investigations in bench/ are not installed: put the repository root on sys.path so `import bench` works
however pytest is started (`python -m pytest` adds the working directory, bare `pytest` does not)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
