"""clients/endpoints.py: the default endpoint and the private runtime directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moed.clients import endpoints


def test_default_endpoint_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("MOED_ENDPOINT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert endpoints.default_endpoint() == f"ipc://{tmp_path}/moed/moed.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert endpoints.runtime_dir() == Path(f"/tmp/moed-{os.getuid()}")
    assert endpoints.default_endpoint() == f"ipc:///tmp/moed-{os.getuid()}/moed.sock"
    monkeypatch.setenv("MOED_ENDPOINT", "tcp://127.0.0.1:5555")
    assert endpoints.default_endpoint() == "tcp://127.0.0.1:5555"


def test_ipc_path():
    assert endpoints.ipc_path("ipc:///run/x/moed.sock") == Path("/run/x/moed.sock")
    assert endpoints.ipc_path("tcp://127.0.0.1:1") is None


def test_make_runtime_dir_is_private(tmp_path: Path):
    made = endpoints.make_runtime_dir(tmp_path / "a" / "moed")
    assert made.stat().st_mode & 0o777 == 0o700
    assert endpoints.make_runtime_dir(made) == made  # idempotent
    made.chmod(0o755)
    with pytest.raises(PermissionError, match="0700"):
        endpoints.make_runtime_dir(made)


def test_long_ipc_paths_are_refused():
    endpoints.check_ipc_endpoint("ipc:///tmp/moed-1000/moed.sock")
    endpoints.check_ipc_endpoint("tcp://127.0.0.1:" + "1" * 200)
    with pytest.raises(ValueError, match="longer than 103 bytes"):
        endpoints.check_ipc_endpoint("ipc:///" + "d" * 100 + "/moed.sock")
