"""Stores by name: the folder of stores in moed's data folder, what is in it, and how a name finds its store.

`moed pull ORG/NAME` converts a Hugging Face checkpoint into `<data>/stores/ORG--NAME` (the hub's own cache
naming) and records where it came from in `origin.json` beside the manifest:

    {"repo_id": "ORG/NAME", "revision": "main", "commit": "<sha>", "pulled_at": "2026-12-06T02:00:00Z"}

Everywhere a store is asked for (`moed serve`, `moed generate`, the HTTP API's `model` field), `resolve_store`
accepts a path to a store folder, a stored name (`ORG--NAME`), the repo id it was pulled from (`ORG/NAME`), or the
part after the organisation when only one store has it (`NAME`). No MLX here: the manifest is JSON.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..paths import data_dir
from .format import MANIFEST, Manifest, StoreError, read_manifest

ORIGIN = "origin.json"


def stores_dir() -> Path:
    """`<data>/stores`: where `moed pull` puts stores and `moed list` looks."""
    return data_dir() / "stores"


def store_name(repo_id: str) -> str:
    """The folder name of a pulled repo: `ORG/NAME` -> `ORG--NAME`, as the Hugging Face cache names it."""
    return repo_id.strip("/").replace("/", "--")


@dataclass(frozen=True)
class StoreInfo:
    name: str
    path: Path
    manifest: Manifest
    origin: dict

    @property
    def quantization(self) -> str:
        q = self.manifest.quantization
        return f"{q['bits']}-bit" if q else "float"

    @property
    def dense_bytes(self) -> int:
        return sum((self.path / f).stat().st_size for f in self.manifest.dense_files)


def list_stores(root: Path | None = None) -> tuple[list[StoreInfo], list[tuple[str, str]]]:
    """The complete stores under `root` (default `stores_dir()`), by name; and (name, why) for folders that are
    not usable stores (an interrupted pull, a corrupt manifest), so a listing can say so instead of hiding them."""
    root = root or stores_dir()
    good, bad = [], []
    if not root.is_dir():
        return good, bad
    for path in sorted(p for p in root.iterdir() if p.is_dir() and ".partial-" not in p.name):
        try:
            manifest = read_manifest(path)
        except StoreError as e:
            bad.append((path.name, str(e)))
            continue
        good.append(StoreInfo(path.name, path, manifest, read_origin(path)))
    return good, bad


def read_origin(path: Path) -> dict:
    try:
        return dict(json.loads((path / ORIGIN).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def write_origin(path: Path, repo_id: str, revision: str, commit: str) -> None:
    doc = {"repo_id": repo_id, "revision": revision, "commit": commit,
           "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path / f".{ORIGIN}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path / ORIGIN)


def resolve_store(spec: str | os.PathLike[str], root: Path | None = None) -> Path:
    """The store folder `spec` names: a path, a stored name, a repo id, or an unambiguous short name.

    Raises:
        StoreError: nothing matches (the message lists the stores there are and how to get one), or a short
            name matches several stores.
    """
    path = Path(spec)
    if (path / MANIFEST).is_file() or path.is_absolute() or str(spec).startswith((".", "~")):
        return path.expanduser()
    root = root or stores_dir()
    by_name = root / store_name(str(spec))
    if (by_name / MANIFEST).is_file():
        return by_name
    if path.exists():  # a folder here that is not a store: read_manifest will say what it is
        return path
    names = [p.name for p in sorted(root.iterdir())] if root.is_dir() else []
    short = [n for n in names if n.split("--", 1)[-1] == str(spec)]
    if len(short) == 1:
        return root / short[0]
    if len(short) > 1:
        raise StoreError(f"{spec!r} names several stores ({', '.join(short)}): give the whole name")
    have = f"the stores in {root}: {', '.join(names)}" if names else f"there are no stores in {root} yet"
    return_hint = (f"{spec} is neither a store folder nor the name of a store ({have}); "
                   f"`moed pull ORG/NAME` fetches and converts a model, `moed convert SRC DST` converts a folder")
    raise StoreError(return_hint)
