"""Speculative decoding settings: which drafter proposes tokens, how many per verification pass, and whether K adapts.

No MLX here: the daemon's config, the command line and the benchmarks build a SpeculationConfig without loading the
engine; daemon/engine/speculative.py runs it.

    SpeculationConfig()                                         # off: plain decoding, exactly mlx-lm's loop
    SpeculationConfig(mode="lookup")                            # drafts from n-gram matches in the context
    SpeculationConfig(mode="draft", draft_model="models/small") # drafts from a small model sharing the tokenizer
    SpeculationConfig(mode="lookup", max_draft=8, adaptive=False)

Speculation never changes the tokens: greedy output equals plain greedy decoding, and seeded sampling draws the
token at generated position i with a key from (seed, i) only, so it equals keyed sampling without speculation.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("off", "lookup", "draft")
MAX_DRAFT_LIMIT = 32  # a verification pass of more rows than this costs more than it can return
NGRAM_LIMIT = 16


@dataclass(frozen=True)
class SpeculationConfig:
    """How a request speculates.

    mode: "off" (plain decoding), "lookup" (prompt lookup: the context's own n-grams propose the continuation)
        or "draft" (a small draft model proposes greedily).
    draft_model: an mlx-lm checkpoint folder for mode "draft"; its tokenizer must be the target's.
    max_draft: K, the most draft tokens one verification pass checks (1..32).
    adaptive: choose K per pass (0..max_draft) from the measured acceptance rate and the measured cost of a pass;
        False: always draft up to max_draft.
    ngram_max, ngram_min: the longest and shortest context suffix prompt lookup tries to match (longest first).

    Raises (on construction):
        ValueError: an unknown mode, mode "draft" without a draft_model, or a number out of its range.
    """

    mode: str = "off"
    draft_model: str | None = None
    max_draft: int = 8  # an upper bound: adaptive K measures what pays (8 beat 4 on quoting text: performance.md, run h)
    adaptive: bool = True
    ngram_max: int = 3
    ngram_min: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"speculation mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "draft" and not self.draft_model:
            raise ValueError("speculation mode 'draft' needs a draft model: give draft_model (--draft-model PATH), "
                             "an mlx-lm checkpoint folder whose tokenizer is the target model's")
        if self.draft_model is not None and not isinstance(self.draft_model, str):
            raise ValueError(f"draft_model must be a folder path (text), not {type(self.draft_model).__name__}")
        _int_in("max_draft", self.max_draft, 1, MAX_DRAFT_LIMIT, "the most draft tokens per verification pass")
        _int_in("ngram_max", self.ngram_max, 1, NGRAM_LIMIT, "the longest n-gram prompt lookup matches")
        _int_in("ngram_min", self.ngram_min, 1, NGRAM_LIMIT, "the shortest n-gram prompt lookup matches")
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) is above ngram_max ({self.ngram_max}): prompt lookup "
                             f"tries suffixes from ngram_max tokens down to ngram_min tokens")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be true or false, not {self.adaptive!r}")

    @property
    def enabled(self) -> bool:
        """Whether a drafter runs at all (mode is not "off")."""
        return self.mode != "off"


def _int_in(name: str, value: object, lo: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} ({what}) must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} ({what}) is {value}; give {lo} to {hi}")
