"""CURVE keys for TCP endpoints: the daemon's keypair, client keypairs and the list of allowed clients.

    <keys dir>/server.key        the daemon's keypair (0600): `public = Z85` and `secret = Z85` lines
    <keys dir>/server.pub        the daemon's public key alone (0644: public keys are not secret)
    <keys dir>/clients/NAME.key  a client's keypair plus the daemon's public key (0600): all a client needs
    <keys dir>/allowed_clients   one line per client the daemon accepts: `ROLE NAME PUBLIC` (0600)

The keys folder is $MOED_KEYS_DIR, else `keys` in the config folder (Linux: $XDG_CONFIG_HOME/moed/keys, else
~/.config/moed/keys; macOS: ~/Library/Application Support/moed/keys). `moed keys` writes these files; the daemon
reads server.key and allowed_clients when it serves TCP; a client reads its NAME.key ($MOED_CLIENT_KEY or
`moectl --key-file`). ROLE is `admin` (may send control requests: shutdown, governor_set, clear_quarantine,
cancel by job) or `client`. This module needs only the standard library and pyzmq (no MLX): clients import it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq

ENV_KEYS_DIR = "MOED_KEYS_DIR"
ENV_CLIENT_KEY = "MOED_CLIENT_KEY"
ROLES = ("admin", "client")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_Z85_LEN = 40  # a 32-byte key in Z85


class KeyFileError(ValueError):
    """A key file is missing, unreadable or malformed; the message names the file and says what to do."""



@dataclass(frozen=True)
class ClientKey:
    """What a client needs to connect over CURVE: its own keypair and the daemon's public key (Z85 bytes)."""

    public: bytes
    secret: bytes = b""
    server: bytes = b""
    name: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"ClientKey(name={self.name!r}, public={self.public!r})"


@dataclass(frozen=True)
class ServerKey:
    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"ServerKey(public={self.public!r})"


def keys_dir() -> Path:
    """$MOED_KEYS_DIR, else `keys` beside the daemon's default config file."""
    if env := os.environ.get(ENV_KEYS_DIR):
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "moed" / "keys"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "moed" / "keys"


def server_key_path(folder: Path | None = None) -> Path:
    return (folder or keys_dir()) / "server.key"


def allowed_clients_path(folder: Path | None = None) -> Path:
    return (folder or keys_dir()) / "allowed_clients"


def client_key_path(name: str, folder: Path | None = None) -> Path:
    return (folder or keys_dir()) / "clients" / f"{name}.key"


# -- reading -------------------------------------------------------------------------------------------------------
def _fields(path: Path) -> dict[str, str]:
    """`name = value` lines of a key file (blank lines and `#` comments skipped)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise KeyFileError(f"cannot read the key file {path}: {e.strerror or e}") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if line.strip() and not line.lstrip().startswith("#") and sep:
            out[name.strip()] = value.strip()
    return out


def _z85(fields: dict[str, str], name: str, path: Path) -> bytes:
    value = fields.get(name, "")
    if len(value) != _Z85_LEN:
        raise KeyFileError(f"{path}: no valid `{name}` key (40 Z85 characters); make it again with `moed keys`")
    return value.encode("ascii")


def load_server_key(path: Path) -> ServerKey:
    """The daemon's keypair. Raises KeyFileError."""
    f = _fields(path)
    return ServerKey(_z85(f, "public", path), _z85(f, "secret", path))


def load_client_key(path: str | os.PathLike[str]) -> ClientKey:
    """A client key file (its keypair and the daemon's public key). Raises KeyFileError."""
    p = Path(path)
    f = _fields(p)
    return ClientKey(_z85(f, "public", p), _z85(f, "secret", p), _z85(f, "server", p), f.get("name", ""))


def client_key_from_env() -> ClientKey | None:
    """The key named by $MOED_CLIENT_KEY, or None when it is not set. Raises KeyFileError."""
    path = os.environ.get(ENV_CLIENT_KEY)
    return load_client_key(path) if path else None


@dataclass(frozen=True)
class Allowed:
    name: str
    role: str
    public: bytes


def parse_allowed(path: Path) -> dict[bytes, Allowed]:
    """The allowed clients by public key (Z85). Raises KeyFileError on a missing file or a bad line."""
    try:
        text = path.read_text()
    except OSError as e:
        raise KeyFileError(f"cannot read the allowed clients list {path}: {e.strerror or e}") from None
    out: dict[bytes, Allowed] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ROLES or not NAME_RE.fullmatch(parts[1]) or len(parts[2]) != _Z85_LEN:
            raise KeyFileError(f"{path}:{n}: expected `ROLE NAME PUBLIC_KEY` (ROLE admin or client)")
        out[parts[2].encode("ascii")] = Allowed(parts[1], parts[0], parts[2].encode("ascii"))
    return out


class AllowedClients:
    """The allowed list, read again whenever the file changes (so `moed keys client` needs no restart).

    Thread-safe: the daemon's ZAP thread asks `allows` and `name_of`, the socket loop asks `role_of`."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_key: dict[bytes, Allowed] = {}
        self._extra: dict[bytes, Allowed] = {}
        self._refresh()

    def add(self, entry: Allowed) -> None:
        """Allow a key that is not in the file (the daemon's own HTTP gateway)."""
        with self._lock:
            self._extra[entry.public] = entry

    def _refresh(self) -> None:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._by_key, self._stamp = parse_allowed(self.path), stamp

    def lookup(self, public: bytes) -> Allowed | None:
        with self._lock:
            try:
                self._refresh()
            except (OSError, KeyFileError):
                pass  # a file being rewritten: keep the last good list
            return self._extra.get(public) or self._by_key.get(public)

    def role_of(self, name: str) -> str | None:
        with self._lock:
            for entry in (*self._extra.values(), *self._by_key.values()):
                if entry.name == name:
                    return entry.role
        return None


# -- writing -------------------------------------------------------------------------------------------------------
def _write_private(path: Path, text: str, *, force: bool, mode: int = 0o600) -> None:
    """Write a new file with `mode` (never briefly wider); refuse to replace one unless `force`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def make_server_key(folder: Path | None = None, *, force: bool = False) -> ServerKey:
    """Make the daemon's keypair (server.key 0600, server.pub 0644). Raises FileExistsError without force."""
    folder = folder or keys_dir()
    public, secret = zmq.curve_keypair()
    _write_private(server_key_path(folder), f"# moed daemon CURVE keypair\npublic = {public.decode()}\n"
                   f"secret = {secret.decode()}\n", force=force)
    _write_private(folder / "server.pub", f"public = {public.decode()}\n", force=True, mode=0o644)
    return ServerKey(public, secret)


def make_client_key(name: str, *, admin: bool = False, folder: Path | None = None, force: bool = False) -> Path:
    """Make a client keypair in clients/NAME.key (0600, with the daemon's public key) and allow it.

    Raises:
        ValueError: a bad name. KeyFileError: no server key yet. FileExistsError: NAME exists, without force.
    """
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"client name {name!r}: use 1-64 letters, digits, `_`, `.` or `-`")
    folder = folder or keys_dir()
    server = load_server_key(server_key_path(folder))
    path = client_key_path(name, folder)
    allowed_path = allowed_clients_path(folder)
    entries = parse_allowed(allowed_path) if allowed_path.exists() else {}
    if any(e.name == name for e in entries.values()) and not force:
        raise FileExistsError(f"a client named {name!r} is already allowed; pass --force to replace its key")
    public, secret = zmq.curve_keypair()
    _write_private(path, f"# moed client CURVE key\nname = {name}\npublic = {public.decode()}\n"
                   f"secret = {secret.decode()}\nserver = {server.public.decode()}\n", force=force)
    role = "admin" if admin else "client"
    kept = [e for e in entries.values() if e.name != name] + [Allowed(name, role, public)]
    lines = ["# moed allowed CURVE clients: ROLE NAME PUBLIC_KEY (ROLE admin or client)"]
    lines += [f"{e.role} {e.name} {e.public.decode()}" for e in kept]
    _write_private(allowed_path, "\n".join(lines) + "\n", force=True)
    return path
