"""`moed generate STORE PROMPT`: stream one generation in-process and print its stats.

STORE is a store folder or the name of a pulled store (`moed list`).

    moed generate STORE "prompt" [--max-tokens 128] [--temp 0] [--top-p 0] [--top-k 0] [--seed N]
                  [--cache-budget 25%] [--read-mode direct|buffered] [--read-threads 4]
                  [--prefetch-depth 1] [--cache-policy lfu|lru] [--chat] [--json]
                  [--speculate off|lookup|draft] [--draft-model PATH] [--num-draft K] [--no-adaptive]

The engine flags are the [engine] config keys of `moed serve` (options.py), with their defaults; no config file or
environment is read. Tokens are printed as they come; the stats (prompt and generation tok/s, hit rate, bytes read,
peak RSS) follow on stderr, or as one JSON object on stdout with --json. A cache budget above the store's experts
is clamped to 100 % with a warning; a bad one is refused before the model loads (exit 2).

--speculate lookup drafts from n-gram matches in the prompt and the text so far, --speculate draft from a small
model sharing the tokenizer (--draft-model); each verification pass checks up to --num-draft tokens in one forward
pass, the number adapting to what is accepted unless --no-adaptive. The tokens are the same as without it (sampling
then draws token i with a key from (--seed, i), as the daemon does); the stats add drafts accepted per pass
(docs/speculation.md). These flags are this command's own, not config keys: generate reads no config file.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..speculation import MODES, SpeculationConfig
from .options import ENGINE_FLAGS, add_flags, given


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate from a store in-process", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="a store folder (made by `moed convert`) or a store's name (`moed list`)")
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", "--temp", dest="temp", type=float, default=0.0,
                   help="sampling temperature (0: greedy); `--temp` for short, as in moectl")
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    add_flags(p, ENGINE_FLAGS)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--json", action="store_true", help="print the text and stats as one JSON object")
    s = p.add_argument_group("speculative decoding (docs/speculation.md)")
    s.add_argument("--speculate", choices=MODES, default="off",
                   help="draft tokens by prompt lookup or a draft model and verify them in one pass (default off)")
    s.add_argument("--draft-model", default=None, help="an mlx-lm checkpoint folder for --speculate draft")
    s.add_argument("--num-draft", type=int, default=SpeculationConfig.max_draft,
                   help=f"the most draft tokens per verification pass, K (default {SpeculationConfig.max_draft})")
    s.add_argument("--no-adaptive", dest="adaptive", action="store_false",
                   help="always draft --num-draft tokens instead of adapting K to the acceptance rate and cost")
    p.set_defaults(func=run)


def _speculation(args: argparse.Namespace) -> SpeculationConfig:
    """The speculation flags as a config. Raises ValueError naming what is wrong."""
    if args.draft_model is not None and args.speculate != "draft":
        raise ValueError("--draft-model is used only with --speculate draft")
    return SpeculationConfig(mode=args.speculate, draft_model=args.draft_model, max_draft=args.num_draft,
                             adaptive=args.adaptive)


def _sampling_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the sampling options, checked by the wire protocol's own rules (the ranges the daemon
    enforces, docs/protocol.md), before anything loads; None if nothing."""
    from moed.clients import protocol

    params = {"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": args.temp, "top_k": args.top_k,
              "min_p": args.min_p, "seed": args.seed, **({"top_p": args.top_p} if args.top_p else {})}
    try:
        protocol.parse_request(protocol.pack(protocol.request("cli", "generate", params)))
    except protocol.ProtocolError as e:
        return e.message
    return None


def run(args: argparse.Namespace) -> int:
    from ..config import engine_config
    from ..engine.drafters import load_draft_model
    from ..engine.generate import GenerationStats, generate
    from ..engine.model import load_engine
    from ..store.format import StoreError
    from ..store.registry import resolve_store

    problem = _sampling_problem(args)
    try:
        speculation = _speculation(args)
    except ValueError as e:
        problem = problem or str(e)
    if problem:
        print(f"moed generate: {problem}", file=sys.stderr)
        return 2
    try:  # ConfigError and BudgetError are ValueErrors
        engine = load_engine(engine_config(resolve_store(args.store), **given(args, ENGINE_FLAGS)))
    except (StoreError, ValueError) as e:
        print(f"moed generate: {e}", file=sys.stderr)
        return 2
    try:
        draft = load_draft_model(speculation.draft_model, engine.tokenizer) if speculation.mode == "draft" else None
    except (OSError, ValueError) as e:
        engine.close()
        print(f"moed generate: {e}", file=sys.stderr)
        return 2
    stats, text = GenerationStats(), []
    try:
        for seg, _ in generate(engine, args.prompt, max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p,
                               top_k=args.top_k, min_p=args.min_p, seed=args.seed, chat=args.chat, stats=stats,
                               speculation=speculation, draft=draft):
            text.append(seg)
            if not args.json:
                print(seg, end="", flush=True)
    except StoreError as e:
        print(f"\nmoed generate: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # a parameter the model cannot take (e.g. top_k above its vocabulary)
        print(f"moed generate: {e}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    if args.json:
        print(json.dumps({"text": "".join(text), "stats": stats.as_dict()}))
    else:
        print()
        _print_stats(engine, stats)
    return 0


def _print_stats(engine, s) -> None:
    c = engine.cache.stats()
    gb = 1e9
    print(
        f"prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.2f} tok/s | generation: {s.generation_tokens} tokens, "
        f"{s.generation_tps:.2f} tok/s ({s.finish_reason})\n"
        f"cache: budget {c.budget_bytes / gb:.3f} GB ({c.slots} slots of {engine.cache.expert_bytes / 1e6:.2f} MB, "
        f"{c.budget_bytes / engine.manifest.total_expert_bytes:.1%} of experts), hit rate {s.hit_rate:.1%} "
        f"({s.cache_hits} hits, {s.cache_misses} misses)\n"
        f"reads: {s.bytes_read / gb:.3f} GB ({s.prefill_bytes_read / gb:.3f} GB in prefill, "
        f"{s.decode_bytes_per_token / 1e6:.2f} MB per decoded token), {s.read_seconds:.2f} s inside reads\n"
        f"memory: dense weights {engine.dense_bytes / gb:.3f} GB, peak RSS {s.peak_rss_bytes / gb:.3f} GB",
        file=sys.stderr,
    )
    if s.speculation != "off":
        passes = max(s.verify_passes, 1)
        print(f"speculation: {s.speculation}, {s.accepted_tokens} of {s.draft_tokens} drafts accepted, "
              f"{s.accepted_tokens / passes:.2f} accepted and {s.tokens_per_pass:.2f} tokens per pass "
              f"({s.verify_passes} passes)", file=sys.stderr)
