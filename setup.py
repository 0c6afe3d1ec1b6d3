"""Package discovery for moed; the metadata and package data are in pyproject.toml.

The repository's top-level folders daemon/, clients/ and governor/ are the subpackages moed.daemon, moed.clients
and moed.governor of the `moed` namespace. pyproject.toml's `[tool.setuptools.packages.find]` cannot rename what it
finds (it would install `daemon`, not `moed.daemon`), so the packages are found here: every regular package (a
folder with an __init__.py) under those three folders, new ones included, and nothing else. tests/, docs/, bench/
and launchd/ are never installed. tests/test_packaging.py builds the wheel and holds it to this.
"""

from pathlib import Path

from setuptools import find_packages, setup

TOP = ("daemon", "clients", "governor")
HERE = Path(__file__).resolve().parent

setup(
    packages=[f"moed.{name}" for name in find_packages(str(HERE), include=[*TOP, *(f"{top}.*" for top in TOP)])],
    package_dir={f"moed.{top}": top for top in TOP},
)
