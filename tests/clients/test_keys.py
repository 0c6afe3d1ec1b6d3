"""clients/keys.py: the CURVE key files `moed keys` writes and the daemon and clients read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moed.clients import keys


def test_keys_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(keys.ENV_KEYS_DIR, str(tmp_path))
    assert keys.keys_dir() == tmp_path and keys.server_key_path() == tmp_path / "server.key"
    monkeypatch.delenv(keys.ENV_KEYS_DIR)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    if sys.platform != "darwin":
        assert keys.keys_dir() == tmp_path / "cfg" / "moed" / "keys"


def test_a_client_key_needs_the_server_key_and_a_plain_name(tmp_path: Path):
    with pytest.raises(keys.KeyFileError, match="server.key"):
        keys.make_client_key("a", folder=tmp_path)
    keys.make_server_key(tmp_path)
    for bad in ("", "a b", "../x", "x" * 65):
        with pytest.raises(ValueError, match="client name"):
            keys.make_client_key(bad, folder=tmp_path)


def test_force_replaces_a_client_and_keeps_one_line_per_name(tmp_path: Path):
    keys.make_server_key(tmp_path)
    first = keys.load_client_key(keys.make_client_key("a", folder=tmp_path))
    keys.make_client_key("b", admin=True, folder=tmp_path)
    with pytest.raises(FileExistsError):
        keys.make_client_key("a", folder=tmp_path)
    second = keys.load_client_key(keys.make_client_key("a", admin=True, folder=tmp_path, force=True))
    assert second.public != first.public and second.name == "a"
    allowed = keys.parse_allowed(keys.allowed_clients_path(tmp_path))
    assert {(e.name, e.role) for e in allowed.values()} == {("a", "admin"), ("b", "admin")}
    assert first.public not in allowed and second.public in allowed


def test_malformed_files_are_refused_with_the_file_named(tmp_path: Path):
    bad = tmp_path / "allowed"
    bad.write_text("# comment\nowner me " + "x" * 40 + "\n")
    with pytest.raises(keys.KeyFileError, match=r"allowed:2: expected `ROLE NAME PUBLIC_KEY`"):
        keys.parse_allowed(bad)
    half = tmp_path / "c.key"
    half.write_text("public = " + "x" * 40 + "\n")
    with pytest.raises(keys.KeyFileError, match="c.key: no valid `secret`"):
        keys.load_client_key(half)
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.load_client_key(tmp_path / "missing.key")


def test_the_allowed_list_is_read_again_when_it_changes(tmp_path: Path):
    keys.make_server_key(tmp_path)
    keys.make_client_key("a", folder=tmp_path)
    allowed = keys.AllowedClients(keys.allowed_clients_path(tmp_path))
    b = keys.load_client_key(keys.make_client_key("b", admin=True, folder=tmp_path))
    entry = allowed.lookup(b.public)
    assert entry is not None and entry.name == "b" and allowed.role_of("b") == "admin"
    keys.allowed_clients_path(tmp_path).write_text("garbage\n")  # a broken rewrite keeps the last good list
    assert allowed.lookup(b.public) is not None


def test_secrets_stay_out_of_reprs_and_the_env_names_the_client_key(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path):
    server = keys.make_server_key(tmp_path)
    path = keys.make_client_key("a", folder=tmp_path)
    key = keys.load_client_key(path)
    assert key.secret.decode() not in repr(key) and server.secret.decode() not in repr(server)
    monkeypatch.delenv(keys.ENV_CLIENT_KEY, raising=False)
    assert keys.client_key_from_env() is None
    monkeypatch.setenv(keys.ENV_CLIENT_KEY, str(path))
    assert keys.client_key_from_env() == key
