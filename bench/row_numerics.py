"""Does a token's logit depend on how many rows its forward pass has? mlx-lm alone, no moed.

Speculative decoding computes a token's logits as one row of a K+1-row verification pass where plain decoding
computes it alone. In exact arithmetic the two agree; in floating point they agree only where the backend's kernels
give a row the same result whatever the row count. This measures it per checkpoint:

    python -m bench.row_numerics CKPT [CKPT ...] --tokens 128 --prompts 3 --chunks 2,5,9 --drafts 2,4 --out F.json

Per prompt (the speculation bench's "free" prompts): greedy tokens by mlx-lm's `generate_step` (one row a step);
then the same tokens teacher-forced in passes of `c` rows (c in --chunks), each position's log-probabilities
compared with the one-row step's: the largest difference, and how often the arg-max changes (a greedy token that a
pass of c rows would have picked differently). Also the plain step's gap between its best and second-best
log-probability (a small gap is where a rounding difference flips the pick). Last, mlx-lm's own
`speculative_generate_step` with the model as its own draft (every draft accepted, so every token comes out of a
multi-row pass): the first position where its tokens leave `generate_step`'s (None: never).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten


def _plain(model, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    from mlx_lm.generate import generate_step

    toks, rows = [], []
    for tok, logprobs in generate_step(mx.array(ids), model, max_tokens=n, sampler=lambda x: mx.argmax(x, axis=-1)):
        toks.append(int(tok))
        rows.append(np.array(logprobs.astype(mx.float32)))
    return toks, np.stack(rows)


def _chunked(model, ids: list[int], toks: list[int], c: int) -> np.ndarray:
    """Log-probabilities for each generated position, the tokens fed in passes of c rows (prefill as generate_step)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array(ids[:-1])[None], cache=cache)
    mx.eval([x.state for x in cache])
    feed, out = [ids[-1]] + toks[:-1], []
    for i in range(0, len(feed), c):
        logits = model(mx.array(feed[i:i + c])[None], cache=cache)[0]
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        out.append(np.array(logprobs.astype(mx.float32)))
    return np.concatenate(out)


def _speculative(model, ids: list[int], n: int, k: int) -> list[int]:
    from mlx_lm.generate import speculative_generate_step

    return [int(t) for t, _, _ in speculative_generate_step(mx.array(ids), model, model, num_draft_tokens=k,
                                                             max_tokens=n)]


def _first_diff(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def measure(path: str, *, tokens: int, prompts: int, chunks: list[int], drafts: list[int]) -> dict:
    from mlx_lm.utils import load

    from moed.daemon.bench.workloads import prompts as workload_prompts

    model, tokenizer = load(path)
    dtype = str(next(v for k, v in tree_flatten(model.parameters()) if k.endswith("norm.weight")).dtype)
    out = {"checkpoint": path, "dtype": dtype, "device": str(mx.default_device()), "chunks": {}, "speculative": {}}
    gaps, per_chunk, per_k = [], {c: [] for c in chunks}, {k: [] for k in drafts}
    for p in workload_prompts("free", tokenizer, count=prompts, max_tokens=tokens):
        ids = list(p.ids)
        toks, plain = _plain(model, ids, tokens)
        top2 = np.sort(plain, axis=-1)[:, -2:]
        gaps.append(top2[:, 1] - top2[:, 0])
        for c in chunks:
            lp = _chunked(model, ids, toks, c)
            per_chunk[c].append({"max_abs_diff": float(np.abs(lp - plain).max()),
                                 "flips": int((lp.argmax(-1) != np.array(toks)).sum())})
        for k in drafts:
            per_k[k].append(_first_diff(toks, _speculative(model, ids, tokens, k)))
    g = np.concatenate(gaps)
    out["positions"] = int(g.size)
    out["top2_gap"] = {"min": float(g.min()), "p1": float(np.percentile(g, 1)), "median": float(np.median(g))}
    for c, rs in per_chunk.items():
        out["chunks"][str(c)] = {"max_abs_diff": max(r["max_abs_diff"] for r in rs),
                                 "flips": sum(r["flips"] for r in rs)}
    out["speculative"] = {str(k): v for k, v in per_k.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--chunks", default="2,5,9")
    ap.add_argument("--drafts", default="2,4")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    results = [measure(c, tokens=a.tokens, prompts=a.prompts, chunks=ints(a.chunks), drafts=ints(a.drafts))
               for c in a.checkpoints]
    for r in results:
        print(json.dumps(r))
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
