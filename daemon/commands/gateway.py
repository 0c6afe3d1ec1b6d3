"""`moed gateway`: serve the OpenAI and Ollama HTTP APIs and Prometheus metrics for a running daemon.

    moed gateway [--endpoint ENDPOINT] [--key-file FILE] [--http [HOST:]PORT] [--api-key-file FILE]
                 [--cors-origin ORIGIN ...] [--model-name NAME] [--timeout SECONDS] [--log-level info]

The gateway is a client of the daemon (moed.clients.gateway, docs/gateway.md): it talks the ZeroMQ protocol to
ENDPOINT (default: the clients' default endpoint) and serves HTTP on HOST:PORT (default 127.0.0.1:11435). A HOST
that is not a loopback address needs --api-key-file; then every request must carry `Authorization: Bearer KEY`.

Exit codes: 0 stopped by SIGINT or SIGTERM, 2 usage or config error (e.g. a non-loopback bind without a key),
3 the address is in use or cannot be bound.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="serve the OpenAI and Ollama HTTP APIs for a running daemon",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", help="the daemon's ZeroMQ endpoint (default: $MOED_ENDPOINT, else the default)")
    p.add_argument("--http", default="11435", metavar="[HOST:]PORT", help="where to serve HTTP (default 11435 on "
                   "127.0.0.1)")
    p.add_argument("--api-key-file", metavar="FILE", help="a file holding the API key clients must send")
    p.add_argument("--key-file", metavar="FILE", help="the CURVE key file for a tcp endpoint (`moed keys client "
                   "NAME`; default: $MOED_CLIENT_KEY)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from ORIGIN (`*` for any); repeatable; default: no CORS")
    p.add_argument("--model-name", default="", help="the name to serve the model under (default: the store's "
                   "folder name)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="the longest silence allowed from the daemon within one request (default 120)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moed.clients.gateway import GatewayConfig, GatewayConfigError, parse_bind, read_api_key
    from moed.clients.gateway import run as serve
    from moed.clients.keys import KeyFileError, load_client_key

    try:
        host, port = parse_bind(args.http)
        key = read_api_key(args.api_key_file) if args.api_key_file else None
        curve = load_client_key(args.key_file) if args.key_file else None
        config = GatewayConfig(endpoint=args.endpoint, host=host, port=port, api_key=key,
                               cors_origins=tuple(args.cors_origin), model_name=args.model_name, curve=curve,
                               timeout_s=args.timeout)
    except (GatewayConfigError, KeyFileError) as e:
        print(f"moed gateway: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(config)
    except OSError as e:
        print(f"moed gateway: cannot serve HTTP on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 3
