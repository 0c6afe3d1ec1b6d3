"""Greedy exactness against mlx-lm on one machine: the tokens moed generates at each budget against mlx-lm's.

    python -m bench.exact STORE CHECKPOINT [--budgets 100%,25%] [--tokens 64] [--out FILE.json]

Used where the test suite does not run (the lent GPU): the same check as tests/daemon/test_engine_exact.py, on the
benchmark checkpoint, on whatever backend MLX computes with here. Exit status 1 if any budget differs.
"""

from __future__ import annotations

import argparse
import json
import sys

from mlx_lm.generate import stream_generate

PROMPT = "We hold these truths to be self-evident, that all men are created equal"


def greedy(model, tokenizer, n: int) -> list[int]:
    return [r.token for r in stream_generate(model, tokenizer, tokenizer.encode(PROMPT), max_tokens=n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("checkpoint")
    p.add_argument("--budgets", default="100%,25%")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from mlx_lm import load

    from moed.daemon.bench.single import backend
    from moed.daemon.engine.model import load_engine
    from moed.daemon.config import engine_config

    model, tok = load(args.checkpoint)
    want = greedy(model, tok, args.tokens)
    del model
    rows = []
    for budget in args.budgets.split(","):
        eng = load_engine(engine_config(args.store, cache_budget=budget, read_mode="buffered"))
        got = greedy(eng.model, eng.tokenizer, args.tokens)
        eng.cache.flush()
        st = eng.cache.stats()
        eng.close()
        first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), None)
        rows.append({"budget": budget, "equal": got == want, "first_difference": first, "tokens": len(got),
                     "hit_rate": st.hit_rate, "unsynced_calls": st.unsynced, "synced_calls": st.acquires})
    out = {"backend": backend(), "reference_tokens": want[:16], "runs": rows}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
