"""Access: tcp needs CURVE keys, control requests need trust, and another local user gets nowhere.

A daemon on tcp with `moed keys` files: no key or an unknown key never gets an answer (DaemonUnavailable), a
`client` key generates and reads status but gets `forbidden` on every control request, an `admin` key shuts the
daemon down, and the daemon's own HTTP gateway serves through a key of its own. Without keys a tcp daemon
refuses to start (exit 2). As root, a second local user (made with
useradd) can neither enter the ipc socket's folder nor read a client key, and gets no answer on tcp without one.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from daemon_harness import InProcess, make_config, short_dir
from moed.clients import keys
from moed.clients.cli import main as moectl
from moed.clients.errors import DaemonUnavailable, Forbidden, NotAvailable
from moed.clients.sync import Client
from moed.daemon.commands import keys as keys_command
from moed.daemon.serving import EXIT_CONFIG, Daemon

OTHER_USER = "moedtest"
pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq was built without CURVE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keys(args: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    keys_command.register(p.add_subparsers())
    parsed = p.parse_args(["keys", *args])
    return int(parsed.func(parsed))


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.ENV_CLIENT_KEY, raising=False)


@pytest.fixture(scope="module")
def keydir():
    folder = Path(short_dir()) / "keys"
    assert _keys(["server", "--dir", str(folder)]) == 0
    assert _keys(["client", "boss", "--admin", "--dir", str(folder)]) == 0
    assert _keys(["client", "alice", "--dir", str(folder)]) == 0
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(model_dir, keydir):
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    with InProcess(model_dir("qwen3_moe", "store-mlx"), wait=False, endpoint=endpoint, context_limit=256,
                   http=f"127.0.0.1:{_free_port()}",
                   curve_server_key=str(keydir / "server.key"),
                   curve_allowed_clients=str(keydir / "allowed_clients")) as d:
        with Client(endpoint, curve=_key(keydir, "boss"), timeout=60) as c:
            deadline = time.monotonic() + 120
            while not c.health().ok and time.monotonic() < deadline:
                time.sleep(0.1)
        yield d


def _key(keydir: Path, name: str) -> keys.ClientKey:
    return keys.load_client_key(keydir / "clients" / f"{name}.key")


def test_keys_command_writes_private_files_and_refuses_to_overwrite(keydir: Path):
    for path in (keydir / "server.key", keydir / "allowed_clients", keydir / "clients" / "alice.key"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert _keys(["server", "--dir", str(keydir)]) == 1
    assert _keys(["client", "alice", "--dir", str(keydir)]) == 1
    roles = {e.name: e.role for e in keys.parse_allowed(keydir / "allowed_clients").values()}
    assert roles == {"boss": "admin", "alice": "client"}
    assert _key(keydir, "alice").server == keys.load_server_key(keydir / "server.key").public


def test_tcp_without_keys_refuses_to_start(model_dir, caplog: pytest.LogCaptureFixture):
    folder = short_dir()
    try:
        config = make_config(model_dir("qwen3_moe", "store-mlx"), folder, endpoint=f"tcp://127.0.0.1:{_free_port()}",
                             curve_server_key=f"{folder}/none.key", curve_allowed_clients=f"{folder}/none")
        assert Daemon(config).serve() == EXIT_CONFIG
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert "moed keys server" in caplog.text


def test_serve_check_names_the_missing_keys_and_flags_point_at_them(model_dir, keydir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]):
    from moed.daemon.cli import main

    monkeypatch.setenv(keys.ENV_KEYS_DIR, str(tmp_path))  # empty: no default keys
    argv = ["serve", str(model_dir("qwen3_moe", "store-mlx")), "--endpoint", f"tcp://127.0.0.1:{_free_port()}",
            "--check"]
    assert main(argv) == 2
    assert "moed keys server" in capsys.readouterr().err
    assert main([*argv, "--curve-server-key", str(keydir / "server.key"),
                 "--curve-allowed-clients", str(keydir / "allowed_clients")]) == 0
    assert main(["serve", *argv[1:2], "--check"]) == 0  # ipc needs no keys


def test_no_key_and_an_unknown_key_get_no_answer(daemon: InProcess, keydir: Path):
    with Client(daemon.endpoint, timeout=5) as c, pytest.raises(DaemonUnavailable, match="CURVE key"):
        c.status()
    public, secret = zmq.curve_keypair()
    stranger = keys.ClientKey(public, secret, _key(keydir, "alice").server)
    with Client(daemon.endpoint, timeout=5, curve=stranger) as c, pytest.raises(DaemonUnavailable, match="refused"):
        c.status()


def test_a_client_key_generates_and_reads_but_may_not_control(daemon: InProcess, keydir: Path):
    with Client(daemon.endpoint, curve=_key(keydir, "alice"), timeout=60) as c:
        assert c.status().state == "ready"
        assert c.health().ok
        assert c.complete("hello", max_tokens=3, temperature=0.0).generated_tokens == 3
        for call in (c.shutdown, c.clear_quarantine, lambda: c.governor_set(profile="saver"),
                     lambda: c.cancel_job("nope")):
            with pytest.raises(Forbidden, match="admin"):
                call()
        assert c.status().state == "ready"  # still serving


def test_an_admin_key_passes_the_check(daemon: InProcess, keydir: Path):
    with Client(daemon.endpoint, curve=_key(keydir, "boss"), timeout=30) as c:
        with pytest.raises(NotAvailable):  # the governor is off here: the request got past the access check
            c.governor_set(profile="saver")
        assert c.clear_quarantine() == 0


def test_a_client_added_while_serving_connects_without_restart(daemon: InProcess, keydir: Path):
    assert _keys(["client", "carol", "--dir", str(keydir)]) == 0
    with Client(daemon.endpoint, curve=_key(keydir, "carol"), timeout=30) as c:
        assert c.health().ok


def test_the_daemons_own_http_gateway_connects_with_a_key_of_its_own(daemon: InProcess):
    req = urllib.request.Request(f"{daemon.daemon.http_url}/v1/completions", json.dumps(
        {"model": "qwen3_moe-store-mlx", "prompt": "Once upon", "max_tokens": 3}).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.loads(r.read())["usage"]["completion_tokens"] == 3


def test_moectl_key_file(daemon: InProcess, keydir: Path, capsys: pytest.CaptureFixture[str]):
    alice = str(keydir / "clients" / "alice.key")
    assert moectl(["--endpoint", daemon.endpoint, "--key-file", alice, "health", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert moectl(["--endpoint", daemon.endpoint, "--key-file", alice, "shutdown"]) != 0
    assert "forbidden" in capsys.readouterr().err
    assert moectl(["--endpoint", daemon.endpoint, "--key-file", "/nonexistent.key", "health"]) == 2


# -- a second local user ------------------------------------------------------------------------------------------
def _other_user() -> pwd.struct_passwd:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to make a second local user")
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        pass
    made = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", OTHER_USER], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    return pwd.getpwnam(OTHER_USER)


AS_OTHER = """
import json, os, socket, sys
from moed.clients import keys
from moed.clients.errors import DaemonUnavailable
from moed.clients.sync import Client
endpoint, key_file, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.setgroups([]); os.setgid(gid); os.setuid(uid)  # after the imports: the interpreter lives under /root
out = {}
if endpoint.startswith("ipc://"):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(endpoint[len("ipc://"):])
        out["connect"] = "connected"
    except OSError as e:
        out["connect"] = type(e).__name__
else:
    try:
        keys.load_client_key(key_file)
        out["key"] = "read"
    except keys.KeyFileError as e:
        out["key"] = str(e)
try:
    with Client(endpoint, timeout=5) as c:
        c.status()
    out["status"] = "answered"
except DaemonUnavailable as e:
    out["status"] = str(e)
print(json.dumps(out))
"""


def _as_other_user(endpoint: str, key_file: str = "") -> dict:
    user = _other_user()
    env = {k: v for k, v in os.environ.items() if k != keys.ENV_CLIENT_KEY}
    done = subprocess.run([sys.executable, "-c", AS_OTHER, endpoint, key_file, str(user.pw_uid), str(user.pw_gid)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_second_local_user_is_refused_on_ipc(model_dir):
    _other_user()
    with InProcess(model_dir("qwen3_moe", "store-mlx"), context_limit=256) as d:
        out = _as_other_user(d.endpoint)
    assert out["connect"] == "PermissionError"
    assert "permission denied" in out["status"]


def test_a_second_local_user_is_refused_on_tcp_without_a_key(daemon: InProcess, keydir: Path):
    out = _as_other_user(daemon.endpoint, str(keydir / "clients" / "alice.key"))
    assert "Permission denied" in out["key"]  # the client keys are 0600 in a 0700 folder
    assert "CURVE key" in out["status"]


def test_an_admin_key_shuts_the_daemon_down(daemon: InProcess, keydir: Path):
    with Client(daemon.endpoint, curve=_key(keydir, "boss"), timeout=30) as c:
        c.shutdown()
    daemon._thread.join(60)
    assert daemon.exit_code == 0
