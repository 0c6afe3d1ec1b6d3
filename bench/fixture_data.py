"""The trained fixture's data: token streams of the corpus split, training batches with copy sequences, and the
held-out windows on which perplexity is measured.

Training sees only `train_text()`; a plain row is a random window of it after a BOS token. A "copy" row is
[BOS] + span + separator + the same span again and then the text that followed it, so the model learns to continue
a passage quoted earlier in its context (the speculation benchmark's quote-heavy workload relies on that). A
"random" row is a span of uniformly random token ids repeated after separators: drawn fresh every time, it cannot be
memorised, only copied, so it teaches copying (an induction head) without adding text to overfit; its first span
carries no loss (nothing there is predictable).
Perplexity is teacher-forced on `heldout_text()` cut into consecutive windows of `seq_len - 1` tokens, each after a
BOS token; every held-out token is predicted exactly once. The unigram baseline is an add-one smoothed unigram
fitted on the training tokens, scored on the same held-out tokens.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from moed.daemon.testmodel.split import heldout_text, train_text
from moed.daemon.testmodel.tokenizer import special_ids, train_tokenizer

SEPARATOR = "\n\n"  # between a span and its copy: the corpus's own paragraph break


@dataclass(frozen=True)
class Corpus:
    """Token ids of the training and held-out parts, with the BOS and separator ids."""

    train: np.ndarray
    heldout: np.ndarray
    bos: int
    separator: tuple[int, ...]
    vocab: int

    @functools.cached_property
    def unigram(self) -> np.ndarray:
        """The training tokens' frequencies over the vocabulary, special tokens (ids 0-2) left out."""
        counts = np.bincount(self.train, minlength=self.vocab).astype(np.float64)
        counts[:3] = 0.0
        return counts / counts.sum()


def load_corpus(vocab: int) -> Corpus:
    """Tokenize both parts of the split with moed's corpus BPE of `vocab` tokens."""
    tok = train_tokenizer(vocab)
    enc = lambda text: np.asarray(tok.encode(text).ids, dtype=np.int32)  # noqa: E731
    return Corpus(train=enc(train_text()), heldout=enc(heldout_text()), bos=special_ids(tok)["bos"],
                  separator=tuple(tok.encode(SEPARATOR).ids), vocab=vocab)


def plain_row(corpus: Corpus, rng: np.random.Generator, seq_len: int) -> np.ndarray:
    """[BOS] + a random window of the training tokens: seq_len + 1 ids (inputs and shifted targets)."""
    start = int(rng.integers(0, len(corpus.train) - seq_len))
    return np.concatenate([[corpus.bos], corpus.train[start:start + seq_len]])


def copy_row(corpus: Corpus, rng: np.random.Generator, seq_len: int, shuffled: bool = False,
             min_span: int = 8) -> np.ndarray:
    """[BOS] + span + separator + the span again and what followed it in the text: seq_len + 1 ids.

    A `shuffled` span is a training window in random order: it cannot be recalled from training, only copied
    from the context, so these rows teach copying itself."""
    return copy_row_and_span(corpus, rng, seq_len, shuffled, min_span)[0]


def copy_row_and_span(corpus: Corpus, rng: np.random.Generator, seq_len: int, shuffled: bool = False,
                      min_span: int = 8) -> tuple[np.ndarray, int]:
    """copy_row's row and the length of its quoted span."""
    sep = np.asarray(corpus.separator, dtype=np.int32)
    max_span = max(min_span, (seq_len - len(sep)) // 2)
    span = int(rng.integers(min_span, max_span + 1))
    rest = seq_len - span - len(sep)  # the quote and its continuation
    start = int(rng.integers(0, len(corpus.train) - span - rest))
    quoted = corpus.train[start:start + span]
    if shuffled:
        quoted = rng.permutation(quoted)
    return np.concatenate([[corpus.bos], quoted, sep, quoted, corpus.train[start + span:start + rest]]), span


def batch(corpus: Corpus, rng: np.random.Generator, size: int, seq_len: int, copy_fraction: float,
          shuffled_fraction: float = 0.0) -> np.ndarray:
    """A (size, seq_len + 1) int32 batch; each row is a copy row with probability `copy_fraction`, and a copy
    row's span is shuffled with probability `shuffled_fraction`."""
    rows = [copy_row(corpus, rng, seq_len, shuffled=rng.random() < shuffled_fraction)
            if rng.random() < copy_fraction else plain_row(corpus, rng, seq_len) for _ in range(size)]
    return np.stack(rows).astype(np.int32)


RANDOM_SOURCES = ("uniform", "unigram", "shuffled", "mixed")


def random_span(corpus: Corpus, rng: np.random.Generator, span: int, source: str) -> np.ndarray:
    """`span` token ids that cannot be recalled from training, only copied: uniform over the non-special ids,
    drawn from the training text's unigram distribution, or a training window shuffled; "mixed" picks one of the
    three per span. The text-like sources keep a copy circuit from learning to fire only on uniform noise."""
    if source == "mixed":
        source = RANDOM_SOURCES[int(rng.integers(0, 3))]
    if source == "uniform":
        return rng.integers(3, corpus.vocab, span).astype(np.int32)  # ids 0-2 are the special tokens
    if source == "unigram":
        return rng.choice(corpus.vocab, size=span, p=corpus.unigram).astype(np.int32)
    if source == "shuffled":
        start = int(rng.integers(0, len(corpus.train) - span))
        return rng.permutation(corpus.train[start:start + span]).astype(np.int32)
    raise ValueError(f"unknown random-row source {source!r}; expected one of {', '.join(RANDOM_SOURCES)}")


def random_row(corpus: Corpus, rng: np.random.Generator, seq_len: int, min_span: int = 8, source: str = "uniform"
               ) -> tuple[np.ndarray, np.ndarray]:
    """[BOS] + (random span + separator) repeated to seq_len + 1 ids, and the weights of its seq_len targets:
    0 over the first span and the separator after it (unpredictable), 1 after. `source`: see random_span."""
    sep = np.asarray(corpus.separator, dtype=np.int32)
    span = int(rng.integers(min_span, max(min_span, (seq_len - len(sep)) // 2) + 1))
    unit = np.concatenate([random_span(corpus, rng, span, source), sep])
    body = np.tile(unit, seq_len // len(unit) + 1)[:seq_len]
    weights = np.ones(seq_len, np.float32)
    weights[:len(unit)] = 0.0  # target j is body[j]: the first span and its separator cannot be predicted
    return np.concatenate([[corpus.bos], body]).astype(np.int32), weights


def training_batch(corpus: Corpus, rng: np.random.Generator, size: int, seq_len: int, copy_fraction: float,
                   shuffled_fraction: float, random_fraction: float, text_weight: float = 1.0,
                   random_source: str = "uniform", quote_weight: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A (size, seq_len + 1) int32 batch and (size, seq_len) loss weights of its targets. Each row is a random row
    with probability `random_fraction` (its span drawn from `random_source`), else as in `batch`; rows of training
    text weigh `text_weight` (below 1 it slows memorising the small text while the copy rows go on training),
    except the quoted repeat of a *shuffled* copy row, which weighs `quote_weight` (default `text_weight`): it can
    only be predicted by copying text from the context, so it may weigh as much as a random row."""
    rows, weights = [], []
    for _ in range(size):
        if rng.random() < random_fraction:
            row, w = random_row(corpus, rng, seq_len, source=random_source)
        elif rng.random() < copy_fraction:
            shuffled = rng.random() < shuffled_fraction
            row, span = copy_row_and_span(corpus, rng, seq_len, shuffled=shuffled)
            w = np.full(seq_len, text_weight, np.float32)
            if shuffled and quote_weight is not None:
                sep = len(corpus.separator)
                w[span + sep + 1:2 * span + sep] = quote_weight  # the repeat's targets after its first token
        else:
            row, w = plain_row(corpus, rng, seq_len), np.full(seq_len, text_weight, np.float32)
        rows.append(row)
        weights.append(w)
    return np.stack(rows).astype(np.int32), np.stack(weights)


def add_input_noise(rows: np.ndarray, rng: np.random.Generator, rate: float, vocab: int) -> np.ndarray:
    """Inputs with a share `rate` of tokens (never the first) replaced by random ones: (inputs, targets) where
    the targets stay the clean next tokens. A regulariser against memorising the small training text."""
    inputs, targets = rows[:, :-1].copy(), rows[:, 1:]
    noisy = rng.random(inputs.shape) < rate
    noisy[:, 0] = False
    inputs[noisy] = rng.integers(3, vocab, int(noisy.sum()))
    return inputs, targets


def heldout_windows(corpus: Corpus, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets covering every held-out token once: windows of seq_len - 1 tokens after BOS.

    The last window is padded with BOS; the returned targets are -1 there (not scored)."""
    width = seq_len - 1
    n = math.ceil(len(corpus.heldout) / width)
    padded = np.full(n * width, -1, dtype=np.int32)
    padded[:len(corpus.heldout)] = corpus.heldout
    targets = padded.reshape(n, width)
    inputs = np.concatenate([np.full((n, 1), corpus.bos, np.int32), np.where(targets < 0, corpus.bos, targets)],
                            axis=1)[:, :-1]
    return inputs, targets


def heldout_copy_windows(corpus: Corpus, span: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Copy rows of held-out text ([BOS] + span + separator + span) and a mask of the quoted tokens after the
    first: how well the model continues a passage it has seen in its context, on text it never trained on."""
    sep = list(corpus.separator)
    rows, masks = [], []
    for start in range(0, len(corpus.heldout) - span, span):
        piece = list(corpus.heldout[start:start + span])
        row = [corpus.bos] + piece + sep + piece
        mask = [0] * (1 + span + len(sep)) + [1] * span
        mask[1 + span + len(sep)] = 0  # the quote's first token is not predictable from the context
        rows.append(row)
        masks.append(mask)
    return np.asarray(rows, np.int32), np.asarray(masks, np.float32)


def random_eval_rows(corpus: Corpus, seq_len: int, rows: int = 16, seed: int = 12345
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed set of random rows and their target weights, to measure copying itself (no text to recall)."""
    rng = np.random.default_rng(seed)
    made = [random_row(corpus, rng, seq_len) for _ in range(rows)]
    ids = np.stack([r for r, _ in made])
    # copy_scores masks targets with masks[:, 1:]: shift the target weights by one to line them up
    weights = np.stack([np.concatenate([[0.0], w]) for _, w in made]).astype(np.float32)
    return ids, weights


def unigram_perplexity(corpus: Corpus) -> float:
    """Perplexity of the held-out tokens under an add-one smoothed unigram fitted on the training tokens."""
    counts = np.bincount(corpus.train, minlength=corpus.vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[corpus.heldout].mean()))
