"""Speculative prefetch and warm restarts: still exact, counted, and they make the cache hit more."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.models.cache import make_prompt_cache

from moed.daemon.bench.workload import corpus_tokens
from moed.daemon.config import engine_config
from moed.daemon.engine.model import load_engine


@pytest.fixture(scope="module")
def small(model_dir):
    return model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")


def forced(model, tokens, prompt=8):
    cache = make_prompt_cache(model)
    outs = [model(mx.array(tokens[:prompt])[None], cache=cache)]
    for t in tokens[prompt:]:
        outs.append(model(mx.array([[t]]), cache=cache))
    mx.eval(outs)
    return outs


@pytest.mark.parametrize("depth,policy", [(0, "lru"), (1, "lfu"), (3, "lfu"), (2, "lru")])
def test_prefetch_keeps_logits_exact(small, depth, policy):
    ckpt, store = small
    ref, tok = mlx_load(str(ckpt))
    tokens = corpus_tokens(tok, 40)
    ec = engine_config(store, cache_budget="25%", read_mode="direct", prefetch_depth=depth, cache_policy=policy)
    with load_engine(ec) as eng:
        for a, b in zip(forced(ref, tokens), forced(eng.model, tokens)):
            assert mx.array_equal(a, b).item()
        st, ps = eng.cache.stats(), eng.prefetcher.stats()
        if depth:
            assert st.prefetches > 0 and ps.needed > 0 and 0 < ps.accuracy <= 1
        else:
            assert st.prefetches == 0 and ps.predicted == 0


def test_depth_can_change_at_run_time(small):
    _, store = small
    with load_engine(engine_config(store, cache_budget="25%", prefetch_depth=0)) as eng:
        eng.prefetcher.set_depth(2)
        forced(eng.model, list(range(20)))
        assert eng.cache.stats().prefetches > 0
        with pytest.raises(ValueError):
            eng.prefetcher.set_depth(-1)


def first_tokens_hit_rate(eng, tokens) -> float:
    eng.cache.reset_stats()
    forced(eng.model, tokens, prompt=1)
    return eng.cache.stats().hit_rate


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from moed.daemon.store.convert import convert
    from moed.daemon.testmodel import make_test_model

    base = tmp_path_factory.mktemp("small")
    ckpt = make_test_model(base / "ckpt", size="small", dtype="float32")
    convert(ckpt, base / "store")
    return ckpt, base / "store"


def test_warm_restart_refills_the_cache_in_order_of_use(small_store, tmp_path):
    ckpt, store = small_store
    _, tok = mlx_load(str(ckpt))
    tokens = corpus_tokens(tok, 96)
    usage = tmp_path / "usage.json"
    a = load_engine(engine_config(store, cache_budget="25%", prefetch_depth=0))
    forced(a.model, tokens)
    a.save_state(usage)
    counts = sorted(a.cache.usage().values(), reverse=True)
    cut = counts[a.cache.capacity - 1] if len(counts) >= a.cache.capacity else 0.0
    top = [k for k, c in a.cache.usage().items() if c > cut]  # strictly above the boundary (ties may go either way)
    a.close()
    doc = json.loads(usage.read_text())
    assert doc["format"] == "moed-expert-usage" and len(doc["usage"]) > 0

    cold = load_engine(engine_config(store, cache_budget="25%", prefetch_depth=0))
    # the first 8 tokens: later the cold cache catches up, the sooner the shorter the LFU half-life
    cold_rate = first_tokens_hit_rate(cold, tokens[:8])
    cold.close()
    with load_engine(engine_config(store, cache_budget="25%", prefetch_depth=0)) as warm:
        started = warm.warm_start(usage)
        assert started == min(warm.cache.capacity, len(doc["usage"]))
        assert top and all(warm.cache.contains(layer, e) for layer, e in top)
        warm_rate = first_tokens_hit_rate(warm, tokens[:8])
        assert warm_rate > cold_rate + 0.05, (warm_rate, cold_rate)


def test_bad_usage_files_start_cold(small, tmp_path):
    _, store = small
    with load_engine(engine_config(store, cache_budget="25%")) as eng:
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        assert eng.warm_start(bad) == 0
        other = tmp_path / "other.json"
        other.write_text(json.dumps({"format": "moed-expert-usage", "version": 1, "store": "x", "usage": [[0, 0, 1]]}))
        assert eng.warm_start(other) == 0
        assert eng.warm_start(tmp_path / "missing.json") == 0
