"""`moed convert SRC DST [--bits N] [--group-size G] [--force] [--quiet]`: make an expert store from a checkpoint.

SRC is an mlx-lm checkpoint (quantized or float) or a Hugging Face checkpoint with per-expert tensors (bf16, fp16
or fp32). A float source is quantized to --bits (default 4; 0 keeps the experts in float) with --group-size (default
64), exactly as `mlx_lm.convert --quantize` would. An already-quantized mlx-lm source keeps its quantization (by
default; asking for other bits or group size is an error). DST must not exist unless --force.
Progress (per layer: experts, bytes, MB/s) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint into an expert store", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint folder (mlx-lm or Hugging Face layout)")
    p.add_argument("dst", help="store folder to create")
    p.add_argument("--bits", type=int, default=None,
                   help="quantize float experts and weights to this many bits, 0 = keep float "
                        "(default: 4, or the source's own for an already-quantized source)")
    p.add_argument("--group-size", type=int, default=None, help="quantization group size (default: 64)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..store.convert import convert, source_is_quantized
    from ..store.format import StoreError

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        bits, group_size = args.bits, args.group_size
        if bits is None and group_size is None and source_is_quantized(args.src):
            pass  # keep the source's quantization
        elif bits is None:
            bits = 4
        manifest = convert(args.src, args.dst, bits=bits, group_size=group_size or 64, force=args.force,
                           progress=None if args.quiet else progress)
    except StoreError as e:
        print(f"moed convert: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        q = manifest.quantization
        what = f"{q['bits']}-bit, group size {q['group_size']}" if q else "float"
        print(f"wrote {args.dst}: {len(manifest.layers)} MoE layers, {what} experts, "
              f"{manifest.total_expert_bytes / 1e9:.2f} GB of experts", file=sys.stderr)
    return 0
