"""Routing statistics of traces (routing_trace.py): expert load, reuse across tokens, co-occurrence across layers,
and the prefetcher's prediction recall; numpy only.

    python -m bench.routing_stats LABEL=TRACE.npz [LABEL=TRACE.npz ...] [--window 8] [--out stats.json]

Prints a markdown table, one column per trace (e.g. the trained fixture against a random-weight model); the JSON
holds the per-layer figures too. With U[t, l, e] = 1 when token t routed to expert e at layer l:

- load: per layer, the busiest expert's count over the mean count (1 = flat), the entropy of the load as a
  fraction of log E (1 = flat), and how many experts were never used; averaged over layers.
- reuse: per layer, the fraction of a token's k experts the previous token also used there (within a sequence;
  k/E for independent uniform routing), and the fraction used by any of the last `window` tokens.
- co-occurrence: C_l = U_l^T U_{l+1} counted on the first half of the tokens, tested on the second half: the
  recall of the top-k layer-(l+1) experts ranked by co-occurrence with the token's layer-l experts (a predictor
  that needs no router, the same budget as the router's top-k), and the coverage of the union of each layer-l
  expert's top-2 co-occurring experts (with its mean size). The mutual information between a layer-l expert and
  a layer-(l+1) expert of the same token (pairs weighted equally), in bits, beside the same figure with layer l+1's
  tokens shuffled: the finite-sample bias, which a real dependence must clear.
- router recall: of the experts a layer used, the fraction moed's prefetcher predicted from d layers before (the
  next layers' routers applied to this layer's input), d = 1..D: the prefetch accuracy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from .routing_io import Trace, load_trace


def onehot(trace: Trace) -> np.ndarray:
    """U [T, L, E] bool."""
    u = np.zeros((trace.tokens, trace.layers, trace.experts), dtype=bool)
    t, l, _ = np.indices(trace.ids.shape)
    u[t, l, trace.ids] = True
    return u


def load_stats(u: np.ndarray) -> dict:
    counts = u.sum(axis=0).astype(np.float64)  # [L, E]
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1) / np.log(u.shape[2])
    return {"max_over_mean": (counts.max(1) / counts.mean(1)).tolist(), "entropy_frac": ent.tolist(),
            "never_used": (counts == 0).sum(1).tolist()}


def reuse_stats(u: np.ndarray, seq: np.ndarray, k: int, window: int) -> dict:
    prev = np.flatnonzero(seq[1:] == seq[:-1]) + 1  # tokens whose previous token is in the same sequence
    same_prev = (u[prev] & u[prev - 1]).sum(-1) / k  # [n, L]
    cs = np.concatenate([np.zeros((1,) + u.shape[1:], np.int64), np.cumsum(u, axis=0)])  # cs[t] = sum U[:t]
    ok = np.array([t for t in range(window, len(seq)) if seq[t - window] == seq[t]], dtype=np.int64)
    recent = (cs[ok] - cs[ok - window]) > 0  # used in any of the last `window` tokens
    in_window = (recent & u[ok]).sum(-1) / k if len(ok) else np.zeros((0, u.shape[1]))
    return {"prev": same_prev.mean(0).tolist() if len(prev) else [], "window": window,
            "in_window": in_window.mean(0).tolist() if len(ok) else []}


def _mi_bits(joint: np.ndarray) -> float:
    joint = joint / joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log2(joint[nz] / (px @ py)[nz])))


def cooc_stats(u: np.ndarray, k: int, seed: int = 0) -> dict:
    half = u.shape[0] // 2
    fit, test = u[:half].astype(np.float64), u[half:].astype(np.float64)
    rng = np.random.default_rng(seed)
    recall, coverage, size, mi, mi_shuffled = [], [], [], [], []
    for layer in range(u.shape[1] - 1):
        c = fit[:, layer].T @ fit[:, layer + 1]  # [E, E]
        scores = test[:, layer] @ c + rng.random((test.shape[0], u.shape[2])) * 1e-6  # ties broken at random
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        nxt = test[:, layer + 1]
        recall.append(float(np.take_along_axis(nxt, top, 1).sum(1).mean() / k))
        top2 = np.argsort(-(c + rng.random(c.shape) * 1e-6), axis=1)[:, :2]
        m = np.zeros_like(c)
        np.put_along_axis(m, top2, 1.0, axis=1)
        union = (test[:, layer] @ m) > 0
        coverage.append(float((union * nxt).sum(1).mean() / k))
        size.append(float(union.sum(1).mean()))
        full = u.astype(np.float64)
        mi.append(_mi_bits(full[:, layer].T @ full[:, layer + 1]))
        mi_shuffled.append(_mi_bits(full[:, layer].T @ full[rng.permutation(len(full)), layer + 1]))
    return {"topk_recall": recall, "top2_coverage": coverage, "top2_union_size": size, "mi_bits": mi,
            "mi_bits_shuffled": mi_shuffled}


def router_recall(trace: Trace, u: np.ndarray) -> list[float]:
    """Per depth d: mean over (token, layer) with a prediction of |predicted & used| / k."""
    out = []
    for d in range(1, trace.depth + 1):
        pred = trace.preds[:, : trace.layers - d, d - 1]  # [T, L-d, k] predictions for layers d..L-1
        if pred.size == 0 or (pred < 0).all():
            break
        used = u[:, d:]  # [T, L-d, E]
        hit = np.take_along_axis(used, np.clip(pred, 0, None), axis=2) & (pred >= 0)
        out.append(float(hit.sum(-1).mean() / trace.k))
    return out


def stats(trace: Trace, window: int = 8) -> dict:
    u = onehot(trace)
    return {"tokens": trace.tokens, "layers": trace.layers, "experts": trace.experts, "k": trace.k,
            "load": load_stats(u), "reuse": reuse_stats(u, trace.seq, trace.k, window),
            "cooc": cooc_stats(u, trace.k), "router_recall": router_recall(trace, u), "meta": trace.meta}


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


ROWS = [  # (row label, how to get it from stats(), format)
    ("tokens x layers, E, k", lambda s: f"{s['tokens']} x {s['layers']}, {s['experts']}, {s['k']}", None),
    ("load: busiest / mean (mean over layers)", lambda s: _mean(s["load"]["max_over_mean"]), "{:.2f}"),
    ("load: entropy / log E", lambda s: _mean(s["load"]["entropy_frac"]), "{:.3f}"),
    ("experts never used (per layer)", lambda s: _mean(s["load"]["never_used"]), "{:.1f}"),
    ("reuse of the previous token's experts", lambda s: _mean(s["reuse"]["prev"]), "{:.1%}"),
    ("  (independent uniform routing: k/E)", lambda s: s["k"] / s["experts"], "{:.1%}"),
    ("used by one of the last W tokens", lambda s: _mean(s["reuse"]["in_window"]), "{:.1%}"),
    ("  (uniform: 1-(1-k/E)^W)", lambda s: 1 - (1 - s["k"] / s["experts"]) ** s["reuse"]["window"], "{:.1%}"),
    ("next layer: co-occurrence top-k recall", lambda s: _mean(s["cooc"]["topk_recall"]), "{:.1%}"),
    ("next layer: top-2 co-occurrence coverage", lambda s: _mean(s["cooc"]["top2_coverage"]), "{:.1%}"),
    ("  (its mean union size)", lambda s: _mean(s["cooc"]["top2_union_size"]), "{:.1f}"),
    ("adjacent-layer MI, bits", lambda s: _mean(s["cooc"]["mi_bits"]), "{:.3f}"),
    ("  (shuffled tokens: estimator bias)", lambda s: _mean(s["cooc"]["mi_bits_shuffled"]), "{:.3f}"),
    ("router prediction recall d=1 / 2 / 3", lambda s: " / ".join(f"{r:.1%}" for r in s["router_recall"]), None),
]


def table(results: dict[str, dict]) -> str:
    labels = list(results)
    lines = ["| statistic | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, get, fmt in ROWS:
        cells = [get(results[lab]) for lab in labels]
        cells = [c if fmt is None else fmt.format(c) for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+", help="LABEL=PATH.npz (several are concatenated as LABEL=A.npz+B.npz)")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    results = {}
    for spec in a.traces:
        label, _, paths = spec.rpartition("=")
        traces = [load_trace(p) for p in paths.split("+")]
        results[label or paths] = stats(traces[0] if len(traces) == 1 else Trace.concat(traces), a.window)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
