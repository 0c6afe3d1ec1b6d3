"""moed.governor needs neither MLX nor the daemon: import every module and replay a trace in a subprocess where
importing mlx, mlx_lm or moed.daemon fails."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r'''
import pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm") or name.startswith("moed.daemon"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
import moed.governor
for info in pkgutil.walk_packages(moed.governor.__path__, "moed.governor."):
    __import__(info.name)
from moed.governor.replay import TRACES, replay
assert max(d.state for d in replay(TRACES / "thermal_ramp.jsonl")).name == "CRITICAL"
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm") or m.startswith("moed.daemon"))
assert not loaded, loaded
print("GOVERNOR-ALONE-OK")
'''


def test_governor_imports_without_mlx_or_daemon() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "GOVERNOR-ALONE-OK" in out.stdout
