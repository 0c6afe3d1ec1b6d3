"""Command-line flags made from config keys (config.py): each flag's type and help come from its key's field.

    add_flags(parser, SERVE_FLAGS)            # --max-batch N ... (default None: the flag was not given)
    given(args, SERVE_FLAGS) -> {key: value}  # only the flags given, ready for load_config(flags=...)
    as_argv(values, ENGINE_FLAGS) -> [...]    # the same values as flags again (for a child `moed serve`)

A key added to config.py therefore reaches every command that lists its flag, and a command that builds another
command's options goes through that command's own parser, never a hand-made namespace.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

# flag -> config key
ENGINE_FLAGS = {
    "--cache-budget": "cache_budget", "--read-mode": "read_mode", "--read-threads": "read_threads",
    "--cache-policy": "cache_policy", "--prefetch-depth": "prefetch_depth",
}
SERVE_FLAGS = {
    "--store": "store", "--endpoint": "endpoint", **ENGINE_FLAGS,
    "--max-batch": "max_batch", "--queue-limit": "queue_limit", "--context-limit": "context_limit",
    "--keep-alive": "keep_alive_s", "--idle-cache-budget": "idle_cache_budget",
    "--speculate": "speculate", "--draft-model": "draft_model",
    "--log-level": "log_level", "--log-file": "log_file",
    "--governor": "governor", "--governor-profile": "governor_profile", "--sensor-trace": "sensor_trace",
    "--http": "http", "--http-api-key-file": "http_api_key_file",
    "--curve-server-key": "curve_server_key", "--curve-allowed-clients": "curve_allowed_clients",
}
ALIASES = {"--cache-policy": ("--policy",)}  # older spellings still accepted


def add_flags(parser: argparse.ArgumentParser, flags: Mapping[str, str],
              defaults: Mapping[str, Any] | None = None) -> None:
    """One option per flag, typed and documented from its config key; default None unless `defaults` has the
    key (then the help says so)."""
    from ..config import KEYS, key_type

    for flag, key in flags.items():
        default = (defaults or {}).get(key)
        doc = KEYS[key][1].metadata["doc"] + (f" (default here: {default})" if default is not None else "")
        parser.add_argument(flag, *ALIASES.get(flag, ()), dest=key, type=key_type(key), default=default,
                            help=doc.replace("%", "%%"))


def given(args: argparse.Namespace, flags: Mapping[str, str]) -> dict[str, Any]:
    """The config keys of `flags` whose flag was given (or has a command default), by key."""
    return {key: getattr(args, key) for key in flags.values() if getattr(args, key) is not None}


def as_argv(values: Mapping[str, Any], flags: Mapping[str, str]) -> list[str]:
    """`--flag value` pairs for the keys of `values` that `flags` knows."""
    by_key = {key: flag for flag, key in flags.items()}
    return [part for key, v in values.items() if key in by_key for part in (by_key[key], str(v))]
