"""`moed service`: run the daemon as a per-user service (launchd LaunchAgent on macOS, systemd user unit on Linux).

    moed service install [STORE] [--config FILE] [--python PATH] [--env KEY=VALUE] [--no-start] [--force]
                         [--no-checksums]
    moed service uninstall | start | stop | restart | status
    moed service logs [-n LINES] [-f]

Every action takes --platform launchd|systemd (default: this machine's) and --dry-run (print every file with its
text and every command, change nothing). install verifies the store first (manifest, file sizes and, unless
--no-checksums, every expert's checksum) and refuses one that fails; it writes the plist or unit with absolute
paths and an install record that uninstall follows. The store comes from STORE, else the config's `store`.
docs/service.md has the details.

Exit codes: 0 done; 1 a step failed or the action is not possible (e.g. already installed); 2 usage, config or
store error; status and logs return the exit code of launchctl / systemctl / journalctl / tail.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..service import Host
    from ..service.steps import Step

ACTION_HELP = {
    "install": "verify the store, write the service file, load and start it",
    "uninstall": "stop the service and remove exactly what install wrote",
    "start": "start the service", "stop": "stop the service (it drains running requests first)",
    "restart": "restart the service", "status": "show the service manager's view of it",
    "logs": "show the daemon's log (launchd: its log file; systemd: the user journal)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("service", help="install and control the daemon as a launchd/systemd user service",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--platform", choices=("launchd", "systemd"), help="service manager (default: this OS's)")
    common.add_argument("--dry-run", action="store_true", help="print every file and command; change nothing")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_ in ACTION_HELP.items():
        a = actions.add_parser(name, parents=[common], help=help_, description=help_)
        if name == "install":
            a.add_argument("store", nargs="?", help="the store to serve (default: `store` in the config)")
            a.add_argument("--config", help="config file the service passes to `moed serve --config`")
            a.add_argument("--python", help="interpreter to run (default: this one, %(default)s)",
                           default=sys.executable)
            a.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                           help="an environment variable for the daemon (repeatable)")
            a.add_argument("--no-start", action="store_true", help="install and enable, but do not start now")
            a.add_argument("--force", action="store_true", help="replace an existing install")
            a.add_argument("--no-checksums", action="store_true",
                           help="check the manifest and file sizes only, not every expert's checksum")
        if name == "logs":
            a.add_argument("-n", "--lines", type=int, default=100, help="lines to show (default %(default)s)")
            a.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..service import Host, Runner, ServiceError, plan

    try:
        host = Host.current(args.platform)
        if args.action == "install":
            steps = _install_plan(host, args)
        elif args.action == "uninstall":
            steps = plan.uninstall(host)
        else:
            steps = plan.control(host, args.action, lines=getattr(args, "lines", 100),
                                 follow=getattr(args, "follow", False))
        return Runner(sys.stdout, dry_run=args.dry_run).run(steps)
    except _UsageError as e:
        print(f"moed service: {e}", file=sys.stderr)
        return 2
    except ServiceError as e:
        print(f"moed service {args.action}: {e}", file=sys.stderr)
        return 1


class _UsageError(Exception):
    """A bad flag, config or store: exit code 2."""


def _install_plan(host: Host, args: argparse.Namespace) -> list[Step]:
    from ..config import ConfigError, DaemonConfig, load_config
    from ..service import ServiceSpec, plan

    config_path = Path(args.config).expanduser().absolute() if args.config else None
    read = config_path or (host.default_config if host.default_config.is_file() else None)
    try:  # the service's own environment, not this shell's MOED_* variables, is what the daemon will see
        config = load_config(read, env={}) if read else DaemonConfig()
    except ConfigError as e:
        raise _UsageError(str(e)) from None
    store = args.store or config.engine.store
    if not store:
        raise _UsageError("no store to serve: give one (`moed service install STORE`) or set `store` in the config")
    store_path = Path(store).expanduser().resolve()
    _verify_store(store_path, checksums=not args.no_checksums)
    interpreter = Path(args.python).expanduser().absolute()  # not resolved: a venv's python link selects the venv
    if not os.access(interpreter, os.X_OK):
        raise _UsageError(f"interpreter {interpreter} is not an executable file")
    env = dict(_pair(e) for e in args.env)
    spec = ServiceSpec.build(host, interpreter=interpreter, store=store_path, config=config_path,
                             drain_timeout_s=config.scheduler.drain_timeout_s, extra_env=env)
    return plan.install(host, spec, start=not args.no_start, force=args.force)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not key.replace("_", "").isalnum():
        raise _UsageError(f"--env {text!r}: expected KEY=VALUE")
    return key, value


def _verify_store(root: Path, *, checksums: bool) -> None:
    from ..store.format import StoreError, read_manifest
    from .inspect import verify

    try:
        manifest = read_manifest(root)
        errors = verify(root) if checksums else []
    except StoreError as e:
        raise _UsageError(f"store {root} does not verify: {e}") from None
    if errors:
        shown = "\n  ".join(errors[:5]) + (f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise _UsageError(f"store {root} does not verify ({len(errors)} bad expert records):\n  {shown}")
    n = sum(layer.num_experts for layer in manifest.layers)
    print(f"store {root}: manifest ok, {n} experts" + (", checksums ok" if checksums else " (checksums not read)"))
