"""The client side needs only pyzmq and msgpack: import it and run a client against the fake daemon in a
subprocess where importing mlx or mlx_lm fails; and `import moed.clients` itself loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import sys

class BlockMLX:
    """A meta path finder that refuses mlx and mlx_lm, as on a machine without them."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, BlockMLX())
try:
    import mlx.core
except ImportError:
    pass
else:
    raise SystemExit("the blocker did not block mlx")

import moed.clients, moed.clients.cli, moed.clients.protocol
from moed.clients import AsyncClient, Client
sys.path.insert(0, TESTS)
from fakedaemon import FakeDaemon

with FakeDaemon() as fake:
    with Client(fake.endpoint, timeout=5) as c:
        assert c.complete("hi").text == "Hello world"
        assert c.status().state == "ready"
    assert moed.clients.cli.main(["--endpoint", fake.endpoint, "generate", "hi"]) == 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm") or m.startswith("moed.daemon"))
assert not loaded, loaded
print("NO-MLX-OK")
'''


def test_clients_run_without_mlx():
    tests = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", f"TESTS = {tests!r}\n" + SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "NO-MLX-OK" in proc.stdout and "Hello world" in proc.stdout


LIGHT = r'''
import sys
import moed.clients, moed.clients.protocol
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm", "zmq", "numpy")
               or m.startswith("moed.daemon") or m in ("moed.clients.aio", "moed.clients.sync"))
assert not heavy, heavy
from moed.clients import AsyncClient, Client, MoedError
assert "zmq" in sys.modules and not any(m.split(".")[0] in ("mlx", "mlx_lm") for m in sys.modules)
print("LIGHT-OK")
'''


def test_import_moed_clients_is_light():
    """The package's names load on first use: importing it (or its protocol, as the daemon does) loads no pyzmq,
    numpy or MLX, and the first use of a client name loads pyzmq but still no MLX."""
    proc = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LIGHT-OK" in proc.stdout
