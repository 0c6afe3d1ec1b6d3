"""Gateway configuration and access rules, without a daemon: bind parsing, the loopback rule (a non-loopback
bind without an API key refuses to start, from the library and from `moed gateway`), key files."""

from __future__ import annotations

import socket

import pytest

from moed.clients.gateway import (GatewayConfig, GatewayConfigError, is_loopback, parse_bind, read_api_key,
                                  start_in_thread)


@pytest.mark.parametrize("text, expected", [
    ("8080", ("127.0.0.1", 8080)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:11435", ("::1", 11435)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["", "host:", ":80", "::1:80", "a:b", "80x"])
def test_parse_bind_rejects(text):
    with pytest.raises(GatewayConfigError):
        parse_bind(text)


def test_loopback_rule():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com", ""))
    for host in ("0.0.0.0", "::", "10.0.0.1"):
        with pytest.raises(GatewayConfigError, match="API key"):
            GatewayConfig(host=host)
        assert GatewayConfig(host=host, api_key="k").host == host  # a key makes it allowed
    with pytest.raises(GatewayConfigError, match="empty"):
        GatewayConfig(api_key="  ")
    with pytest.raises(GatewayConfigError):
        GatewayConfig(port=70000)
    assert "k3y" not in repr(GatewayConfig(api_key="k3y"))  # the key stays out of logs


def test_non_loopback_without_key_never_binds():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(GatewayConfigError):
        start_in_thread(GatewayConfig(host="0.0.0.0", port=port))
    probe = socket.socket()
    try:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there
    finally:
        probe.close()


def test_cli_refuses_non_loopback_without_key(capsys, tmp_path):
    from moed.daemon.cli import main

    assert main(["gateway", "--endpoint", "ipc:///nonexistent/d.sock", "--http", "0.0.0.0:0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    empty = tmp_path / "key"
    empty.write_text("\n")
    assert main(["gateway", "--http", "0.0.0.0:0", "--api-key-file", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["gateway", "--http", "nonsense:port"]) == 2
    assert main(["gateway", "--http", "0", "--timeout", "0"]) == 2  # the silence limit goes to the config
    assert "timeout_s must be positive" in capsys.readouterr().err


def test_read_api_key(tmp_path):
    f = tmp_path / "key"
    f.write_text("  s3cret \n")
    f.chmod(0o644)
    with pytest.raises(GatewayConfigError, match="chmod 600"):  # a key others can read is no key
        read_api_key(f)
    f.chmod(0o600)
    assert read_api_key(f) == "s3cret"
    with pytest.raises(GatewayConfigError, match="cannot read"):
        read_api_key(tmp_path / "missing")


def test_an_address_in_use_fails_to_start(capsys):
    from moed.daemon.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError):
            start_in_thread(GatewayConfig(endpoint="ipc:///nonexistent/d.sock", port=port))
        assert main(["gateway", "--endpoint", "ipc:///nonexistent/d.sock", "--http", str(port)]) == 3
        assert "cannot serve HTTP" in capsys.readouterr().err
    finally:
        taken.close()
