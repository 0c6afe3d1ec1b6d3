"""`pip install .` installs every runtime module and its package data, and nothing else.

The test copies the source tree (git's list: tracked files and untracked ones not ignored, so no stale build/
output leaks in) to a temporary folder, adds probes there (a new subpackage under governor/ and clients/, a
service template under daemon/, and an __init__.py in bench/, tests/, docs/ and launchd/ as if they were
packages), builds the wheel offline with the environment's setuptools (`pip wheel --no-build-isolation`, the
backend pip uses for `pip install .`), and compares the wheel's files with the tree's.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "clients", "governor")
NOT_INSTALLED = ("bench", "tests", "docs", "launchd")
DATA = ("daemon/testmodel/corpus/*.txt", "daemon/**.plist", "daemon/**.service", "daemon/service/templates/*.in",
        "governor/traces/*.jsonl", "clients/gateway/static/*.html", "clients/gateway/static/*.js",
        "clients/gateway/static/*.css")  # fnmatch: `*` spans folders
PROBES = {
    "governor/zz_probe_pkg/__init__.py": '"""A new governor subpackage (a packaging probe)."""\n',
    "governor/zz_probe_pkg/mod.py": '"""A module in it."""\n',
    "clients/zz_probe_gateway/__init__.py": '"""A new clients subpackage (a packaging probe)."""\n',
    "daemon/zz_probe_unit.service": "[Unit]\n",
    "daemon/commands/zz_probe.plist": "<plist/>\n",
}


def _can_build_wheels() -> bool:
    """pyproject.toml's `license` is an SPDX string, which setuptools reads from 77 (and it builds wheels itself)."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77


def _source_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to list the source tree")
    return sorted(p for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def _is_data(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in DATA)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[set[str], set[str], str]:
    """(the files of the copied tree, the files of the wheel built from it, its entry_points.txt)."""
    if not _can_build_wheels():
        pytest.skip("building a wheel offline needs setuptools>=77 (pip install -e '.[test]')")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    for rel, text in PROBES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    for top in NOT_INSTALLED:
        (src / top).mkdir(exist_ok=True)
        (src / top / "__init__.py").touch()
        (src / top / "zz_probe.py").write_text("X = 1\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("moed-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    tree = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return tree, names, entry_points


def test_every_runtime_module_is_in_the_wheel(built):
    tree, wheel, _ = built
    modules = {f"moed/{p}" for p in tree if p.endswith(".py") and p.split("/")[0] in PACKAGES}
    assert "moed/clients/aio.py" in modules and "moed/governor/zz_probe_pkg/mod.py" in modules
    missing = sorted(modules - wheel)
    assert not missing, f"not in the wheel (a folder without __init__.py?): {missing}"


def test_package_data_is_in_the_wheel(built):
    tree, wheel, _ = built
    data = {f"moed/{p}" for p in tree if _is_data(p)}
    assert "moed/daemon/testmodel/corpus/novels.txt" in data
    assert {"moed/daemon/zz_probe_unit.service", "moed/daemon/commands/zz_probe.plist"} <= data
    assert not sorted(data - wheel)


def test_nothing_else_is_in_the_wheel(built):
    _, wheel, _ = built
    assert not [n for n in wheel if n.split("/")[0] in NOT_INSTALLED], "bench/, tests/, docs/ or launchd/ installed"
    payload = [n for n in wheel if not n.startswith("moed-") or "dist-info/" not in n]
    stray = sorted(n for n in payload
                   if not (n.startswith("moed/") and n.split("/")[1] in PACKAGES
                           and (n.endswith(".py") or _is_data(n.removeprefix("moed/")))))
    assert not stray, f"files the wheel should not hold: {stray}"


def test_console_scripts_name_installed_modules(built):
    """moed and moectl point into modules the wheel holds."""
    _, wheel, entry_points = built
    targets = {line.split("=", 1)[1].strip().split(":")[0] for line in entry_points.splitlines() if "=" in line}
    assert {"moed.daemon.cli", "moed.clients.cli"} <= targets
    assert {t.replace(".", "/") + ".py" for t in targets} <= wheel
