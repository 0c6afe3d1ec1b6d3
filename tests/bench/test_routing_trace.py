"""Routing traces: recording leaves the model's output alone, prefill and token-by-token decoding route alike,
sampled traces are laid out by sequence and reproducible, and the statistics are right on traces built to show
them."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from bench import routing_trace
from bench.routing_io import Trace, load_trace
from bench.routing_stats import stats, table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_checkpoint():
    """The trained fixture checkpoint (tests/fixtures/trained-moe), skipped where it is not in the checkout."""
    path = REPO / "tests" / "fixtures" / "trained-moe"
    if not (path / "config.json").exists():
        pytest.skip(f"the trained fixture is not in this checkout ({path})")
    return path


@pytest.fixture(scope="module")
def tiny(model_dir):
    return str(model_dir("qwen3_moe", "mlx"))


def test_recording_changes_nothing_and_prefill_routes_as_decode(tiny):
    from mlx_lm import load

    model, tok = load(tiny)
    toks = tok.encode("The quick brown fox jumps over the lazy dog, and then the dog sleeps.")[:16]
    plain = model(mx.array(toks)[None])
    recs = routing_trace.attach(model, {}, depth=2)
    assert len(recs) == len(model.layers)
    assert mx.array_equal(model(mx.array(toks)[None]), plain).item()
    for r in recs:
        r.calls.clear()
    routing_trace.forced(model, toks, chunk=len(toks))
    prefill, preds = routing_trace.collect(recs, 2)
    routing_trace.forced(model, toks, chunk=1)
    decode, preds1 = routing_trace.collect(recs, 2)
    assert prefill.shape == (len(toks), len(model.layers), 2)
    assert np.array_equal(prefill, decode) and np.array_equal(preds, preds1)
    assert (preds[:, -1] == -1).all() and (preds[:, -2, 1] == -1).all() and (preds[:, 0] >= 0).all()


def test_sampled_traces_are_by_sequence_and_seeded(tiny, tmp_path):
    kw = dict(prompts=2, prompt_tokens=6, new_tokens=5, temp=0.8, seed=3, depth=1)
    a = routing_trace.record(tiny, "sampled", **kw)
    b = routing_trace.record(tiny, "sampled", **kw)
    assert np.array_equal(a["ids"], b["ids"]) and np.array_equal(a["tokens"], b["tokens"])
    bos = int(json.loads(str(a["meta"]))["bos"])
    assert a["seq"].tolist() == [0] * (10 + bos) + [1] * (10 + bos)
    assert a["kind"].tolist() == ([0] * (6 + bos) + [1] * 4) * 2
    routing_trace.main([tiny, str(tmp_path / "f.npz"), "--tokens", "12", "--depth", "2", "--window", "5"])
    tr = load_trace(tmp_path / "f.npz")
    assert tr.depth == 2 and tr.experts == 8 and tr.meta["mode"] == "forced"
    step = 5 - bos  # text tokens per window
    assert tr.seq.tolist() == [n for n in range(-(-12 // step)) for _ in range(min(5, 12 - n * step + bos))]


def test_the_trained_fixture_records(trained_checkpoint):
    tr = routing_trace.record(str(trained_checkpoint), "forced", tokens=24, depth=1)
    bos = int(json.loads(tr["meta"])["bos"])  # the fixture's tokenizer has a BOS, which leads the sequence
    assert tr["ids"].shape[0] == 24 + bos and tr["ids"].shape[2] == 8


def _trace(ids: np.ndarray, experts: int, seq=None) -> Trace:
    t, layers, k = ids.shape
    preds = np.full((t, layers, 1, k), -1)
    preds[:, :-1, 0] = ids[:, 1:]  # a perfect predictor
    return Trace(ids, preds, np.zeros(t, np.int64) if seq is None else seq, np.zeros(t, np.int64), experts)


def test_statistics_of_built_traces():
    rng = np.random.default_rng(0)
    # layer 0 uniform at random; layer 1 = layer 0's experts shifted by one (fully determined by layer 0)
    l0 = np.array([np.sort(rng.choice(16, 2, replace=False)) for _ in range(400)])
    ids = np.stack([l0, np.sort((l0 + 1) % 16, axis=1)], axis=1)
    s = stats(_trace(ids, 16))
    assert s["cooc"]["topk_recall"][0] == 1.0
    assert s["cooc"]["mi_bits"][0] > s["cooc"]["mi_bits_shuffled"][0] + 1.0
    assert s["router_recall"] == [1.0]
    assert abs(s["reuse"]["prev"][0] - 2 / 16) < 0.05
    # the same experts every token, sequences of two: reuse only within a sequence
    same = np.tile(np.array([[[0, 1]]]), (6, 1, 1))
    s = stats(_trace(same, 4, seq=np.array([0, 0, 1, 1, 2, 2])), window=1)
    assert s["reuse"]["prev"] == [1.0] and s["load"]["never_used"] == [2]
    assert s["load"]["max_over_mean"] == [2.0] and abs(s["load"]["entropy_frac"][0] - 0.5) < 1e-9
    assert "| reuse of the previous token's experts | 100.0% |" in table({"same": s})
