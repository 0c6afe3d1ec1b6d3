"""`moed list [--json]`: the stores in moed's data folder (`moed pull` puts them there), with their size,
architecture, quantization and origin. Folders there that are not usable stores are listed apart, with why."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the stores in moed's data folder", description=__doc__)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moed.clients.cli_output import nbytes

    from ..store.registry import list_stores, stores_dir

    good, bad = list_stores()
    if args.json:
        print(json.dumps({"stores": [{"name": s.name, "path": str(s.path), "model_type": s.manifest.model_type,
                                      "quantization": s.manifest.quantization,
                                      "expert_bytes": s.manifest.total_expert_bytes, "dense_bytes": s.dense_bytes,
                                      "origin": s.origin} for s in good],
                          "unusable": [{"name": n, "why": why} for n, why in bad]}))
        return 0
    if not good and not bad:
        print(f"no stores in {stores_dir()} yet: `moed pull ORG/NAME` fetches one", file=sys.stderr)
        return 0
    rows = [("NAME", "ARCH", "QUANT", "EXPERTS", "DENSE", "FROM")]
    for s in good:
        origin = f"{s.origin['repo_id']}@{s.origin.get('revision', '')}" if s.origin.get("repo_id") else ""
        rows.append((s.name, s.manifest.model_type, s.quantization, nbytes(s.manifest.total_expert_bytes),
                     nbytes(s.dense_bytes), origin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for name, why in bad:
        print(f"{name}: not usable: {why}", file=sys.stderr)
    return 0
