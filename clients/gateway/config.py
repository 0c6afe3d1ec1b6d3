"""The gateway's configuration: one frozen, validated dataclass, and the parsing of `--http [HOST:]PORT`.

Access rule (docs/gateway.md): the gateway binds loopback unless told otherwise, and a bind to anything but a
loopback address needs an API key; a config that breaks the rule does not construct (GatewayConfigError), so such
a gateway never starts.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..keys import ClientKey

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435  # next to Ollama's 11434, so both can run on one machine
_LOOPBACK_NAMES = ("localhost",)


class GatewayConfigError(ValueError):
    """The gateway's configuration is invalid; the message names the setting and says what to do."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs to run.

    endpoint: the daemon's ZeroMQ endpoint (None: moed.clients' default).
    host, port: where HTTP is served (port 0 picks a free port; the handle reports it).
    api_key: when set, every request needs `Authorization: Bearer <api_key>`; required off loopback.
    cors_origins: origins allowed to call from a browser (`*` for any); empty = no CORS headers at all.
    model_name: the name the model is served under (empty: the daemon's store folder name).
    timeout_s: the longest silence allowed from the daemon within one request (it sends progress while queued).
    status_max_age_s: how old a daemon status snapshot may be before a request or /metrics refreshes it.
    max_body_bytes: larger request bodies get 413.
    curve: the CURVE key for a tcp endpoint (None: $MOED_CLIENT_KEY, as every client; clients/keys.py).
    """

    endpoint: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    model_name: str = ""
    timeout_s: float = 120.0
    status_max_age_s: float = 1.0
    max_body_bytes: int = 4 << 20
    curve: ClientKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise GatewayConfigError(f"port {self.port} is out of range (0..65535)")
        if self.api_key is not None and not self.api_key.strip():
            raise GatewayConfigError("the API key is empty; give a non-empty key or none")
        if not is_loopback(self.host) and self.api_key is None:
            raise GatewayConfigError(
                f"refusing to serve HTTP on {self.host}, which is not a loopback address, without an API key: "
                f"give one (--api-key-file FILE) or bind 127.0.0.1")
        for what, value in (("timeout_s", self.timeout_s), ("status_max_age_s", self.status_max_age_s)):
            if not value > 0:
                raise GatewayConfigError(f"{what} must be positive, got {value}")
        if self.max_body_bytes < 1024:
            raise GatewayConfigError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")

    def replace(self, **changes: Any) -> GatewayConfig:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); False for names and other addresses."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPV6]:PORT` as (host, port); the host defaults to loopback.

    Raises GatewayConfigError for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise GatewayConfigError(f"--http {text!r}: write an IPv6 address in brackets, e.g. [::1]:{port}")
    if not host or not port.isdigit():
        raise GatewayConfigError(f"--http {text!r}: expected [HOST:]PORT, e.g. 11435 or 127.0.0.1:11435")
    return host, int(port)


def read_api_key(path: str | Path) -> str:
    """The API key in a file (surrounding whitespace stripped).

    Raises:
        GatewayConfigError: the file is unreadable, empty, or readable by other users (a key is private, like the
            CURVE keys of `moed keys`: chmod 600 it).
    """
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
        mode = os.stat(path).st_mode & 0o777
    except OSError as e:
        raise GatewayConfigError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    if not key:
        raise GatewayConfigError(f"the API key file {path} is empty")
    if mode & 0o077:
        raise GatewayConfigError(f"the API key file {path} has mode {mode:04o}: other users could read the key; "
                                 f"`chmod 600 {path}`")
    return key
