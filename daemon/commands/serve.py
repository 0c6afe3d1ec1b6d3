"""`moed serve`: the long-lived daemon: one process keeps the model loaded and serves many local clients.

    moed serve [--config FILE] [--store STORE] [--endpoint ipc://PATH|tcp://127.0.0.1:PORT] [--cache-budget 25%]
               [--max-batch N] [--queue-limit N] [--context-limit N] [--read-mode direct|buffered]
               [--keep-alive SECONDS] [--log-level info] [--log-file FILE] [--check]

Configuration comes from a TOML file (--config, else $MOED_CONFIG, else the platform's default path), then
MOED_<KEY> environment variables, then these flags; `--check` prints the result and exits. docs/daemon.md lists
every key. Clients talk to it with `moectl` or moed.clients.

Exit codes: 0 clean shutdown (SIGTERM, SIGINT or a shutdown request), 1 fatal error at run time, 2 config or usage
error, 3 the endpoint is in use by another daemon.
"""

from __future__ import annotations

import argparse
import sys

# flag -> (config key, type)
FLAGS = {
    "--store": ("store", str), "--endpoint": ("endpoint", str), "--cache-budget": ("cache_budget", str),
    "--max-batch": ("max_batch", int), "--queue-limit": ("queue_limit", int),
    "--context-limit": ("context_limit", int), "--read-mode": ("read_mode", str),
    "--keep-alive": ("keep_alive_s", float), "--log-level": ("log_level", str), "--log-file": ("log_file", str),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the daemon (serve many clients over ZeroMQ)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store_arg", nargs="?", metavar="STORE", help="the store to serve (same as --store)")
    p.add_argument("--config", help="TOML config file")
    for flag, (key, kind) in FLAGS.items():
        p.add_argument(flag, dest=key, type=kind, default=None, help=_help(key))
    p.add_argument("--check", action="store_true", help="validate the config, print it, and exit")
    p.set_defaults(func=run)


def _help(key: str) -> str:
    from ..config import KEYS

    return KEYS[key][1].metadata["doc"].replace("%", "%%")


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, as_toml, load_config
    from ..logs import setup_logging

    flags = {key: getattr(args, key) for key, _ in FLAGS.values()}
    if args.store_arg is not None:
        flags["store"] = flags["store"] or args.store_arg
    try:
        config = load_config(args.config, flags=flags)
        _check_store(config.engine.store)
    except ConfigError as e:
        print(f"moed serve: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(as_toml(config), end="")
        return 0
    setup_logging(config.log)
    return _serve(config)


def _check_store(store: str) -> None:
    from ..config import ConfigError
    from ..store.format import StoreError, read_manifest

    if not store:
        raise ConfigError("no store to serve: give one (`moed serve STORE`, --store, MOED_STORE, or `store` in the "
                          "config file)")
    try:
        read_manifest(store)
    except StoreError as e:
        raise ConfigError(f"store {store}: {e}") from None


def _serve(config) -> int:
    from ..runtime import install_signal_handlers
    from ..serving import Daemon

    daemon = Daemon(config)

    def on_signal(name: str, count: int) -> None:
        # the first signal drains gracefully; a second one ends running requests at once
        daemon.shutdown(f"signal {name}", immediate=count > 1)

    install_signal_handlers(on_signal)
    return daemon.serve()
