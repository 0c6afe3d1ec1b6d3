"""`moed convert SRC DST [--bits N] [--group-size G] [--dtype T] [--force] [--quiet]`: make an expert store.

SRC is an mlx-lm checkpoint (quantized or float) or a Hugging Face checkpoint with per-expert tensors (bf16, fp16
or fp32). A float source is quantized to --bits (default 4; 0 keeps the experts in float) with --group-size (default
64), exactly as `mlx_lm.convert --quantize` would. An already-quantized mlx-lm source keeps its quantization (by
default; asking for other bits or group size is an error). --dtype casts a float source's weights first (float32,
float16 or bfloat16; default: the checkpoint's torch_dtype): on MLX's CPU backend a float32 store decodes several
times faster than a bf16 one. DST must not exist unless --force. A full disk or an unwritable folder is a one-line
error; the partial output is removed, and partial folders of conversions that died are removed on the next run.
Progress (per layer: experts, bytes, MB/s) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
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
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="cast a float source's weights to this dtype before quantizing (default: the checkpoint's "
                        "torch_dtype; float32 is fastest on MLX's CPU backend)")
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
                           progress=None if args.quiet else progress, dtype=args.dtype)
    except StoreError as e:
        print(f"moed convert: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"moed convert: {_os_error(e, args.dst)}", file=sys.stderr)
        return 1
    if not args.quiet:
        q = manifest.quantization
        what = f"{q['bits']}-bit, group size {q['group_size']}" if q else "float"
        print(f"wrote {args.dst}: {len(manifest.layers)} MoE layers, {what} experts, "
              f"{manifest.total_expert_bytes / 1e9:.2f} GB of experts", file=sys.stderr)
    return 0


def _os_error(e: OSError, dst: str) -> str:
    """One line a person can act on, for the ways writing a store fails."""
    where = e.filename or dst
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(dst)) or ".").free
        return (f"no space left writing {where} ({free / 1e9:.1f} GB free there); nothing was kept: free some "
                f"space or convert to another disk")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {e.strerror}; choose a folder you can write to"
    return f"{where}: {e.strerror or e}"
