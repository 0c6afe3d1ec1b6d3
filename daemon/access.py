"""Who may talk to the daemon, and who may control it.

    access = Access.for_endpoint(config, endpoint)   # KeyFileError: tcp without keys (moed serve exits 2)
    access.secure(sock)                               # before bind: CURVE server + the ZAP handler (tcp only)
    access.is_admin(user_id)                          # the socket loop, for control requests
    access.stop()

- ipc: no keys. The socket lives in a 0700 folder owned by the daemon's user (endpoints.make_runtime_dir) and is
  itself 0600, so only that user can connect at all; every connection is trusted with control requests.
- tcp: CURVE is required. The daemon's keypair is `curve_server_key`, the clients it accepts are listed in
  `curve_allowed_clients` (clients/keys.py has the formats; `moed keys` writes them). A ZAP handler on its own
  thread (pyzmq's ThreadAuthenticator) accepts a handshake only from a listed public key and sets the
  connection's User-Id to the key's name; the socket loop reads it from each message and allows control requests
  only when that name's role is `admin`. The list is read again when the file changes: a new client needs no
  restart, a removed one cannot connect again (its open connections stay until they drop), and a changed role
  applies to the next request.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from moed.clients.keys import (Allowed, AllowedClients, ClientKey, KeyFileError, ServerKey, allowed_clients_path,
                               load_server_key, server_key_path)

from .config import DaemonConfig

log = logging.getLogger(__name__)
ZAP_DOMAIN = "moed"
GATEWAY_NAME = "moed-http-gateway"  # the in-process HTTP gateway's own key (made at start, never written)


class _Authenticator(ThreadAuthenticator):
    """ZAP: a listed key passes, with its name as the connection's User-Id."""

    def __init__(self, context: zmq.Context, allowed: AllowedClients):
        super().__init__(context, log=logging.getLogger("moed.daemon.zap"))
        self.allowed = allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        entry = self.allowed.lookup(zmq.utils.z85.encode(client_public_key))
        return entry.name if entry else ""


class _Provider:
    """pyzmq's credentials provider interface: callback(domain, z85 key) -> allowed."""

    def __init__(self, allowed: AllowedClients):
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        ok = self.allowed.lookup(key) is not None
        if not ok:
            log.warning("refused a CURVE client with an unknown key %s", key.decode("ascii", "replace"))
        return ok


class Access:
    """ipc (everyone who can connect is the daemon's user) or CURVE on tcp; see the module docstring."""

    def __init__(self, server: ServerKey | None = None, allowed: AllowedClients | None = None):
        self.server, self.allowed = server, allowed
        self._auth: _Authenticator | None = None

    @property
    def curve(self) -> bool:
        return self.server is not None

    @classmethod
    def for_endpoint(cls, config: DaemonConfig, endpoint: str) -> Access:
        """Plain access for ipc; for tcp the keys named by the config (or the default key files).

        Raises:
            KeyFileError: a tcp endpoint whose server key or allowed clients list is missing or malformed.
        """
        if not endpoint.startswith("tcp://"):
            return cls()
        if not zmq.has("curve"):
            raise KeyFileError("this libzmq was built without CURVE, which a tcp endpoint needs; use ipc")
        sc = config.server
        key_path = Path(sc.curve_server_key).expanduser() if sc.curve_server_key else server_key_path()
        list_path = (Path(sc.curve_allowed_clients).expanduser() if sc.curve_allowed_clients
                     else allowed_clients_path())
        hint = "; a tcp endpoint needs CURVE keys: run `moed keys server` and `moed keys client NAME [--admin]`"
        try:
            return cls(load_server_key(key_path), AllowedClients(list_path))
        except KeyFileError as e:
            raise KeyFileError(f"{e}{hint}") from None
        except OSError as e:
            raise KeyFileError(f"cannot read {list_path}: {e.strerror or e}{hint}") from None

    def secure(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server with the ZAP handler (before bind); nothing for ipc."""
        if self.server is None or self.allowed is None:
            return
        self._auth = _Authenticator(sock.context, self.allowed)
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_Provider(self.allowed))
        sock.curve_server = True
        sock.curve_secretkey = self.server.secret
        sock.curve_publickey = self.server.public
        sock.zap_domain = ZAP_DOMAIN.encode()

    def guest_key(self) -> ClientKey | None:
        """A fresh key for the daemon's own HTTP gateway (role client), allowed in memory only; None on ipc."""
        if self.server is None or self.allowed is None:
            return None
        public, secret = zmq.curve_keypair()
        self.allowed.add(Allowed(GATEWAY_NAME, "client", public))
        return ClientKey(public, secret, self.server.public, GATEWAY_NAME)

    def is_admin(self, user_id: str | None) -> bool:
        """May this connection send control requests? On ipc always; on tcp if its key's role is admin."""
        if self.allowed is None:
            return True
        return bool(user_id) and self.allowed.role_of(user_id or "") == "admin"

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
