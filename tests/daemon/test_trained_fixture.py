"""The committed trained fixture (tests/fixtures/trained-moe): mlx-lm loads it, it has the promised Qwen3-30B-A3B
expert layout and size, its held-out perplexity recomputed now matches its training record and is well below the
unigram baseline, it quotes held-out passages from its context, and moed's streaming engine at 25 % gives mlx-lm's greedy tokens on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load as mlx_load
from mlx_lm.generate import stream_generate

from moed.daemon.config import engine_config
from moed.daemon.engine.model import load_engine
from moed.daemon.store.format import read_manifest
from moed.daemon.testmodel.split import heldout_passages, heldout_text

MAX_BYTES = 30_000_000  # the limit for the 4-bit checkpoint folder


@pytest.fixture(scope="module")
def record(trained_checkpoint: Path) -> dict:
    return json.loads((trained_checkpoint / "training.json").read_text())


@pytest.fixture(scope="module")
def reference(trained_checkpoint: Path):
    return mlx_load(str(trained_checkpoint))


def test_the_layout_is_qwen3_30b_a3bs_experts_at_4_bits(trained_checkpoint: Path, reference):
    cfg = json.loads((trained_checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_moe"
    assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["norm_topk_prob"]) == (128, 8, True)
    assert cfg["decoder_sparse_step"] == 1 and cfg["mlp_only_layers"] == []
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 64
    model, _ = reference
    assert model.model.layers[0].mlp.switch_mlp.up_proj.bits == 4
    assert model.model.layers[0].mlp.switch_mlp.up_proj.weight.shape[0] == 128


def test_the_checkpoint_is_within_the_size_limit(trained_checkpoint: Path, record: dict):
    size = sum(p.stat().st_size for p in trained_checkpoint.iterdir() if p.is_file() and p.name != "README.md")
    assert size <= MAX_BYTES
    assert abs(size - record["checkpoint_bytes"]) < 4096  # training.json's own length may differ by a digit


def _heldout_perplexity(model, tokenizer, seq_len: int) -> float:
    """Teacher-forced on heldout_text() in consecutive windows of seq_len - 1 tokens, each after BOS."""
    ids = tokenizer.encode(heldout_text(), add_special_tokens=False)
    bos = tokenizer.bos_token_id
    width, nll, count = seq_len - 1, 0.0, 0
    for start in range(0, len(ids), width):
        window = ids[start:start + width]
        logits = model(mx.array([bos] + window[:-1])[None]).astype(mx.float32)[0]
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        nll -= float(mx.take_along_axis(logp, mx.array(window)[:, None], axis=-1).sum())
        count += len(window)
    return math.exp(nll / count)


def test_heldout_perplexity_matches_the_record_and_beats_the_unigram_baseline(reference, record: dict):
    model, tok = reference
    ppl = _heldout_perplexity(model, tok, record["train_config"]["seq_len"])
    assert ppl == pytest.approx(record["heldout_ppl_quantized"], rel=0.01)
    # With the 512-token BPE the training text is ~22K tokens. The third recipe trades text for quoting: 0.54x
    # the add-one unigram's held-out perplexity (the second reached 0.35x and could not quote); "well below" is
    # held at 0.6x.
    assert ppl < 0.6 * record["unigram_ppl"]


def test_the_fixture_continues_a_quoted_heldout_passage(reference, record: dict):
    """What speculation's quote workload relies on: after `passage SEP first-8-tokens`, the greedy continuation
    is the passage itself, on text the model never trained on."""
    model, tok = reference
    hits = total = 0
    for text in heldout_passages()[:4]:
        passage = tok.encode(text, add_special_tokens=False)[:56]
        prompt = [tok.bos_token_id] + passage + tok.encode("\n\n", add_special_tokens=False) + passage[:8]
        got = _greedy(model, tok, prompt, 48)
        hits += sum(a == b for a, b in zip(got, passage[8:]))
        total += len(passage[8:])
    assert hits / total > 0.8, f"quoted {hits}/{total} tokens of held-out passages"
    assert record["heldout_copy_accuracy_quantized"] > 0.9


def _greedy(model, tokenizer, prompt: list[int], n: int) -> list[int]:
    return [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=n)]


def test_streaming_engine_at_25_percent_gives_mlx_lms_greedy_tokens(trained_store: Path, reference):
    model, tok = reference
    passage = tok.encode(heldout_passages()[0], add_special_tokens=False)[:48]
    sep, bos = tok.encode("\n\n", add_special_tokens=False), [tok.bos_token_id]
    prompts = {"free": bos + passage[:24], "quote": bos + passage + sep + passage[:8]}
    want = {name: _greedy(model, tok, p, 32) for name, p in prompts.items()}
    budget = read_manifest(trained_store).total_expert_bytes // 4
    with load_engine(engine_config(trained_store, cache_budget=str(budget), read_mode="buffered")) as eng:
        for name, p in prompts.items():
            assert _greedy(eng.model, eng.tokenizer, p, 32) == want[name], f"{name}: tokens differ at 25 %"
        assert eng.cache.stats().evictions > 0
