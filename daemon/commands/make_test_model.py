"""`moed make-test-model DIR`: write a deterministic random-weight MoE checkpoint (see moed.daemon.testmodel).

    moed make-test-model DIR [--arch qwen3_moe] [--size tiny] [--layout mlx|hf] [--bits 4]
                             [--group-size 64] [--seed 0] [--layers N] [--experts N]
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    # presets is light (the package pulls in mlx.core and tokenizers, ~0.1 s); mlx-lm loads in run().
    from ..testmodel.presets import ARCHES, SIZES

    p = subparsers.add_parser(
        "make-test-model",
        help="write a deterministic random-weight MoE test checkpoint",
        description="Write a deterministic random-weight MoE checkpoint that mlx-lm loads: the Hugging "
        "Face layout (bf16, per-expert tensors) or the mlx-lm layout, bit-identical to what "
        "mlx_lm.convert makes of the hf layout with the same seed.",
    )
    p.add_argument("dir", help="output directory (must not exist)")
    p.add_argument("--arch", choices=ARCHES, default="qwen3_moe")
    p.add_argument("--size", choices=SIZES, default="tiny",
                   help="tiny (<1 MB), small (tens of MB) or bench (Qwen3-30B-A3B-like experts, >4 GB)")
    p.add_argument("--layout", choices=("mlx", "hf"), default="mlx")
    p.add_argument("--bits", type=int, default=4, help="quantization bits for --layout mlx; 0 = bf16")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--experts", type=int, default=None, help="override the preset's expert count")
    p.add_argument("--shard-gb", type=float, default=2.0, help="largest shard file, in GiB")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="float dtype of the mlx layout (float32 runs fastest on MLX's CPU backend)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..testmodel import make_test_model

    try:
        path = make_test_model(
            args.dir,
            arch=args.arch,
            size=args.size,
            layout=args.layout,
            bits=args.bits,
            group_size=args.group_size,
            seed=args.seed,
            shard_gb=args.shard_gb,
            dtype=args.dtype,
            layers=args.layers,
            experts=args.experts,
        )
    except (FileExistsError, ValueError) as e:
        print(f"moed make-test-model: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
