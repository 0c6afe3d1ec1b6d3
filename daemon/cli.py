"""`moed`: the daemon-side command line. Each subcommand lives in its own module under moed.daemon.commands
and exposes `register(subparsers)`, which adds its parser and sets `func` to the function that runs it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from moed.clients import exitcodes

# Subcommand modules, in the order `moed --help` lists them.
COMMANDS = ("demo", "make_test_model", "convert", "pull", "list", "generate", "inspect", "bench", "serve", "gateway",
            "service", "keys")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moed", description="Run Mixture-of-Experts models larger than RAM.")
    p.add_argument("--version", action="version", version=f"moed {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"moed.daemon.commands.{name}").register(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moed")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a reader that left is caught below, not at the interpreter's exit
        return rc
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `moed generate ... | head`: the reader left; end quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush finds nothing to complain about
        return exitcodes.BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
