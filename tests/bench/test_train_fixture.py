"""bench/train_fixture.py and its pieces on very small configurations: the batches hold what they promise, the
training forward pass is mlx-lm's, the balance term rewards balance, a few steps lower the loss, and the saved
4-bit checkpoint loads in mlx-lm with the expert layout asked for."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from bench import fixture_data as fd
from bench import fixture_model as fm
from bench import train_fixture as tf

TINY = fm.FixtureDims(hidden=64, layers=2, experts=8, top_k=2, expert_inter=64, heads=2, kv_heads=1, head_dim=32,
                      vocab=512, max_pos=256)


@pytest.fixture(scope="module")
def corpus() -> fd.Corpus:
    return fd.load_corpus(512)


def test_copy_rows_quote_their_span_after_the_separator(corpus):
    rng = np.random.default_rng(1)
    sep = list(corpus.separator)
    for _ in range(20):
        row = fd.copy_row(corpus, rng, 64)
        assert len(row) == 65 and row[0] == corpus.bos
        body = list(row[1:])
        # the row is span + sep + the span again + what followed it: some span length in [8, 32] fits
        quoted = [s for s in range(8, 33)
                  if body[s:s + len(sep)] == sep and body[:s] == body[s + len(sep):2 * s + len(sep)]]
        assert quoted


def test_random_rows_repeat_a_fresh_span_and_weigh_only_the_repeats(corpus):
    rng = np.random.default_rng(2)
    sep = list(corpus.separator)
    row, w = fd.random_row(corpus, rng, 64)
    other, _ = fd.random_row(corpus, rng, 64)
    assert len(row) == 65 and row[0] == corpus.bos and w.shape == (64,) and not np.array_equal(row, other)
    body = list(row[1:])
    unit = int(np.argmax(w))  # the first weighted target starts the first repeat
    assert unit >= 8 + len(sep) and body[unit - len(sep):unit] == sep
    assert body[unit:] == body[:64 - unit]  # the rest repeats the span and its separator
    assert (w[:unit] == 0).all() and (w[unit:] == 1).all() and (row[1:] >= 3).sum() >= unit - len(sep)


def test_training_batches_weigh_text_rows_and_random_rows_apart(corpus):
    rows, w = fd.training_batch(corpus, np.random.default_rng(0), 40, 32, 0.5, 0.5, 0.5, text_weight=0.25)
    assert rows.shape == (40, 33) and w.shape == (40, 32)
    text = np.all(w == 0.25, axis=1)
    assert 5 < text.sum() < 35 and all(set(np.unique(r)) <= {0.0, 1.0} for r in w[~text])


def test_batches_mix_copy_and_plain_rows_from_the_training_text(corpus):
    rows = fd.batch(corpus, np.random.default_rng(0), 6, 32, copy_fraction=0.0)
    assert rows.shape == (6, 33) and rows.dtype == np.int32 and (rows[:, 0] == corpus.bos).all()
    train = corpus.train.tobytes()
    assert all(r[1:].tobytes() in train for r in rows)  # plain rows are windows of the training tokens


def test_heldout_windows_score_every_heldout_token_once(corpus):
    inputs, targets = fd.heldout_windows(corpus, 64)
    assert inputs.shape == targets.shape and inputs.shape[1] == 63
    assert (inputs[:, 0] == corpus.bos).all()
    scored = targets[targets >= 0]
    assert np.array_equal(scored, corpus.heldout)
    assert np.array_equal(inputs[0, 1:], targets[0, :-1])  # each input is the previous target


def test_unigram_baseline_lies_between_one_and_the_vocabulary(corpus):
    assert 1.0 < fd.unigram_perplexity(corpus) < corpus.vocab


def test_balance_term_is_one_when_balanced_and_larger_when_collapsed():
    uniform = mx.full((64, 8), 1 / 8)
    assert fm.balance_loss(uniform, 2).item() == pytest.approx(1.0, rel=1e-5)
    collapsed = mx.array(np.tile(np.r_[[0.45, 0.45], np.full(6, 0.1 / 6)], (64, 1)).astype(np.float32))
    assert fm.balance_loss(collapsed, 2).item() > 3.0


def test_training_forward_is_mlx_lms_forward(corpus):
    model = fm.build_model(fm.model_config(TINY))
    rows = mx.array(fd.batch(corpus, np.random.default_rng(0), 2, 32, 0.5))
    logits, aux, probs = fm.forward(model, rows)
    assert mx.allclose(logits, model(rows), atol=1e-5).item()
    assert len(probs) == TINY.layers and aux.item() >= 1.0 - 1e-4


def test_a_short_run_lowers_the_loss_and_saves_a_loadable_4bit_checkpoint(tmp_path: Path):
    from mlx_lm import load

    dims = fm.FixtureDims(**{**TINY.as_dict(), "experts": 128, "top_k": 8})
    tc = tf.TrainConfig(steps=24, batch=4, seq_len=64, lr=3e-3, warmup=2, eval_every=8, patience=100)
    record = tf.run(tmp_path / "ck", dims, tc, note="test", log=lambda s: None)
    curve = record["loss_curve"]
    assert [p["step"] for p in curve] == [8, 16, 24]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] and curve[-1]["heldout_loss"] < curve[0]["heldout_loss"]
    assert record["tokens_seen"] == 24 * 4 * 64 and record["steps_run"] == 24
    assert record["heldout_ppl_quantized"] > 1 and record["unigram_ppl"] > 1
    saved = json.loads((tmp_path / "ck" / "training.json").read_text())
    assert saved["checkpoint_bytes"] == sum(p.stat().st_size for p in (tmp_path / "ck").iterdir())
    model, tok = load(str(tmp_path / "ck"))
    assert (model.args.num_experts, model.args.num_experts_per_tok, model.args.norm_topk_prob) == (128, 8, True)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 64
    assert model.model.layers[0].mlp.switch_mlp.up_proj.bits == 4
    assert len(tok.encode("The house")) > 0


def test_boolean_options_parse_as_words():
    _, dims, tc, _ = tf.parse_args(["out", "--compile-step", "false", "--random-fraction", "0.25"])
    assert tc.compile_step is False and tc.random_fraction == 0.25 and dims.vocab == 512
    assert tf.parse_args(["out"])[2].compile_step is True
    with pytest.raises(SystemExit):
        tf.parse_args(["out", "--compile-step", "maybe"])


def test_random_eval_rows_weigh_the_repeats_of_each_row(corpus):
    ids, weights = fd.random_eval_rows(corpus, 64, rows=4)
    again, _ = fd.random_eval_rows(corpus, 64, rows=4)
    assert ids.shape == weights.shape == (4, 65) and np.array_equal(ids, again)  # fixed rows: a comparable curve
    for row, w in zip(ids, weights):
        first = int(np.argmax(w))  # weights index row positions: the first weighted token repeats row[1]
        unit = first - 1
        assert w[0] == 0 and row[first] == row[1] and (w[first:] == 1).all()
        assert list(row[first:]) == list(row[1:65 - unit])


def test_a_random_only_phase_trains_on_random_rows_and_keeps_weights_from_after_it(tmp_path: Path, monkeypatch):
    fractions = []
    real = fd.training_batch

    def spy(corpus, rng, size, seq_len, copy_fraction, shuffled, random_fraction, text_weight=1.0, **kw):
        fractions.append(random_fraction)
        return real(corpus, rng, size, seq_len, copy_fraction, shuffled, random_fraction, text_weight, **kw)

    monkeypatch.setattr(fd, "training_batch", spy)
    tc = tf.TrainConfig(steps=12, batch=2, seq_len=32, warmup=2, eval_every=2, patience=100, random_only_steps=8,
                        random_fraction=0.25, compile_step=False)
    _, _, record = tf.train(TINY, tc, log=lambda s: None)
    assert fractions == [1.0] * 8 + [0.25] * 4
    assert record["best_step"] in (10, 12)  # never a step of the random-only phase
    assert all(0.0 <= p["random_copy_accuracy"] <= 1.0 for p in record["loss_curve"])


def test_every_variant_parses_and_the_winner_quotes_best_within_the_perplexity_limit(tmp_path: Path):
    from bench import train_variants as tv

    for flags in tv.VARIANTS.values():
        tf.parse_args(["out", *tv.COMMON, *tv.SHARED, *flags])  # a typo in a flag would stop a whole GPU visit
    figures = {"I": (80.0, 0.40), "J": (90.0, 0.70), "K": (150.0, 0.95)}  # K quotes best but is too perplexed
    for name, (ppl, acc) in figures.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "training.json").write_text(json.dumps({
            "best_step": 100, "steps_run": 200, "heldout_ppl_quantized": ppl, "unigram_ppl": 200.0,
            "heldout_copy_accuracy_quantized": acc, "loss_curve": [{"random_copy_accuracy": 0.9}]}))
    summary = tv.summarise(tmp_path, ["I", "J", "K", "L"], max_ratio=0.5)
    assert summary["winner"] == "J" and summary["variants"]["L"] == {"failed": True}
    assert summary["variants"]["K"]["ppl_ratio"] == 0.75


@pytest.mark.parametrize("source", fd.RANDOM_SOURCES)
def test_random_rows_of_every_source_repeat_a_span_of_ordinary_ids(corpus, source):
    rng = np.random.default_rng(3)
    row, w = fd.random_row(corpus, rng, 96, source=source)
    unit = int(np.argmax(w))
    body = row[1:]
    assert (body[:unit] >= 3).all() or source in ("shuffled", "mixed")  # text windows hold no specials either
    assert list(body[unit:]) == list(body[:96 - unit])
    if source == "shuffled":
        span = body[:unit - len(corpus.separator)]
        assert any(sorted(span) == sorted(corpus.train[s:s + len(span)]) for s in range(len(corpus.train) - len(span)))
    with pytest.raises(ValueError, match="unknown random-row source"):
        fd.random_span(corpus, rng, 8, "gaussian")


def test_unigram_rows_follow_the_training_texts_frequencies(corpus):
    rng = np.random.default_rng(4)
    drawn = np.concatenate([fd.random_span(corpus, rng, 64, "unigram") for _ in range(300)])
    common = np.bincount(corpus.train, minlength=corpus.vocab).argmax()
    assert (drawn == common).mean() > 5 / corpus.vocab  # the most frequent text token is far above uniform


def test_selection_under_a_perplexity_limit_prefers_copying_among_eligible_points():
    good_text = {"heldout_loss": 4.0, "heldout_copy_loss": 1.2}  # ppl 54.6
    better_copy = {"heldout_loss": 4.5, "heldout_copy_loss": 1.0}  # ppl 90.0
    too_perplexed = {"heldout_loss": 5.0, "heldout_copy_loss": 0.5}  # ppl 148
    score = lambda p: tf.selection_score(p, 1.0, max_ppl=100.0)  # noqa: E731
    assert score(better_copy) < score(good_text) < score(too_perplexed)
    assert tf.selection_score(good_text, 1.0) < tf.selection_score(better_copy, 1.0)  # the weighted mean otherwise


def _quoted_span_length(row: np.ndarray, corpus: fd.Corpus) -> int:
    """The span length of a copy row ([BOS] span sep span ...): the shortest span that the row repeats."""
    body, sep = row[1:], list(corpus.separator)
    for span in range(1, (len(body) - len(sep)) // 2 + 1):
        repeat = body[span + len(sep):2 * span + len(sep)]
        if list(body[span:span + len(sep)]) == sep and np.array_equal(body[:span], repeat):
            return span
    raise ValueError("not a copy row: no span is repeated after the separator")


def test_shuffled_copy_rows_weigh_their_quoted_repeat_as_asked(corpus):
    rows, w = fd.training_batch(corpus, np.random.default_rng(5), 30, 64, copy_fraction=1.0, shuffled_fraction=1.0,
                                random_fraction=0.0, text_weight=0.25, quote_weight=1.0)
    sep = len(corpus.separator)
    for row, weights in zip(rows, w):
        span = _quoted_span_length(row, corpus)
        assert (weights[span + sep + 1:2 * span + sep] == 1.0).all()  # every target of the repeat after its first
        assert weights[span + sep] == 0.25 and (weights[:span + sep] == 0.25).all()
        assert (weights[2 * span + sep:] == 0.25).all()
        assert list(row[1 + span + sep + 1:1 + 2 * span + sep]) == list(row[2:1 + span])  # which are the copies
