"""Drafters: cheap guesses of the next few tokens, which a verification pass of the target model then checks.

Every drafter is a point mass (it proposes tokens, not distributions), so a verification pass accepts exactly the
longest prefix of the proposal that equals the target's own choices, and the output never depends on the drafter.

A drafter follows one request's context (prompt + every emitted token):

    d = PromptLookup(ngram_max=3, ngram_min=1)      # or ModelDrafter(load_draft_model(path, tokenizer))
    d.start(prompt_ids + [first_token])             # the whole context so far; its last token is not in any cache
    drafts = d.propose(4)                           # up to 4 tokens continuing the context (maybe fewer, maybe none)
    d.accept(emitted)                               # the tokens the pass emitted: accepted drafts + one more

`accept` must follow every pass, `propose` or not (a plain step's one token too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

log = logging.getLogger(__name__)


class Drafter(Protocol):
    def start(self, context: Sequence[int]) -> None: ...

    def propose(self, k: int) -> list[int]: ...

    def accept(self, tokens: Sequence[int]) -> None: ...


class PromptLookup:
    """Prompt lookup: the longest context suffix (ngram_max down to ngram_min tokens) that occurred earlier proposes
    the tokens that followed its most recent earlier occurrence.

    The index maps each n-gram to the end position of its latest occurrence and is updated per appended token
    (ngram_max dictionary writes), so a proposal never scans the context. A continuation that runs into the end of
    the context keeps repeating the matched period (a suffix "a b a b" matched one period back proposes "a b ...").
    """

    def __init__(self, ngram_max: int = 3, ngram_min: int = 1):
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min} and {ngram_max}")
        self.ngram_max, self.ngram_min = ngram_max, ngram_min
        self._tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> end position of its latest occurrence
        self._indexed = 0  # n-grams ending before this position are in the index (all but the last token's)

    def start(self, context: Sequence[int]) -> None:
        self._tokens, self._index, self._indexed = [], {}, 0
        self.accept(context)

    def accept(self, tokens: Sequence[int]) -> None:
        self._tokens.extend(int(t) for t in tokens)
        # index every n-gram ending before the last token: the suffix itself must match an *earlier* occurrence
        toks, end = self._tokens, len(self._tokens) - 1
        for p in range(self._indexed, end):
            for n in range(self.ngram_min, self.ngram_max + 1):
                if p + 1 >= n:
                    self._index[tuple(toks[p + 1 - n:p + 1])] = p
        self._indexed = max(self._indexed, end)

    def propose(self, k: int) -> list[int]:
        toks, size = self._tokens, len(self._tokens)
        if k <= 0 or size < 2:
            return []
        for n in range(min(self.ngram_max, size - 1), self.ngram_min - 1, -1):
            j = self._index.get(tuple(toks[size - n:]))
            if j is None:
                continue
            out: list[int] = []
            for i in range(k):  # positions past the context repeat the period (j + 1 .. size - 1)
                src = j + 1 + i
                out.append(toks[src] if src < size else out[src - size])
            return out
        return []


@dataclass
class DraftModel:
    """A loaded draft model (shared by every request that drafts with it; each has its own KV cache)."""

    model: nn.Module
    path: str

    def trimmable(self) -> bool:
        return can_trim_prompt_cache(make_prompt_cache(self.model))


def load_draft_model(path: str | Path, target_tokenizer: Any = None) -> DraftModel:
    """Load an mlx-lm checkpoint as a draft model.

    Raises:
        ValueError: its tokenizer's vocabulary differs from the target's (token ids would mean other things), or
            its KV cache cannot be rewound.
        FileNotFoundError: no checkpoint there.
    """
    from mlx_lm.utils import load_model, load_tokenizer

    root = Path(path)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"draft model {root}: no config.json there (give an mlx-lm checkpoint folder)")
    model, _ = load_model(root)
    if target_tokenizer is not None:
        mine = load_tokenizer(root)
        if dict(mine.vocab) != dict(target_tokenizer.vocab):
            raise ValueError(f"draft model {root}: its tokenizer is not the target model's (vocabularies differ); "
                             f"a draft model must share the target's tokenizer")
    draft = DraftModel(model, str(root))
    if not draft.trimmable():
        raise ValueError(f"draft model {root}: its KV cache cannot be rewound, so it cannot draft")
    return draft


class ModelDrafter:
    """Greedy drafts from a draft model, with its own KV cache rewound to the accepted context after each pass.

    The cache holds the context but its last few tokens (`pending`), which the next proposal feeds first. A proposal
    of k tokens feeds pending, then its own first k-1 drafts; `accept` trims the drafts the target rejected.
    """

    def __init__(self, draft: DraftModel, prefill_step: int = 512):
        self.draft, self.prefill_step = draft, prefill_step
        self._cache: list[Any] = []
        self._pending: list[int] = []
        self._proposal: list[int] = []
        self._fed = 0  # drafts of the last proposal that went into the cache

    def start(self, context: Sequence[int]) -> None:
        ids = [int(t) for t in context]
        self._cache = make_prompt_cache(self.draft.model)
        self._proposal, self._fed = [], 0
        head, self._pending = ids[:-1], ids[-1:]
        for i in range(0, len(head), self.prefill_step):
            self.draft.model(mx.array(head[i:i + self.prefill_step])[None], cache=self._cache)
            mx.eval([c.state for c in self._cache])

    def propose(self, k: int) -> list[int]:
        if k <= 0 or not self._pending:
            return []
        y, out = mx.array(self._pending)[None], []
        for i in range(k):
            logits = self.draft.model(y, cache=self._cache)[:, -1, :]  # [1, vocab]
            token = int(mx.argmax(logits, axis=-1).item())
            out.append(token)
            y = mx.array([[token]])
        self._pending, self._proposal, self._fed = [], out, k - 1
        return out

    def accept(self, tokens: Sequence[int]) -> None:
        tokens = [int(t) for t in tokens]
        n = 0
        while n < min(len(tokens) - 1, len(self._proposal)) and tokens[n] == self._proposal[n]:
            n += 1
        keep = min(n, self._fed)
        if self._fed > keep:
            trim_prompt_cache(self._cache, self._fed - keep)
        self._pending = self._pending + tokens[keep:]
        self._proposal, self._fed = [], 0


def make_drafter(mode: str, *, ngram_max: int = 3, ngram_min: int = 1,
                 draft: DraftModel | None = None) -> Drafter:
    """A fresh drafter for one request: "lookup" or "draft" (needs a loaded DraftModel)."""
    if mode == "lookup":
        return PromptLookup(ngram_max, ngram_min)
    if mode == "draft":
        if draft is None:
            raise ValueError("speculation mode 'draft' needs a loaded draft model (load_draft_model)")
        return ModelDrafter(draft)
    raise ValueError(f"no drafter for speculation mode {mode!r}")
