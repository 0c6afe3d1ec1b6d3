"""`moed inspect STORE [--verify]`: describe a store, and optionally verify every expert's checksum.

    moed inspect STORE            model type, layers, experts, record size, expert and dense bytes
    moed inspect STORE --verify   also read every expert record and check its CRC-32 (exit 1 on a mismatch)
    moed inspect STORE --json     the same as one JSON object
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moed.clients.cli_output import nbytes, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe (and verify) a store", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--verify", action="store_true", help="read every expert and check its checksum")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def describe(root: Path) -> dict:
    from ..store.format import read_manifest

    m = read_manifest(root)
    dense = sum((root / f).stat().st_size for f in m.dense_files)
    return {
        "model_type": m.model_type,
        "moe_layers": len(m.layers),
        "experts_per_layer": sorted({layer.num_experts for layer in m.layers}),
        "quantization": m.quantization,
        "expert_bytes": m.expert_bytes,
        "record_bytes": m.layout.record_bytes,
        "total_expert_bytes": m.total_expert_bytes,
        "dense_file_bytes": dense,
        "tensors": [t.to_json() for t in m.layout.tensors],
    }


def verify(root: Path) -> list[str]:
    """Read every expert once (checksums on); return the errors found."""
    from ..store.format import StoreError, read_manifest
    from ..store.reader import ExpertReader

    m = read_manifest(root)
    errors = []
    with ExpertReader(root, m, mode="buffered", verify=True) as reader:
        futures = [(pos, e, reader.read(pos, e, lambda _: None, priority=0))
                   for pos, layer in enumerate(m.layers) for e in range(layer.num_experts)]
        for _, _, f in futures:
            try:
                f.result()
            except StoreError as err:
                errors.append(str(err))
    return errors


def run(args: argparse.Namespace) -> int:
    from ..store.format import StoreError

    root = Path(args.store)
    try:
        info = describe(root)
        if args.verify:
            info["verify_errors"] = verify(root)
    except StoreError as e:
        print(f"moed inspect: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        table(rows(root, info, args.verify))
    return 1 if info.get("verify_errors") else 0


def rows(root: Path, info: dict, verified: bool) -> list[tuple[str, str]]:
    """`describe`'s dict as the rows a person reads."""
    q = info["quantization"]
    quant = f"{q['bits']}-bit {q.get('mode', 'affine')}, group size {q['group_size']}" if q else "none (float experts)"
    per_layer = info["experts_per_layer"]
    experts = str(per_layer[0]) if len(per_layer) == 1 else f"{per_layer[0]}-{per_layer[-1]}"
    out = [("store", str(root)), ("model", info["model_type"]),
           ("MoE layers", f"{info['moe_layers']}, {experts} experts each"), ("quantization", quant),
           ("expert", f"{nbytes(info['expert_bytes'])} (a record of {nbytes(info['record_bytes'])} on disk)"),
           ("experts", f"{nbytes(info['total_expert_bytes'])} in all"),
           ("dense", f"{nbytes(info['dense_file_bytes'])} (resident while serving)")]
    for i, t in enumerate(info["tensors"]):
        shape = "x".join(str(d) for d in t["shape"])
        out.append(("tensors" if i == 0 else "", f"{t['name']}  {t['dtype']} [{shape}]"))
    if verified:
        errs = info["verify_errors"]
        out.append(("verify", "every checksum matches" if not errs else f"{len(errs)} errors"))
        out += [("", e) for e in errs]
    return out
