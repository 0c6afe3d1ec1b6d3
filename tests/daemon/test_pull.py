"""Models by name: `moed pull` through huggingface_hub's real code path, from a Hugging Face cache laid out on disk
with the network off (HF_HUB_OFFLINE=1) and from a local server that answers as the hub does (HF_ENDPOINT, on
loopback); `moed list`; and names resolving to stores."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from moed.daemon.store.format import StoreError, read_manifest
from moed.daemon.store.registry import list_stores, resolve_store

SHA = "0123456789abcdef0123456789abcdef01234567"


def moed(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "moed.daemon.cli", *argv], env={**clean, **env},
                          capture_output=True, text=True, timeout=300)


def lay_out_cache(hf_home: Path, repo_id: str, checkpoint: Path) -> None:
    """The Hugging Face cache's own layout: refs/main names a commit, snapshots/<commit> holds the files."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    shutil.copytree(checkpoint, repo / "snapshots" / SHA)


def same_experts(a: Path, b: Path) -> bool:
    ma, mb = read_manifest(a), read_manifest(b)
    return ma.layers == mb.layers and all((a / x.file).read_bytes() == (b / x.file).read_bytes() for x in ma.layers)


def test_pull_from_the_cache_offline_then_list_and_resolve(model_dir, tmp_path):
    checkpoint, direct = model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")
    lay_out_cache(tmp_path / "hf", "acme/tiny-moe", checkpoint)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "MOED_HOME": str(tmp_path / "moed")}
    done = moed(env, "pull", "acme/tiny-moe")
    assert done.returncode == 0, done.stderr
    assert "moed serve acme/tiny-moe" in done.stderr
    store = tmp_path / "moed" / "stores" / "acme--tiny-moe"
    assert same_experts(store, direct)
    assert json.loads((store / "origin.json").read_text())["commit"] == SHA
    listed = moed(env, "list")
    assert listed.returncode == 0 and "acme--tiny-moe" in listed.stdout and "acme/tiny-moe@main" in listed.stdout
    again = moed(env, "pull", "acme/tiny-moe")
    assert again.returncode == 2 and "--force" in again.stderr
    missing = moed(env, "pull", "acme/not-cached")
    assert missing.returncode == 1 and "not in the local Hugging Face cache" in missing.stderr
    assert "Traceback" not in missing.stderr
    root = tmp_path / "moed" / "stores"
    for spec in ("acme/tiny-moe", "acme--tiny-moe", "tiny-moe", str(store)):
        assert resolve_store(spec, root) == store


def test_resolve_store_errors_name_the_choices(tmp_path, model_dir):
    root = tmp_path / "stores"
    for name in ("a--m", "b--m"):
        shutil.copytree(model_dir("qwen3_moe", "store-mlx"), root / name)
    with pytest.raises(StoreError, match="several stores"):
        resolve_store("m", root)
    with pytest.raises(StoreError, match=r"a--m, b--m.*moed pull"):
        resolve_store("c/q", root)
    with pytest.raises(StoreError, match="no stores"):
        resolve_store("x", tmp_path / "empty")
    (root / "broken").mkdir()
    good, bad = list_stores(root)
    assert [s.name for s in good] == ["a--m", "b--m"] and bad[0][0] == "broken"


class FakeHub(http.server.ThreadingHTTPServer):
    """Answers as the Hugging Face hub does for what `snapshot_download` asks: the revision, the file tree, and
    each file (HEAD for its metadata, GET for its bytes). `cut` names a file whose first download breaks off
    halfway, as a dropped connection does."""

    def __init__(self, repos: dict[str, Path], cut: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos, self.cut, self.seen = repos, cut, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *_args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.server.seen.append((self.command, path))
        for repo_id, folder in self.server.repos.items():
            if path.startswith(f"/api/models/{repo_id}/revision/"):
                files = [{"rfilename": f.name} for f in folder.iterdir()]
                return self._send(200, json.dumps({"id": repo_id, "sha": SHA, "siblings": files}).encode())
            if path.startswith(f"/api/models/{repo_id}/tree/"):
                tree = [{"type": "file", "path": f.name, "size": f.stat().st_size,
                         "oid": hashlib.sha1(f.read_bytes()).hexdigest()} for f in folder.iterdir()]
                return self._send(200, json.dumps(tree).encode())
            if path.startswith(f"/{repo_id}/resolve/"):
                return self._file(folder / path.split("/", 5)[-1])
        self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

    def _file(self, f: Path) -> None:
        if not f.is_file():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        data = f.read_bytes()
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if self.command == "GET" and f.name == self.server.cut:
            self.server.cut = None
            self._send(200, data[: len(data) // 2], headers, length=len(data))
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206 if start else 200, data[start:], headers)

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)


@pytest.fixture
def hub(model_dir) -> Iterator[FakeHub]:
    server = FakeHub({"acme/tiny-moe": model_dir("qwen3_moe", "mlx")}, cut="model.safetensors")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_pull_over_http_survives_a_dropped_connection(hub, model_dir, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url, "MOED_HOME": str(tmp_path / "moed")}
    done = moed(env, "pull", "acme/tiny-moe")
    assert done.returncode == 0, done.stderr
    gets = [p for c, p in hub.seen if c == "GET" and p.endswith("/model.safetensors")]
    assert len(gets) == 2  # the broken transfer was fetched again, and the store is right
    assert same_experts(tmp_path / "moed" / "stores" / "acme--tiny-moe", model_dir("qwen3_moe", "store-mlx"))
    unknown = moed(env, "pull", "acme/nothing")
    assert unknown.returncode == 1 and "no repository acme/nothing" in unknown.stderr, unknown.stderr
