"""Deterministic random-weight MoE test checkpoints (`moed make-test-model`).

`make_test_model(out_dir, arch, size, layout, bits, group_size, seed, **overrides)` writes a small or
large random MoE model that mlx-lm loads and runs: the Hugging Face layout (bf16, per-expert tensors)
or, from the same weights, the mlx-lm layout bit-identical to what `mlx_lm.convert` makes of it.
Its tokenizer is a byte-level BPE trained on the bundled public-domain corpus (`corpus_text()`).
"""

from .build import LAYOUTS, make_test_model
from .presets import ARCHES, SIZES, Dims, resolve_dims
from .tokenizer import corpus_text, train_tokenizer

__all__ = [
    "ARCHES",
    "LAYOUTS",
    "SIZES",
    "Dims",
    "corpus_text",
    "make_test_model",
    "resolve_dims",
    "train_tokenizer",
]
