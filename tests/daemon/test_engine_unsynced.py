"""Layers whose experts are all resident run without a host synchronisation (ExpertCache.lookup/defer), and stay
exact: at a full budget, under eviction of a once fully resident layer, and with steps built ahead of evaluation
as mlx-lm's pipelined generation loop does."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.models.cache import make_prompt_cache

from moed.daemon.bench.workload import corpus_tokens
from moed.daemon.config import engine_config
from moed.daemon.engine.model import load_engine
from moed.daemon.store.format import read_manifest


def assert_same_logits(ref, eng, tokens, before_step=None) -> None:
    """Teacher-force `tokens` one per step through mlx-lm's model and moed's; every step's logits bit-equal.
    `before_step(i)` runs before step i."""
    c_ref, c_moe = make_prompt_cache(ref), make_prompt_cache(eng.model)
    for i, t in enumerate(tokens):
        if before_step is not None:
            before_step(i)
        assert mx.array_equal(ref(mx.array([[t]]), cache=c_ref), eng.model(mx.array([[t]]), cache=c_moe)).item()


@pytest.fixture(scope="module")
def setup(model_dir):
    ref, tok = mlx_load(str(model_dir("qwen3_moe", "mlx")))
    return model_dir("qwen3_moe", "store-mlx"), ref, corpus_tokens(tok, 40)


def test_full_budget_needs_no_sync_and_counts_every_call(setup):
    store, ref, tokens = setup
    m = read_manifest(store)
    # preloads every expert in the background
    with load_engine(engine_config(store, cache_budget="100%", read_mode="buffered")) as eng:
        eng.cache.wait_loads()
        assert [eng.cache.lookup(i, layer.num_experts) for i, layer in enumerate(m.layers)] == \
            [i * layer.num_experts for i, layer in enumerate(m.layers)]  # preloaded in order: bank rows, no table
        eng.cache.reset_stats()
        c_ref, c_moe = make_prompt_cache(ref), make_prompt_cache(eng.model)
        assert mx.array_equal(ref(mx.array(tokens[:8])[None], cache=c_ref),
                              eng.model(mx.array(tokens[:8])[None], cache=c_moe)).item()
        for t in tokens[8:24]:
            assert mx.array_equal(ref(mx.array([[t]]), cache=c_ref), eng.model(mx.array([[t]]), cache=c_moe)).item()
        eng.cache.flush()
        st = eng.cache.stats()
        calls = len(m.layers) * (1 + 16)
        assert st.acquires == 0 and st.misses == 0 and st.unsynced == calls
        assert st.hits >= calls  # at least one distinct expert per call (a prefill call uses several)
        used = eng.cache.usage()
        assert len(used) > len(m.layers) and all(layer < len(m.layers) for layer, _ in used)


def test_layers_look_up_again_when_the_cache_changes(setup):
    """A resident layer keeps its lookup answer between calls (no per-call lookup), but not across a change of the
    cache's epoch: switching the no-sync path off, or evicting, sends the layer back to the synchronised path."""
    store, ref, tokens = setup
    m = read_manifest(store)
    with load_engine(engine_config(store, cache_budget="100%", read_mode="buffered")) as eng:
        eng.cache.wait_loads()
        lookups = []
        real = eng.cache.lookup
        eng.cache.lookup = lambda *a: lookups.append(a[0]) or real(*a)

        def before(i):
            if i == 2:
                assert sorted(lookups) == list(range(len(m.layers)))  # once per layer, at the first step
                eng.cache.flush()
                assert eng.cache.stats().acquires == 0
                eng.cache.unsynced = False  # from step 2 on, every layer synchronises
        assert_same_logits(ref, eng, tokens[:4], before_step=before)
        assert eng.cache.stats().acquires == 2 * len(m.layers)


def test_routing_is_read_back_in_gathered_blocks_and_counted_once(setup):
    """Unsynced routing is gathered on the device every GATHER_STEPS steps (with a later step) and read back per
    block: an unforced flush counts whole blocks only, a forced one the rest; every call is counted exactly once,
    and the usage equals that of reading each step back as it comes."""
    from moed.daemon.engine.unsynced import GATHER_STEPS

    store, ref, tokens = setup
    n_layers = len(read_manifest(store).layers)
    steps = 2 * GATHER_STEPS + 3
    usages = []
    for per_step in (True, False):
        with load_engine(engine_config(store, cache_budget="100%", read_mode="buffered")) as eng:
            eng.cache.wait_loads()
            eng.cache.reset_stats()
            seen = []

            def before(i):
                if per_step:
                    eng.cache.flush()  # forced: everything computed so far, now
                elif i == GATHER_STEPS + 2:
                    eng.cache.flush(keep=1, force=False)
                    seen.append(eng.cache.stats().unsynced)
            assert_same_logits(ref, eng, tokens[:steps], before_step=before)
            if not per_step:  # steps 0..G-1 were gathered at step G (computed): one block counted, no more
                assert seen == [GATHER_STEPS * n_layers]
            eng.cache.flush()
            st = eng.cache.stats()
            assert st.unsynced == steps * n_layers and st.acquires == 0
            usages.append(eng.cache.usage())
    assert usages[0] == usages[1]


def test_eviction_from_a_resident_layer_stays_exact(setup):
    store, ref, tokens = setup
    m = read_manifest(store)
    e0 = m.layers[0].num_experts
    with load_engine(engine_config(store, cache_budget=str((e0 + 4) * m.expert_bytes), read_mode="buffered")) as eng:
        eng.cache.prefetch(0, np.arange(e0)[::-1])  # layer 0 wholly resident: it starts unsynced
        eng.cache.wait_loads()
        assert isinstance(eng.cache.lookup(0, e0), mx.array)  # out of order in the bank: through the slot table
        assert_same_logits(ref, eng, tokens[:24])
        eng.cache.flush()
        st = eng.cache.stats()
        assert st.unsynced > 0 and st.acquires > 0 and st.evictions > 0


def test_steps_built_ahead_of_evaluation_stay_exact(setup):
    """Two steps' graphs are built before either is evaluated (mlx-lm's async pipelining)."""
    store, ref, tokens = setup
    with load_engine(engine_config(store, cache_budget="100%", read_mode="buffered")) as eng:
        eng.cache.wait_loads()
        c_ref, c_moe = make_prompt_cache(ref), make_prompt_cache(eng.model)
        for a, b in zip(tokens[:16:2], tokens[1:17:2]):
            want = [ref(mx.array([[a]]), cache=c_ref), ref(mx.array([[b]]), cache=c_ref)]
            got = [eng.model(mx.array([[a]]), cache=c_moe), eng.model(mx.array([[b]]), cache=c_moe)]
            mx.eval(got)
            assert all(mx.array_equal(x, y).item() for x, y in zip(want, got))
        assert eng.cache.stats().acquires == 0


def test_refilling_a_slot_waits_for_the_unsynced_call_reading_it(setup):
    """A step is built (its last layer unsynced, lazily reading that layer's slots), then background prefetches
    take every evictable slot, those included, before the step is evaluated."""
    store, ref, tokens = setup
    m = read_manifest(store)
    last, e_last = len(m.layers) - 1, m.layers[-1].num_experts
    # room for three steps of the other layers beside the whole last layer
    ec = engine_config(store, cache_budget=str((e_last + 6 * last) * m.expert_bytes), read_mode="buffered",
                       prefetch_depth=0, cache_policy="lru")
    with load_engine(ec) as eng:
        eng.cache.prefetch(last, np.arange(e_last))
        eng.cache.wait_loads()
        c_ref, c_moe = make_prompt_cache(ref), make_prompt_cache(eng.model)
        for t in tokens[:2]:  # a first step lets the last layer run, which ends its prefetch protection
            mx.eval(ref(mx.array([[t]]), cache=c_ref), eng.model(mx.array([[t]]), cache=c_moe))
        want = ref(mx.array([tokens[2:3]]), cache=c_ref)
        got = eng.model(mx.array([tokens[2:3]]), cache=c_moe)  # lazy: layers 0..last-1 synced, `last` not
        assert eng.cache.lookup(last, e_last) is not None
        for layer in range(last):
            eng.cache.prefetch(layer, np.arange(m.layers[layer].num_experts))
        eng.cache.wait_loads()
        assert eng.cache.lookup(last, e_last) is None  # its slots were taken
        assert mx.array_equal(want, got).item()


def test_live_resize_between_steps_stays_exact(setup):
    """Shrinking and growing within the allocation (no reallocation) and past it, between decode steps, with
    wholly resident layers going unsynced and back."""
    store, ref, tokens = setup
    m = read_manifest(store)
    total = m.total_expert_bytes
    with load_engine(engine_config(store, cache_budget="100%", read_mode="buffered")) as eng:
        eng.cache.wait_loads()
        views = eng.cache.views
        plan = {4: total // 4, 10: total // 8, 16: total // 2, 22: total, 28: total // 4}

        def resize(i: int) -> None:
            if i in plan:
                eng.cache.resize(plan[i])
                assert eng.cache.views is views  # all within the start allocation
                assert eng.cache.stats().used_bytes <= plan[i]

        assert_same_logits(ref, eng, tokens[:34], resize)
        eng.cache.flush()
        st = eng.cache.stats()
        assert st.unsynced > 0 and st.acquires > 0 and st.misses > 0


def test_direct_reads_land_straight_in_page_aligned_slots(tmp_path):
    """With 4 KiB-multiple expert tensors the cache's slot rows are page-aligned, so direct reads go straight into
    them (no staging copy), and generation stays exact against mlx-lm."""
    import os
    import shutil
    import tempfile
    import uuid
    from pathlib import Path

    from moed.daemon.store.convert import convert
    from moed.daemon.testmodel import make_test_model

    base = Path("/var/tmp") if os.path.isdir("/var/tmp") else Path(tempfile.gettempdir())  # a disk, not tmpfs
    root = base / f"moed-test-aligned-{uuid.uuid4().hex}"
    try:
        make_test_model(root / "ckpt", size="tiny", hidden=512, expert_inter=256)  # 64 KiB / 4 KiB tensors
        convert(root / "ckpt", root / "store", bits=4, group_size=64)
        ref, tok = mlx_load(str(root / "ckpt"))
        with load_engine(engine_config(root / "store", cache_budget="25%", read_mode="direct"), preload=False) as eng:
            tokens = corpus_tokens(tok, 12)
            assert_same_logits(ref, eng, tokens)
            st = eng.reader.stats()
            if st.mode != "direct":
                pytest.skip(f"O_DIRECT is not available here ({st.mode})")
            assert st.reads > 0 and st.scatter_reads == st.reads
        # memory the kernel will not DMA into (as a GPU's managed memory may be): reads go through the buffers
        import errno

        from moed.daemon.store import reader as reader_mod

        real = reader_mod._PREADV

        def no_dma_into_targets(fd, bufs, offset):
            if len(bufs) > 1:
                raise OSError(errno.EFAULT, "Bad address")
            return real(fd, bufs, offset)

        reader_mod._PREADV = no_dma_into_targets
        eng = load_engine(engine_config(root / "store", cache_budget="25%", read_mode="direct"), preload=False)
        try:
            assert_same_logits(ref, eng, tokens)
            st = eng.reader.stats()
            assert st.reads > 0 and st.scatter_reads == 0 and st.errors == 0
        finally:
            reader_mod._PREADV = real
            eng.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
