"""Fault injection for the expert reader: failing, short, slow and corrupt reads of chosen experts, for tests.

An ExpertReader holds `faults` (None by default: the normal path pays one attribute test per read). A `Faults`
set there is asked around every positional read of a record:

    before(layer, expert)                 may sleep (slow read) or raise OSError (EIO)
    after(layer, expert, pieces, got)     may corrupt the bytes read (a checksum mismatch) or return fewer
                                          bytes than were read (a short read); returns the byte count to use

`layer` is the manifest's layer position, as in ExpertReader.read. Each rule matches one expert (or every
expert of a layer with expert=None) and fires on the matching reads numbered in `on` (1 = the first matching
read; None = every one), so "a checksum mismatch on the 3rd read of layer 1 expert 4" is
`Fault("corrupt", 1, 4, on={3})`.

    reader.faults = Faults([Fault("eio", layer=1, expert=4)])
"""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass, field

import numpy as np

KINDS = ("eio", "short", "slow", "corrupt")


@dataclass(frozen=True)
class Fault:
    """One rule. kind: eio | short | slow | corrupt; `delay_s` for slow reads."""

    kind: str
    layer: int
    expert: int | None = None
    on: frozenset[int] | None = None  # matching read numbers (1-based) that fail; None = all
    delay_s: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, not {self.kind!r}")
        if self.on is not None:
            object.__setattr__(self, "on", frozenset(self.on))

    def matches(self, layer: int, expert: int) -> bool:
        return layer == self.layer and (self.expert is None or expert == self.expert)


@dataclass
class Faults:
    """The rules in force and how often each fired (`fired[i]` for rule i). Thread-safe: reads run on workers."""

    rules: list[Fault]
    fired: list[int] = field(default_factory=list)
    _seen: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.fired = [0] * len(self.rules)
        self._seen = [0] * len(self.rules)

    def _firing(self, layer: int, expert: int, kinds: tuple[str, ...]) -> list[Fault]:
        out = []
        with self._lock:
            for i, rule in enumerate(self.rules):
                if rule.kind not in kinds or not rule.matches(layer, expert):
                    continue
                self._seen[i] += 1
                if rule.on is None or self._seen[i] in rule.on:
                    self.fired[i] += 1
                    out.append(rule)
        return out

    def before(self, layer: int, expert: int) -> None:
        """Called before a record is read: a slow rule sleeps, an eio rule raises OSError(EIO)."""
        for rule in self._firing(layer, expert, ("slow", "eio")):
            if rule.kind == "slow":
                time.sleep(rule.delay_s)
            else:
                raise OSError(errno.EIO, f"injected I/O error (layer position {layer}, expert {expert})")

    def after(self, layer: int, expert: int, pieces: list[np.ndarray], got: int) -> int:
        """Called after a record was read into `pieces` (got bytes): corrupt flips a payload byte, short halves
        the count. Returns the byte count the reader should believe."""
        for rule in self._firing(layer, expert, ("corrupt", "short")):
            if rule.kind == "corrupt":
                first = next(p for p in pieces if p.nbytes)
                first[min(10, first.nbytes - 1)] ^= 0xFF
            else:
                got //= 2
        return got
