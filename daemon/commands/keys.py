"""`moed keys`: the CURVE keys a tcp endpoint needs (docs/daemon.md, Access).

    moed keys server [--force] [--dir DIR]                 the daemon's keypair: server.key (0600), server.pub
    moed keys client NAME [--admin] [--force] [--dir DIR]  a client's key file clients/NAME.key (0600), and NAME in
                                                           allowed_clients (role admin or client)
    moed keys list [--dir DIR]                             the allowed clients: role, name, public key

DIR defaults to $MOED_KEYS_DIR, else `keys` in the config folder. Existing keys are never replaced without
--force. A running daemon reads allowed_clients again when it changes: no restart is needed for a new client.
Exit codes: 0 done, 1 a file exists (without --force), 2 bad usage or no server key yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make CURVE keys for a tcp endpoint", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ks = p.add_subparsers(dest="keys_command", metavar="WHAT", required=True)
    server = ks.add_parser("server", help="make the daemon's keypair")
    client = ks.add_parser("client", help="make a client's key and allow it")
    client.add_argument("name", help="the client's name (letters, digits, _ . -), shown in the daemon's log")
    client.add_argument("--admin", action="store_true",
                        help="allow control requests (shutdown, governor_set, clear_quarantine, cancel by job)")
    listing = ks.add_parser("list", help="list the allowed clients")
    for sp in (server, client, listing):
        sp.add_argument("--dir", type=Path, default=None, help="the keys folder (default: $MOED_KEYS_DIR, else "
                        "`keys` in the config folder)")
    for sp in (server, client):
        sp.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moed.clients import keys

    folder = args.dir or keys.keys_dir()
    try:
        if args.keys_command == "server":
            key = keys.make_server_key(folder, force=args.force)
            print(f"wrote {keys.server_key_path(folder)} (public key {key.public.decode()})")
            print(f"next: `moed keys client NAME [--admin]` for each client, then serve on tcp://127.0.0.1:PORT")
        elif args.keys_command == "client":
            path = keys.make_client_key(args.name, admin=args.admin, folder=folder, force=args.force)
            print(f"wrote {path} and allowed {args.name!r} ({'admin' if args.admin else 'client'}) in "
                  f"{keys.allowed_clients_path(folder)}")
            print(f"use it: moectl --key-file {path} ...  (or export {keys.ENV_CLIENT_KEY}={path})")
        else:
            for entry in keys.parse_allowed(keys.allowed_clients_path(folder)).values():
                print(f"{entry.role:<6}  {entry.name:<24}  {entry.public.decode()}")
    except FileExistsError as e:
        print(f"moed keys: {e}", file=sys.stderr)
        return 1
    except (keys.KeyFileError, ValueError, OSError) as e:
        print(f"moed keys: {e}", file=sys.stderr)
        return 2
    return 0
