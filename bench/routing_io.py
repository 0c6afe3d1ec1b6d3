"""Routing traces as routing_trace.py writes them (.npz), read back as a `Trace`; numpy only.

A trace is T tokens x L MoE layers x k experts (`ids`), the prefetcher's predictions `preds` [T, L, D, k] (layer
l+d's experts predicted from layer l's input, -1 where there is none), the sequence each token belongs to (`seq`)
and whether it was a prompt/forced token (0) or a generated one (1) (`kind`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Trace:
    ids: np.ndarray  # [T, L, k] expert ids, ascending per row
    preds: np.ndarray  # [T, L, D, k], -1: no prediction
    seq: np.ndarray  # [T] sequence number
    kind: np.ndarray  # [T] 0 prompt / forced, 1 generated
    experts: int  # E, experts per layer
    meta: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def layers(self) -> int:
        return int(self.ids.shape[1])

    @property
    def k(self) -> int:
        return int(self.ids.shape[2])

    @property
    def depth(self) -> int:
        return int(self.preds.shape[2])

    def part(self, start: int, stop: int | None = None) -> Trace:
        """Tokens [start, stop) as a trace of their own."""
        s = slice(start, stop)
        return Trace(self.ids[s], self.preds[s], self.seq[s], self.kind[s], self.experts,
                     {**self.meta, "slice": [start, stop if stop is not None else self.tokens]})

    def halves(self) -> tuple[Trace, Trace]:
        """The first half (tuning) and the second half (held out) of the tokens."""
        half = self.tokens // 2
        return self.part(0, half), self.part(half)

    @staticmethod
    def concat(traces: list[Trace]) -> Trace:
        """Traces back to back, sequence numbers kept distinct."""
        seqs, offset = [], 0
        for t in traces:
            seqs.append(t.seq + offset)
            offset = int(seqs[-1].max()) + 1 if len(t.seq) else offset
        return Trace(np.concatenate([t.ids for t in traces]), np.concatenate([t.preds for t in traces]),
                     np.concatenate(seqs), np.concatenate([t.kind for t in traces]), traces[0].experts,
                     {"parts": [t.meta for t in traces]})


def load_trace(path: str | Path) -> Trace:
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return Trace(z["ids"].astype(np.int64), z["preds"].astype(np.int64), z["seq"].astype(np.int64),
                 z["kind"].astype(np.int64), int(meta["experts"]), {**meta, "file": str(path)})


def save_trace(path: str | Path, trace: Trace) -> None:
    """Write `trace` in routing_trace.py's format (tests and synthetic traces)."""
    np.savez_compressed(path, ids=trace.ids.astype(np.int16), preds=trace.preds.astype(np.int16),
                        tokens=np.zeros(trace.tokens, np.int32), seq=trace.seq.astype(np.int32),
                        kind=trace.kind.astype(np.uint8), meta=json.dumps({**trace.meta, "experts": trace.experts}))
