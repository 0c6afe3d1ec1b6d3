"""Record routing traces of an mlx-lm MoE checkpoint: the top-k experts of every MoE layer for every token, and the
prefetcher's predictions for the layers after it. Writes an .npz; prints a one-line JSON summary.

    python -m bench.routing_trace CKPT OUT.npz [--mode forced|sampled] [--tokens N] [--depth 3]
        [--prompts 8 --prompt-tokens 24 --new-tokens 96 --temp 0.8 --seed 0] [--part all|tune|report]

How: the checkpoint is loaded with plain `mlx_lm.load`; each SwitchGLU is wrapped by a recorder that, per call,
keeps the routing indices it is given ([..., k]) and applies the routers of layers l+1..l+depth to its input x
(the MoE block's input: exactly what moed's Prefetcher does, prefetch.py) for their top-k. Nothing else changes,
so the model computes what mlx-lm computes.

- forced: the held-out text (moed.daemon.testmodel.split.heldout_text) tokenized and run through the model in
  prefill chunks of `--chunk` tokens with a KV cache; a causal model routes each token the same way whether it
  is prefilled or decoded one at a time. `--tokens` keeps the first N tokens (0: all). `--window N` cuts the text
  into sequences of N tokens, each starting with the tokenizer's BOS and a fresh KV cache (a model trained on
  short windows then stays within the positions it was trained on).
- sampled: prompts are BOS + the first `--prompt-tokens` tokens of held-out passages; each is continued for
  `--new-tokens` tokens at `--temp`, seeded per prompt (seed + prompt number). The prompt's tokens are in the
  trace too (kind 0), the generated ones are kind 1.

`--part` picks the passages: "tune" the first half of the held-out text (by tokens for forced, by passages for
sampled), "report" the second half, "all" everything; tuning a policy on one part and reporting it on the other
keeps the reported figures honest.

The .npz holds: ids [T, L, k] int16 (the experts each token used per layer, ascending), preds [T, L, D, k] int16
(preds[t, l, d-1] = layer l+d's experts as predicted from layer l's input; -1 where l+d is past the last layer),
tokens [T], seq [T] (sequence number: the cache replay runs sequences back to back, the reuse statistics stop at
their boundaries), kind [T] (0 prompt / forced, 1 generated) and meta (a JSON string: model, mode, experts...).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.models.switch_layers import SwitchGLU
from mlx_lm.sample_utils import make_sampler

from moed.daemon.engine.prefetch import Router, find_router
from moed.daemon.testmodel.split import heldout_passages, heldout_text


class Recorder(nn.Module):
    """Stands in for one SwitchGLU: computes with it, and keeps the routing and the predictions of each call."""

    def __init__(self, pos: int, original: SwitchGLU, routers: list[Router | None], depth: int):
        super().__init__()
        self._pos, self._original, self._routers, self._depth = pos, original, routers, depth
        self._log = _Log()  # a plain object: nn.Module would keep a list as a child item
        self.freeze()

    @property
    def calls(self) -> list[tuple[mx.array, list[mx.array | None]]]:
        """Per call since the last `collect`: the indices and the predictions by depth (None: no router)."""
        return self._log.calls

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        preds = []
        for d in range(1, self._depth + 1):
            j = self._pos + d
            r = self._routers[j] if j < len(self._routers) else None
            if r is None:
                preds.append(None)
                continue
            logits = r.gate(x)  # [..., E]
            preds.append(mx.argpartition(-logits, kth=r.k - 1, axis=-1)[..., : r.k])
        self.calls.append((indices, preds))
        return self._original(x, indices)


class _Log:
    def __init__(self) -> None:
        self.calls: list[tuple[mx.array, list[mx.array | None]]] = []


def attach(model: nn.Module, config: dict, depth: int) -> list[Recorder]:
    """Replace every SwitchGLU of `model` with a Recorder (in layer order); returns them."""
    found = [(path, m) for path, m in model.named_modules() if isinstance(m, SwitchGLU)]
    found.sort(key=lambda pm: [int(n) for n in re.findall(r"\d+", pm[0])])
    modules = dict(model.named_modules())
    parents = [modules[path.rpartition(".")[0]] for path, _ in found]
    routers = [find_router(p, config) for p in parents]
    recorders = []
    for pos, ((path, original), parent) in enumerate(zip(found, parents)):
        rec = Recorder(pos, original, routers, depth)
        setattr(parent, path.rpartition(".")[2], rec)
        recorders.append(rec)
    return recorders


def collect(recorders: list[Recorder], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The recorded calls as ids [T, L, k] (sorted per row) and preds [T, L, D, k] (-1: no prediction);
    clears them."""
    ids, preds = [], []
    for rec in recorders:
        layer_ids, layer_preds = [], []
        for indices, pr in rec.calls:
            idx = np.array(indices).reshape(-1, indices.shape[-1])  # [T_call, k]
            k = idx.shape[-1]
            layer_ids.append(np.sort(idx, axis=-1))
            per_d = [np.sort(np.array(p).reshape(-1, p.shape[-1]), axis=-1) if p is not None
                     else np.full((idx.shape[0], k), -1) for p in pr]
            layer_preds.append(np.stack(per_d, axis=1) if per_d else np.zeros((idx.shape[0], 0, k)))
        rec.calls.clear()
        ids.append(np.concatenate(layer_ids))
        preds.append(np.concatenate(layer_preds))
    return (np.stack(ids, axis=1).astype(np.int16),
            np.stack(preds, axis=1).reshape(len(ids[0]), len(ids), depth, -1).astype(np.int16))


def forced(model, tokens: list[int], chunk: int) -> None:
    """Run `tokens` through the model in prefill chunks with a KV cache (the recorders keep the routing)."""
    cache = make_prompt_cache(model)
    for start in range(0, len(tokens), chunk):
        logits = model(mx.array(tokens[start : start + chunk])[None], cache=cache)
        mx.eval(logits, [c.state for c in cache])


def sample(model, prompt: list[int], new_tokens: int, temp: float, seed: int) -> list[int]:
    """Continue `prompt` by `new_tokens` tokens at `temp` (seeded); returns the generated tokens. The recorders see
    the prompt as one call, then one call per generated token but the last (never fed back)."""
    mx.random.seed(seed)
    sampler = make_sampler(temp=temp)
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]
    out = []
    for i in range(new_tokens):
        tok = sampler(logits)  # [1]
        out.append(int(tok.item()))
        if i + 1 < new_tokens:
            logits = model(tok[None], cache=cache)[:, -1, :]
    return out


def part_of(items: list, part: str) -> list:
    half = len(items) // 2
    return {"all": items, "tune": items[:half], "report": items[half:]}[part]


def record(ckpt: str, mode: str, *, tokens: int = 0, window: int = 0, chunk: int = 256, depth: int = 3,
           prompts: int = 8, prompt_tokens: int = 24, new_tokens: int = 96, temp: float = 0.8, seed: int = 0,
           part: str = "all") -> dict[str, np.ndarray | str]:
    """A trace of `ckpt` (see the module docstring); returns the arrays the .npz holds."""
    model, tokenizer = load(ckpt)
    config = json.loads((Path(ckpt) / "config.json").read_text())
    recorders = attach(model, config, depth)
    t0 = time.perf_counter()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if mode == "forced":
        text = part_of(tokenizer.encode(heldout_text(), add_special_tokens=False), part)
        text = text[:tokens] if tokens else text
        step = window - len(bos) if window else len(text)
        pieces = [bos + text[i : i + step] for i in range(0, len(text), step)]
        for piece in pieces:
            forced(model, piece, chunk)
        ids, preds = collect(recorders, depth)
        toks = [t for piece in pieces for t in piece]
        seq = np.array([n for n, piece in enumerate(pieces) for _ in piece], np.int32)
        kind = np.zeros(len(toks), np.uint8)
    elif mode == "sampled":
        passages = [p for p in part_of(heldout_passages(), part)
                    if len(tokenizer.encode(p, add_special_tokens=False)) >= prompt_tokens][:prompts]
        parts, toks, seq, kind = [], [], [], []
        for n, passage in enumerate(passages):
            prompt = bos + tokenizer.encode(passage, add_special_tokens=False)[:prompt_tokens]
            gen = sample(model, prompt, new_tokens, temp, seed + n)
            parts.append(collect(recorders, depth))
            fed = prompt + gen[:-1]
            toks += fed
            seq += [n] * len(fed)
            kind += [0] * len(prompt) + [1] * (len(gen) - 1)
        ids, preds = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        seq, kind = np.array(seq, np.int32), np.array(kind, np.uint8)
    else:
        raise ValueError(f"mode {mode!r}: expected forced or sampled")
    meta = {"model": str(ckpt), "model_type": config.get("model_type"), "mode": mode, "part": part,
            "window": window, "bos": bool(bos),
            "experts": int(config.get("num_experts", config.get("num_local_experts", 0))), "k": int(ids.shape[-1]),
            "layers": int(ids.shape[1]), "depth": depth, "tokens": int(ids.shape[0]), "temp": temp, "seed": seed,
            "seconds": round(time.perf_counter() - t0, 1)}
    return {"ids": ids, "preds": preds, "tokens": np.array(toks, np.int32), "seq": seq, "kind": kind,
            "meta": json.dumps(meta)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--mode", choices=("forced", "sampled"), default="forced")
    ap.add_argument("--part", choices=("all", "tune", "report"), default="all")
    ap.add_argument("--tokens", type=int, default=0, help="forced: keep the first N tokens (0: all)")
    ap.add_argument("--window", type=int, default=0,
                    help="forced: sequences of at most N tokens, BOS included, each with a fresh KV cache (0: one)")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    trace = record(a.ckpt, a.mode, tokens=a.tokens, window=a.window, chunk=a.chunk, depth=a.depth,
                   prompts=a.prompts, prompt_tokens=a.prompt_tokens, new_tokens=a.new_tokens, temp=a.temp,
                   seed=a.seed, part=a.part)
    np.savez_compressed(a.out, **trace)
    print(trace["meta"])


if __name__ == "__main__":
    main()
