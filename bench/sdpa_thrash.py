"""MLX's CUDA attention-plan cache against a stream of new key lengths, as verification passes make them.

    python -m bench.sdpa_thrash CKPT --passes 1100 --rows 2 [--moed-env] [--out F.json]

mlx-lm alone: the prompt into a KV cache, then `passes` forward passes of `rows` rows, each trimmed back to one new
position, so every pass attends over a key length not seen before (a verification pass whose drafts were all
rejected). On MLX's CUDA backend a bf16 model's multi-row attention goes to cuDNN, whose plan MLX caches by exact
shape: each pass builds one. Reports the passes completed, the error that ended them early if any (MLX raises
"Cache thrashing is happening" after twice the cache's capacity in misses), and the median and first-pass ms.
`--moed-env` first applies moed's long_lived_backend_env (moed.daemon.engine.model), as load_engine does.
Run under MLX_CUDA_USE_CUDNN_SDPA=0 to time the same passes without cuDNN.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--passes", type=int, default=1100)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--moed-env", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.moed_env:
        from moed.daemon.engine.model import long_lived_backend_env

        long_lived_backend_env()
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load

    model, _ = load(a.checkpoint)
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([list(range(1, 33))]), cache=cache))
    times, error = [], None
    for i in range(a.passes):
        t0 = time.perf_counter()
        try:
            mx.eval(model(mx.array([[7 + i % 50] * a.rows]), cache=cache))
        except RuntimeError as e:
            error = str(e)
            break
        for c in cache:
            c.trim(a.rows - 1)
        times.append((time.perf_counter() - t0) * 1e3)
    out = {"checkpoint": a.checkpoint, "rows": a.rows, "moed_env": a.moed_env, "device": str(mx.default_device()),
           "passes_done": len(times), "error": error,
           "first_ms": times[0] if times else None, "median_ms": statistics.median(times) if times else None}
    print(json.dumps(out))
    if a.out:
        a.out.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
