"""The corpus split: training and held-out parts are disjoint, ordered, and the held-out part is ~10 %."""

from moed.daemon.testmodel import corpus_text
from moed.daemon.testmodel.split import HELDOUT_FRACTION, heldout_passages, heldout_text, train_passages, train_text


def test_parts_are_disjoint_and_cover_the_corpus():
    train, held = train_passages(), heldout_passages()
    assert set(train).isdisjoint(held)
    whole = [p.strip() for p in corpus_text().split("\n\n") if p.strip()]
    assert sorted(train + held) == sorted(whole)


def test_heldout_is_about_the_fraction_asked():
    held, total = len(heldout_text()), len(train_text()) + len(heldout_text())
    assert HELDOUT_FRACTION <= held / total < 2.5 * HELDOUT_FRACTION


def test_no_heldout_paragraph_appears_in_training_text():
    text = train_text()
    assert not any(p in text for p in heldout_passages())
