"""TraceSource: replays timestamped JSONL readings against the governor's clock.

Format (docs/governor.md): one JSON object per line, `{"t": 0.0, "battery_percent": 80, "on_ac": false, ...}`;
`t` is seconds from the start of the replay, non-decreasing. Records are cumulative: a signal keeps its last value
until a later record changes it, and `null` makes it unknown again. Blank lines and lines starting with `#` are
skipped. The replay starts at the first read (or at `start`, when given) and holds the last record at the end, or
starts over when `loop` is set.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Mapping

from ..signals import Value, clean


class TraceError(ValueError):
    """A malformed trace; the message names the file and line."""


def load_trace(path: str | Path) -> list[tuple[float, dict[str, Value]]]:
    """Parses a JSONL trace into [(t, cumulative reading)]; raises TraceError on a bad line or decreasing t."""
    records: list[tuple[float, dict[str, Value]]] = []
    state: dict[str, Value] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}:{lineno}: not JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("t"), (int, float)) or isinstance(obj["t"], bool):
            raise TraceError(f"{path}:{lineno}: a record must be an object with a number `t`")
        t = float(obj.pop("t"))
        if records and t < records[-1][0]:
            raise TraceError(f"{path}:{lineno}: t={t} goes back in time")
        state = {**state, **clean(obj)}
        records.append((t, state))
    if not records:
        raise TraceError(f"{path}: no records")
    return records


class TraceSource:
    """Replays a trace file: `read(now)` gives the record in force at `now - start`."""

    fast = True
    blocking = False

    def __init__(self, path: str | Path, *, start: float | None = None, loop: bool = False) -> None:
        self.name = f"trace:{Path(path).name}"
        self._records = load_trace(path)
        self._times = [t for t, _ in self._records]
        self._start = start
        self._loop = loop

    @property
    def duration(self) -> float:
        """The time of the last record."""
        return self._times[-1]

    def read(self, now: float) -> Mapping[str, object]:
        if self._start is None:
            self._start = now
        t = now - self._start
        if self._loop and self.duration > 0:
            t %= self.duration
        i = bisect.bisect_right(self._times, t) - 1
        return dict(self._records[i][1]) if i >= 0 else {}
