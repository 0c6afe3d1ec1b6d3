"""Speculative sampling keeps the model's distribution (chi-square tests over fixed seeds, so they cannot flake).

- The general rule (speculative_sample: accept with min(1, p/q), else sample norm(max(p - q, 0))) on a small
  vocabulary: drafts drawn from q, outputs distributed as p.
- The engine: the two tokens after a fixed context, drawn by verification passes whose drafts (greedy drafts from
  the model itself, accepted only when the keyed draw agrees) are sometimes accepted and sometimes not, over many
  seeds, against the probabilities mlx-lm's own model and sampler (top-k 4, temperature 1) give them.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from moed.daemon.engine.speculative import speculative_sample

ALPHA = 1e-3  # a correct sampler fails a test at this level once in a thousand seed sets; the seeds are fixed


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, x/2)."""
    a, z = dof / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    if z < a + 1:  # series for P, then 1 - P
        term = total = 1.0 / a
        n = a
        while term > total * 1e-15:
            n += 1
            term *= z / n
            total += term
        return max(0.0, 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a)))
    # continued fraction for Q (Lentz)
    b, c, d = z + 1 - a, 1e300, 1 / (z + 1 - a)
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > 1e-300 else 1e-300)
        c = b + an / c
        c = c if abs(c) > 1e-300 else 1e-300
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h


def chi_square(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom, cells expecting fewer than min_expected pooled into one."""
    n = counts.sum()
    expected = probs * n
    small = expected < min_expected
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def test_chi2_sf_matches_known_values():
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(18.307, 10) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(0.5, 4) == pytest.approx(0.9735, abs=1e-3)
    assert chi2_sf(100.0, 10) < 1e-15


P = np.array([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
Q = np.array([0.30, 0.10, 0.25, 0.05, 0.10, 0.20])


@pytest.mark.parametrize("q", [Q, np.eye(6)[1], P], ids=["general-q", "point-mass", "q-equals-p"])
def test_speculative_sample_outputs_are_distributed_as_p(q):
    n = 40_000
    drafts = np.random.default_rng(0).choice(6, size=n, p=q)
    tokens, accepted = speculative_sample(mx.array(np.tile(P, (n, 1)), dtype=mx.float32),
                                          mx.array(np.tile(q, (n, 1)), dtype=mx.float32),
                                          mx.array(drafts), mx.random.key(1))
    tokens, accepted = np.array(tokens), np.array(accepted)
    stat, dof = chi_square(np.bincount(tokens, minlength=6), P)
    assert chi2_sf(stat, dof) > ALPHA, (stat, np.bincount(tokens, minlength=6) / n)
    # a draft is accepted with probability sum(min(p, q)), and an accepted token is the draft
    assert accepted.mean() == pytest.approx(np.minimum(P, q).sum(), abs=0.01)
    assert (tokens[accepted] == drafts[accepted]).all()


def test_speculative_sample_rejects_a_draft_the_target_never_picks():
    p = np.array([[0.0, 0.5, 0.5]] * 1000)
    tokens, accepted = speculative_sample(mx.array(p, dtype=mx.float32), mx.array(np.eye(3)[[0] * 1000],
                                          dtype=mx.float32), mx.array([0] * 1000), mx.random.key(2))
    assert not np.array(accepted).any() and set(np.array(tokens).tolist()) <= {1, 2}


# -- the engine -------------------------------------------------------------------------------------------------
TOP_K, TEMP, SEEDS = 4, 1.0, range(500)
PROMPT = "We hold these truths to be self-evident, that all men are created equal"


def top_k_probs(logits: np.ndarray) -> np.ndarray:
    """mlx-lm's make_sampler(temp=1, top_k=4) as probabilities: the 4 largest logits, softmax."""
    z = logits.astype(np.float64) / TEMP
    keep = np.argsort(-z)[:TOP_K]
    p = np.zeros_like(z)
    p[keep] = np.exp(z[keep] - z[keep].max())
    return p / p.sum()


def test_sampled_speculative_tokens_keep_the_models_distribution(model_dir):
    from mlx_lm import load as mlx_load
    from mlx_lm.models.cache import make_prompt_cache

    from moed.daemon.config import engine_config
    from moed.daemon.engine.drafters import ModelDrafter, load_draft_model
    from moed.daemon.engine.speculative_loop import prefill
    from moed.daemon.engine.model import load_engine
    from moed.daemon.engine.speculative import Speculator, make_picker
    from moed.daemon.speculation import SpeculationConfig

    ref_model, tok = mlx_load(str(model_dir("qwen3_moe", "mlx")))
    ids = tok.encode(PROMPT)
    t0 = int(mx.argmax(ref_model(mx.array(ids)[None])[0, -1]).item())
    ctx = ids + [t0]  # the context the pass continues: position 1 on (position 0 fixed, as if already emitted)

    def probs_after(context: list[int]) -> np.ndarray:
        return top_k_probs(np.array(ref_model(mx.array(context)[None])[0, -1].astype(mx.float32)))

    p1 = probs_after(ctx)
    cells = {(a, b): p1[a] * pb for a in np.flatnonzero(p1) for b, pb in enumerate(probs_after(ctx + [int(a)])) if pb}

    draft_path = model_dir("qwen3_moe", "mlx")
    draft = load_draft_model(draft_path, tok)  # the model itself, greedy: a point mass
    counts: dict[tuple[int, int], int] = {}
    passes = accepted = drafted = 0
    with load_engine(engine_config(model_dir("qwen3_moe", "store-mlx"), cache_budget="100%",
                                   read_mode="buffered")) as eng:
        prompt_cache = make_prompt_cache(eng.model)
        prefill(eng.model, prompt_cache, ids)  # the prompt; t0 is the pending token
        for seed in SEEDS:
            cache = make_prompt_cache(eng.model)
            for mine, done in zip(cache, prompt_cache):
                keys, values, offset = done.state
                mine.state = (mx.array(keys), mx.array(values), offset)  # a copy: caches are written in place
            spec = Speculator(SpeculationConfig(mode="draft", draft_model=str(draft_path), max_draft=3, adaptive=False),
                              ModelDrafter(draft))
            spec.start(ctx)
            picker = make_picker(TEMP, top_k=TOP_K, seed=seed)
            out: list[int] = []
            while len(out) < 2:
                out += spec.step(eng.model, cache, picker, 1 + len(out), 8)
            counts[out[0], out[1]] = counts.get((out[0], out[1]), 0) + 1
            passes, accepted, drafted = passes + spec.passes, accepted + spec.accepted_tokens, drafted + spec.draft_tokens
    assert drafted > accepted > 50, "both paths must be taken: drafts accepted and drafts rejected"
    assert set(counts) <= set(cells), "a token outside the sampler's top-k came out"
    keys = sorted(cells)
    stat, dof = chi_square(np.array([counts.get(k, 0) for k in keys]), np.array([cells[k] for k in keys]))
    assert dof >= 3 and chi2_sf(stat, dof) > ALPHA, (stat, dof)
