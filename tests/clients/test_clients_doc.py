"""docs/clients.md holds: its examples run (against the fake daemon, through $MOED_ENDPOINT) and the names it
documents exist; and the package `moed.clients` exports what the guide imports from it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fakedaemon import FakeDaemon

import moed.clients

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
TEXT = DOC.read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", TEXT, re.S)


def test_client_names_import_from_the_package():
    from moed.clients import AsyncClient, Client, MoedError, RequestError

    assert Client.__module__ == "moed.clients.sync" and AsyncClient.__module__ == "moed.clients.aio"
    assert issubclass(RequestError, MoedError)
    assert set(moed.clients.__all__) == set(moed.clients._EXPORTS)
    for name in moed.clients.__all__:
        assert getattr(moed.clients, name) is not None
        assert name in dir(moed.clients)
    with pytest.raises(AttributeError):
        moed.clients.NoSuchName  # noqa: B018


def test_examples_import_only_exported_names():
    assert len(EXAMPLES) >= 3
    imported = {n.strip() for block in EXAMPLES
                for names in re.findall(r"^from moed\.clients import (.+)$", block, re.M) for n in names.split(",")}
    assert {"Client", "AsyncClient", "Chunk", "MoedError"} <= imported
    assert imported <= set(moed.clients.__all__)


def _has(cls: type, attr: str) -> bool:
    if hasattr(cls, attr) or attr in getattr(cls, "__annotations__", {}):  # annotated instance attributes too
        return True
    if dataclasses.is_dataclass(cls):
        return attr in {f.name for f in dataclasses.fields(cls)}
    if issubclass(cls, moed.clients.RequestError):
        return hasattr(cls("code", "message"), attr)
    return False


def test_documented_attributes_exist():
    mentioned = set(re.findall(r"`(\w+)\.(\w+)", TEXT))
    checked = {(c, a) for c, a in mentioned if c in moed.clients.__all__}
    assert len(checked) >= 20
    missing = sorted(f"{c}.{a}" for c, a in checked if not _has(getattr(moed.clients, c), a))
    assert not missing, missing
    for cls in ("Client", "AsyncClient"):  # the table names Client's methods; AsyncClient has each too
        for c, a in checked:
            if c == "Client":
                assert _has(getattr(moed.clients, cls), a), f"{cls}.{a}"


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_example_runs(index):
    with FakeDaemon() as fake:
        env = {**os.environ, "MOED_ENDPOINT": fake.endpoint}
        proc = subprocess.run([sys.executable, "-c", EXAMPLES[index]], capture_output=True, text=True, env=env,
                              timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Hello world" in proc.stdout
    if "except InvalidParams" in EXAMPLES[index]:  # the errors example reaches its refused call
        assert "bad request: invalid_params" in proc.stdout
