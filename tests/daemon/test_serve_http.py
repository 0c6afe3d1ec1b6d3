"""`moed serve --http`: the gateway inside the daemon (config keys `http`, `http_api_key_file`), and models by
name end to end: `moed pull` -> `moed list` -> `moed serve NAME --http` -> an OpenAI request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daemon_harness import InProcess, NO_FILE, short_dir, spawn_daemon
from moed.daemon.config import ConfigError, load_config
from moed.daemon.http_gateway import gateway_config
from test_pull import lay_out_cache, moed


def post(url: str, body: dict, key: str | None = None, timeout: float = 60.0) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- config ----------------------------------------------------------------------------------------------------
def config(**flags):
    return load_config(env={}, default_path=NO_FILE, flags=flags)


def test_http_keys_are_validated_with_the_key_named(tmp_path: Path):
    assert config().server.http == "" and gateway_config(config()) is None
    assert config(http="8080").server.http == "8080"
    for bad in ("http://x", "::1:80", "host:port"):
        with pytest.raises(ConfigError, match="server.http"):
            config(http=bad)
    with pytest.raises(ConfigError, match="not a loopback address, without an API key"):
        config(http="0.0.0.0:8080")
    env = {"MOED_HTTP": "[::]:8080", "MOED_HTTP_API_KEY_FILE": str(tmp_path / "key")}
    c = load_config(env=env, default_path=NO_FILE)
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        gateway_config(c)
    (tmp_path / "key").write_text("  s3cret\n")
    (tmp_path / "key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        gateway_config(c)
    (tmp_path / "key").chmod(0o600)
    gw = gateway_config(c, "ipc:///tmp/x.sock")
    assert gw is not None and (gw.host, gw.port, gw.api_key, gw.endpoint) == ("::", 8080, "s3cret", "ipc:///tmp/x.sock")


def test_serve_refuses_http_off_loopback_without_a_key_before_binding(model_dir):
    folder = short_dir()
    proc = spawn_daemon(model_dir("qwen3_moe", "store-mlx"), folder, "--http", f"0.0.0.0:{free_port()}")
    assert proc.wait(120) == 2
    err = Path(folder, "err.log").read_text()
    assert "without an API key" in err and "Traceback" not in err
    assert not Path(folder, "d.sock").exists()


# -- the gateway in the daemon ---------------------------------------------------------------------------------------
def test_the_daemon_serves_http_while_it_runs_and_stops_it_at_shutdown(model_dir, tmp_path: Path):
    (tmp_path / "key").write_text("k1")
    (tmp_path / "key").chmod(0o600)
    port = free_port()
    with InProcess(model_dir("qwen3_moe", "store-mlx"), http=f"127.0.0.1:{port}",
                   http_api_key_file=str(tmp_path / "key")) as d:
        assert d.daemon.http_url == f"http://127.0.0.1:{port}"
        url = f"{d.daemon.http_url}/v1/completions"
        with pytest.raises(urllib.error.HTTPError) as e:
            post(url, {"model": "x", "prompt": "hi"})  # no key
        assert e.value.code == 401
        out = post(url, {"model": "qwen3_moe-store-mlx", "prompt": "Once upon", "max_tokens": 3}, key="k1")
        assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "length"
        assert d.stop() == 0
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_an_http_port_in_use_stops_the_daemon_before_it_loads(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = InProcess(model_dir("qwen3_moe", "store-mlx"), wait=False, http=f"127.0.0.1:{taken.getsockname()[1]}")
        with d:
            d._thread.join(60)
            assert d.exit_code == 3


# -- models by name, end to end ----------------------------------------------------------------------------------
def test_pull_list_serve_by_name_with_http_and_an_openai_request(model_dir, tmp_path: Path):
    lay_out_cache(tmp_path / "hf", "acme/tiny-moe", model_dir("qwen3_moe", "mlx"))
    folder = short_dir()
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "MOED_HOME": str(tmp_path / "moed")}
    pulled = moed(env, "pull", "acme/tiny-moe")
    assert pulled.returncode == 0, pulled.stderr
    listed = moed(env, "list")
    assert listed.returncode == 0 and "acme--tiny-moe" in listed.stdout
    generated = moed(env, "generate", "tiny-moe", "Once upon", "--max-tokens", "2", "--read-mode", "buffered",
                     "--json")
    assert generated.returncode == 0 and json.loads(generated.stdout)["stats"]["generation_tokens"] == 2, \
        generated.stderr
    checked = moed(env, "serve", "acme/tiny-moe", "--check")
    assert checked.returncode == 0 and str(tmp_path / "moed" / "stores" / "acme--tiny-moe") in checked.stdout
    unknown = moed(env, "serve", "acme/other", "--check")
    assert unknown.returncode == 2 and "moed pull" in unknown.stderr and "Traceback" not in unknown.stderr

    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    (Path(folder) / "none.toml").write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moed.daemon.cli", "serve", "acme/tiny-moe", "--endpoint", f"ipc://{folder}/d.sock",
         "--http", str(port)],
        env={**clean, **env, "MOED_STATE_DIR": folder, "MOED_READ_MODE": "buffered",
             "MOED_CONFIG": str(Path(folder) / "none.toml")},
        stderr=open(Path(folder) / "err.log", "wb"), stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                models = json.loads(urllib.request.urlopen(f"{base}/v1/models", timeout=5).read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, Path(folder, "err.log").read_text()
                assert time.monotonic() < deadline, "the gateway never answered"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["acme--tiny-moe"]
        while True:  # 503 while the model loads
            try:
                out = post(f"{base}/v1/chat/completions", {"model": "acme--tiny-moe", "max_tokens": 4,
                                                           "messages": [{"role": "user", "content": "Hello"}]})
                break
            except urllib.error.HTTPError as e:
                assert e.code == 503 and time.monotonic() < deadline, e.read()
                time.sleep(0.2)
        assert out["model"] == "acme--tiny-moe" and out["usage"]["completion_tokens"] >= 1
        assert out["choices"][0]["message"]["role"] == "assistant"
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
