"""The bundled corpus cut into a training part and a held-out part, the same way everywhere.

Each corpus file's paragraphs (blocks separated by a blank line) are kept in order; the last paragraphs that
together hold at least `HELDOUT_FRACTION` of the file's characters are held out. The trained fixture learns only
from `train_text()`; routing traces, perplexity and the free-continuation workloads read `heldout_text()`.
"""

from __future__ import annotations

from .tokenizer import corpus_files, _corpus_folder_text

HELDOUT_FRACTION = 0.1


def _split_file(text: str) -> tuple[list[str], list[str]]:
    paras = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    total, held = sum(len(p) for p in paras), 0
    cut = len(paras)
    while cut > 1 and held < HELDOUT_FRACTION * total:
        cut -= 1
        held += len(paras[cut])
    return paras[:cut], paras[cut:]


def train_passages() -> list[str]:
    """The training paragraphs of every corpus file, in file-name order."""
    return [p for name in corpus_files() for p in _split_file(_corpus_folder_text(name))[0]]


def heldout_passages() -> list[str]:
    """The held-out paragraphs of every corpus file, in file-name order."""
    return [p for name in corpus_files() for p in _split_file(_corpus_folder_text(name))[1]]


def train_text() -> str:
    """The training part, paragraphs separated by a blank line."""
    return "\n\n".join(train_passages()) + "\n"


def heldout_text() -> str:
    """The held-out part, paragraphs separated by a blank line."""
    return "\n\n".join(heldout_passages()) + "\n"
