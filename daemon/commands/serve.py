"""`moed serve`: the long-lived daemon: one process keeps the model loaded and serves many local clients.

    moed serve [STORE] [--config FILE] [--store STORE] [--endpoint ipc://PATH|tcp://127.0.0.1:PORT]
               [--cache-budget 25%] [--read-mode direct|buffered] [--read-threads N] [--cache-policy lfu|lru]
               [--prefetch-depth N] [--max-batch N] [--queue-limit N] [--context-limit N] [--keep-alive SECONDS]
               [--idle-cache-budget 10%] [--log-level info] [--log-file FILE]
               [--http [HOST:]PORT] [--http-api-key-file FILE] [--check]

STORE (or the `store` key) is a store folder or the name of a pulled store (`moed list`; see registry.py).
--http also serves the OpenAI / Ollama HTTP API from this process (docs/gateway.md); off loopback it needs
--http-api-key-file.

Configuration comes from a TOML file (--config, else $MOED_CONFIG, else the platform's default path), then
MOED_<KEY> environment variables, then these flags (each is a config key: see options.py); `--check` prints the
result and exits. Every setting, the cache budgets against the store's manifest included, is checked before
anything is bound or loaded. docs/daemon.md lists every key. Clients talk to it with `moectl` or moed.clients.

Exit codes: 0 clean shutdown (SIGTERM, SIGINT or a shutdown request), 1 fatal error at run time, 2 config or usage
error (HTTP off loopback without a key included), 3 the endpoint is in use by another daemon, or the HTTP address
cannot be bound.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from .options import SERVE_FLAGS, add_flags, given

if TYPE_CHECKING:
    from ..config import DaemonConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the daemon (serve many clients over ZeroMQ)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store_arg", nargs="?", metavar="STORE", help="the store to serve (same as --store)")
    p.add_argument("--config", help="TOML config file")
    add_flags(p, SERVE_FLAGS)
    p.add_argument("--check", action="store_true", help="validate the config, print it, and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moed.clients.endpoints import default_endpoint
    from moed.clients.keys import KeyFileError

    from .. import http_gateway
    from ..access import Access
    from ..config import ConfigError, as_toml, check_with_store, load_config
    from ..logs import setup_logging

    flags = given(args, SERVE_FLAGS)
    if args.store_arg is not None:
        flags.setdefault("store", args.store_arg)
    try:
        config = _resolve_store(load_config(args.config, flags=flags))
        warnings = check_with_store(config)
        http_gateway.gateway_config(config)  # the key file and the access rule, before anything binds
        Access.for_endpoint(config, config.server.endpoint or default_endpoint())  # tcp: the CURVE key files
    except (ConfigError, KeyFileError) as e:
        print(f"moed serve: {e}", file=sys.stderr)
        return 2
    for w in warnings:  # the daemon's log repeats them when the engine loads
        print(f"moed serve: warning: {w}", file=sys.stderr)
    if args.check:
        print(as_toml(config), end="")
        return 0
    setup_logging(config.log)
    return _serve(config)


def _resolve_store(config: DaemonConfig) -> DaemonConfig:
    """The config with `store` as a folder: a store name (`moed list`) becomes its path; a path stays as given.

    Raises:
        ConfigError: the name matches no store, or several."""
    from ..config import ConfigError
    from ..store.format import StoreError
    from ..store.registry import resolve_store

    if not config.engine.store:
        return config  # check_with_store says what to do
    try:
        path = resolve_store(config.engine.store)
    except StoreError as e:
        raise ConfigError(f"store {config.engine.store}: {e}") from None
    return config if str(path) == config.engine.store else config.replace(store=str(path))


def _serve(config: DaemonConfig) -> NoReturn:
    from ..runtime import install_signal_handlers
    from ..serving import Daemon

    daemon = Daemon(config)

    def on_signal(name: str, count: int) -> None:
        # the first signal drains gracefully; a second one ends running requests at once
        daemon.shutdown(f"signal {name}", immediate=count > 1)

    install_signal_handlers(on_signal)
    rc = daemon.serve()
    # The daemon has drained, saved its state and closed its socket. End the process here rather than through
    # the interpreter's teardown: at teardown, native threads of MLX's runtime can still be joinable when their
    # C++ objects are destroyed, which aborts the process (SIGABRT, "terminate called without an active
    # exception") and turns a clean exit 0 into -6 now and then.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
