"""DraftRows: what the expert cache is told of a verification pass, so drafts that fail cost as few bytes as they can.

A verification pass (speculative.py) runs row 0 (the last accepted token) and K draft rows through every streaming
layer in one call. Each layer must read the union of the rows' experts to compute them, but what the pass asks of
the cache beyond that follows the tokens that are kept, not the rows that were computed:

- **Use credit.** A layer's acquire credits only row 0's experts as uses (`uses`); an expert only draft rows asked
  for is touched without credit, so one read for a draft enters with score 0, like a prefetch, first to go. When
  the pass knows how many drafts were accepted (`end`), each accepted row's experts are credited, once per row, as
  the plain steps that would have decoded those tokens would have credited them. A rejected draft's experts never
  count: they would push out experts the kept tokens use.
- **Prefetch.** The streaming layer asks the prefetcher only for the experts that at least two rows predict for
  the next layer, at most the router's top-k (`prefetch.py`, `issue(..., agreed=True)`): no more than a plain step
  would read. Predicting for every row read each row's mispredictions, most of them for rows then rejected; an
  expert two rows agree on is more likely needed, and the rest are read on demand if a row does need them.

Only the synchronised layer calls take part: a wholly resident layer (unsynced.py) reads nothing and counts every
row's experts later, and a call split into waves (more experts than slots) credits all of them at once.

The measurements behind both, and the variants that did less well, are in bench/results/notebook.md
("speculation reads fewer bytes per token at 25 %"). Owned by the engine and shared by its streaming layers; MLX
thread only (between `begin` and `end` the layers' calls run).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Creditable(Protocol):
    """What DraftRows needs of moed.daemon.engine.cache.ExpertCache."""

    def credit(self, layer: int, experts: np.ndarray, uses: np.ndarray) -> None: ...


class DraftRows:
    """One verification pass at a time: `begin`, the streaming layers' calls (`uses`), then `end(accepted)`."""

    def __init__(self, cache: Creditable):
        self.cache = cache
        self.open = False
        self._rows: list[tuple[int, np.ndarray]] = []  # per layer call: (layer, [draft rows, k] expert ids)

    def begin(self) -> None:
        """A verification pass starts: row 0 of each layer call is the kept token, the other rows drafts."""
        self.open, self._rows = True, []

    def uses(self, layer: int, idx: np.ndarray, experts: np.ndarray) -> np.ndarray:
        """The uses to credit now for the distinct `experts` of one layer call routed as `idx` ([..., rows, k]):
        1 for row 0's, 0 for those only drafts asked for. Keeps the draft rows' experts for `end`."""
        rows = idx.reshape(-1, idx.shape[-1])
        self._rows.append((layer, rows[1:]))
        return np.isin(experts, rows[0]).astype(np.float64)

    def end(self, accepted: int) -> None:
        """The pass kept its first `accepted` drafts: credit their rows' experts (those still resident), one use
        per row and layer call, and close the pass."""
        self.open = False
        rows, self._rows = self._rows, []
        for layer, drafts in rows:
            kept = drafts[:accepted]
            if kept.size:  # a row's top-k experts are distinct, so a count is the rows that used the expert
                distinct, per_row = np.unique(kept, return_counts=True)
                self.cache.credit(layer, distinct, per_row.astype(np.float64))

    def abort(self) -> None:
        """The pass failed: close it, crediting no draft."""
        self.open, self._rows = False, []
