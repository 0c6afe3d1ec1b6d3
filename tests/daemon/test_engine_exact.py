"""Streaming generation is token-identical to mlx-lm on the same checkpoint, at any cache budget.

For each tested architecture, from both source layouts (mlx-lm 4-bit, and Hugging Face bf16 quantized by
`moed convert`, compared with `mlx_lm.convert` of the same checkpoint), at budgets of 100 %, 25 % and one
expert-layer's worth: 64 greedy tokens equal mlx-lm's, and first-step logits match. Teacher forcing on real text
at a small budget makes routing vary step to step, so evictions and reloads are exercised too.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_load
from mlx_lm.generate import stream_generate
from mlx_lm.models.cache import make_prompt_cache

from moed.daemon.config import engine_config
from moed.daemon.engine.model import load_engine
from moed.daemon.store.format import read_manifest

PROMPT = "We hold these truths to be self-evident, that all men are created equal"
ARCHES = ("qwen3_moe", "mixtral", "qwen2_moe")
SOURCES = {"mlx": "mlx", "hf": "hf-ref"}  # store source -> the mlx-lm checkpoint it must match


def budgets(store) -> dict[str, int]:
    m = read_manifest(store)
    return {"100%": m.total_expert_bytes, "25%": m.total_expert_bytes // 4,
            "one-layer": m.layers[0].num_experts * m.expert_bytes}


def greedy_tokens(model, tokenizer, n=64) -> list[int]:
    ids = tokenizer.encode(PROMPT)
    return [r.token for r in stream_generate(model, tokenizer, ids, max_tokens=n)]


@pytest.fixture(scope="module")
def reference(model_dir):
    memo = {}

    def get(arch, source):
        if (arch, source) not in memo:
            model, tok = mlx_load(str(model_dir(arch, SOURCES[source])))
            memo[arch, source] = (model, tok, greedy_tokens(model, tok))
        return memo[arch, source]

    return get


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("arch", ARCHES)
def test_greedy_tokens_match_mlx_lm_at_every_budget(model_dir, reference, arch, source):
    ref_model, _, ref_tokens = reference(arch, source)
    assert len(ref_tokens) == 64
    store = model_dir(arch, f"store-{source}")
    for name, budget in budgets(store).items():
        with load_engine(engine_config(store, cache_budget=str(budget), read_mode="buffered")) as eng:
            got = greedy_tokens(eng.model, eng.tokenizer)
            assert got == ref_tokens, f"{arch}/{source} at budget {name}: tokens differ"
            ids = mx.array(eng.tokenizer.encode(PROMPT))[None]
            np.testing.assert_allclose(np.array(eng.model(ids).astype(mx.float32)),
                                       np.array(ref_model(ids).astype(mx.float32)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHES)
def test_teacher_forced_logits_match_under_eviction(model_dir, reference, arch):
    from moed.daemon.bench.workload import corpus_tokens

    ref_model, tok, _ = reference(arch, "mlx")
    store = model_dir(arch, "store-mlx")
    m = read_manifest(store)
    # fewer slots than one token needs
    with load_engine(engine_config(store, cache_budget=str(3 * m.expert_bytes), read_mode="direct")) as eng:
        tokens = corpus_tokens(tok, 48)
        c_ref, c_moe = make_prompt_cache(ref_model), make_prompt_cache(eng.model)
        a = ref_model(mx.array(tokens[:16])[None], cache=c_ref)
        b = eng.model(mx.array(tokens[:16])[None], cache=c_moe)
        assert mx.array_equal(a, b).item()
        for t in tokens[16:]:
            a = ref_model(mx.array([[t]]), cache=c_ref)
            b = eng.model(mx.array([[t]]), cache=c_moe)
            assert mx.array_equal(a, b).item()
        st = eng.cache.stats()
        assert st.evictions > 0 and st.used_bytes <= st.budget_bytes


def test_expert_weights_are_never_materialised(model_dir):
    store = model_dir("qwen3_moe", "store-mlx")
    with load_engine(engine_config(store, cache_budget="25%", read_mode="buffered")) as eng:
        names = [k for k, _ in tree_flatten(eng.model.parameters())]
        assert names and not any("switch_mlp" in k or ".experts." in k for k in names)
        dense = sum(v.nbytes for _, v in tree_flatten(eng.model.parameters()))
        assert eng.dense_bytes == dense


def test_prefill_reads_each_expert_at_most_once_per_chunk(model_dir):
    from collections import Counter

    store = model_dir("qwen3_moe", "store-mlx")
    eng = load_engine(engine_config(store, read_mode="buffered"), preload=False)  # demand reads only
    reads: Counter = Counter()
    inner = eng.reader.read

    def counting(layer, expert, sink, **kw):
        reads[layer, expert] += 1
        return inner(layer, expert, sink, **kw)

    eng.reader.read = counting
    try:
        eng.model(mx.array(list(range(64)))[None])
        assert reads and max(reads.values()) == 1
        n_layers = len(read_manifest(store).layers)
        assert {layer for layer, _ in reads} == set(range(n_layers))
    finally:
        eng.close()
