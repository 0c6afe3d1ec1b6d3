"""The HTTP gateway inside the daemon (`moed serve --http [HOST:]PORT`, config keys `http`, `http_api_key_file`).

    gateway_config(config, endpoint) -> GatewayConfig | None   # validated; ConfigError names the key
    start(gateway_config) -> GatewayHandle                      # its own thread and event loop; .stop()

The gateway is a client of the daemon like any other (moed.clients.gateway over the ZeroMQ endpoint): the daemon
only starts it once its socket is bound and stops it when the socket loop has finished. Its configuration is
checked before anything binds, so a bind off loopback without an API key, or an unreadable key file, stops
`moed serve` with exit code 2 (docs/gateway.md has the access rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ConfigError, DaemonConfig

if TYPE_CHECKING:
    from moed.clients.gateway import GatewayConfig, GatewayHandle

STOP_TIMEOUT_S = 10.0


def gateway_config(config: DaemonConfig, endpoint: str | None = None) -> GatewayConfig | None:
    """The gateway's config for the daemon's `http` keys, or None when `http` is empty.

    Raises:
        ConfigError: a bad `http` address, an unreadable or empty key file, or a bind off loopback without a key.
    """
    sc = config.server
    if not sc.http:
        return None
    from moed.clients.gateway import GatewayConfig, GatewayConfigError, parse_bind, read_api_key

    try:
        host, port = parse_bind(sc.http)
        key = read_api_key(sc.http_api_key_file) if sc.http_api_key_file else None
        return GatewayConfig(endpoint=endpoint or sc.endpoint or None, host=host, port=port, api_key=key)
    except GatewayConfigError as e:
        raise ConfigError(f"`server.http` {sc.http!r}: {e}") from None


def start(config: GatewayConfig) -> GatewayHandle:
    """Serve HTTP on a thread of its own; returns once bound. Raises OSError when the address is taken."""
    from moed.clients.gateway import start_in_thread

    return start_in_thread(config)
