"""What moectl prints: readable tables for status, the one-line stats of a reply, the progress line, JSON.

Tables are `label  value` rows grouped under a heading; every number carries its unit. The progress line is
written to stderr only when stderr is a terminal, and erased as soon as the first text arrives.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from .events import Progress, RequestInfo, Result, Status


def print_json(obj: Any, out: TextIO | None = None) -> None:
    print(json.dumps(obj, default=str), file=out or sys.stdout)


def table(rows: Iterable[tuple[str, str]], out: TextIO | None = None) -> None:
    rows = list(rows)
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        print(f"{label:<{width}}  {value}".rstrip(), file=out or sys.stdout)


def ps_table(rows: Iterable[RequestInfo], out: TextIO | None = None) -> None:
    """One line per request under a header: ID CLIENT STATE PROMPT GENERATED AGE (or a note that there is none)."""
    rows = list(rows)
    out = out or sys.stdout
    if not rows:
        print("no requests in flight", file=out)
        return
    cells = [("ID", "CLIENT", "STATE", "PROMPT", "GENERATED", "AGE")]
    cells += [(r.id, r.client or "-", r.state, str(r.prompt_tokens), str(r.generated_tokens), duration(r.age_s))
              for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for c in cells:
        print("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))).rstrip(),
              file=out)


def status_rows(st: Status) -> list[tuple[str, str]]:
    """The daemon's status as rows: state, model, load, then the cache and the traffic it caused."""
    c = st.cache
    rows = [("state", st.state), ("model", st.model_type), ("store", st.store),
            ("uptime", duration(st.uptime_s)), ("version", st.version),
            ("requests", f"{st.active} running of {st.max_batch} batch slots, {st.queued} queued of {st.queue_limit}")]
    if c:
        rows += cache_rows(c)
    gov = st.raw.get("governor")
    if isinstance(gov, Mapping):
        rows.append(("governor", governor_line(gov)))
    finished = st.raw.get("finished")
    if isinstance(finished, Mapping) and finished:
        rows.append(("finished", ", ".join(f"{n} {k}" for k, n in sorted(finished.items()))))
    for name, q in sorted(st.quarantine.items()):
        failures = q.get("failures", 0) if isinstance(q, Mapping) else 0
        error = q.get("error", "") if isinstance(q, Mapping) else ""
        rows.append(("quarantined", f"{name}: {failures} request(s) failed; {error}"))
    return rows


def governor_line(gov: Mapping[str, Any]) -> str:
    """One line: the governor's state, profile and limits (`moectl governor` shows the reasons)."""
    if gov.get("state") is None:
        return f"starting (profile {gov.get('profile')})"
    lim = gov.get("limits") or {}
    pace = lim.get("pace_steps_per_s")
    budget = lim.get("cache_budget_bytes")
    return (f"{gov['state']} (profile {gov.get('profile')}): batch <= {lim.get('batch_ceiling')}, prefetch depth "
            f"{lim.get('prefetch_depth')}, cache {nbytes(budget) if isinstance(budget, (int, float)) else budget}, "
            f"pace {'no cap' if pace is None else f'{pace:.3g} steps/s'}")


def cache_rows(c: Mapping[str, Any]) -> list[tuple[str, str]]:
    def n(key: str) -> float:
        v = c.get(key, 0)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0

    lookups = n("hits") + n("inflight_hits") + n("misses")
    rows = [("cache", f"{nbytes(n('used_bytes'))} used of {nbytes(n('budget_bytes'))} budget "
                      f"({int(n('slots'))} expert slots)"),
            ("hit rate", f"{n('hit_rate'):.1%} of {int(lookups)} expert lookups "
                         f"({int(n('misses'))} misses, {int(n('evictions'))} evictions)")]
    tokens = n("decode_tokens")
    per_token = f", {nbytes(n('decode_bytes_read') / tokens)} per decoded token" if tokens else ""
    rows.append(("reads", f"{nbytes(n('bytes_loaded'))} in all, {nbytes(n('prefill_bytes_read'))} in prefill"
                          f"{per_token}; {n('wait_seconds'):.2f} s waited"))
    if n("prefetches"):
        rows.append(("prefetch", f"{int(n('prefetches'))} reads, {int(n('prefetch_used'))} used, "
                                 f"{int(n('prefetch_wasted'))} wasted"))
    return rows


def stats_line(r: Result) -> str:
    n = r.cache_hits + r.cache_misses
    return (f"[{r.done_reason}] {r.prompt_tokens} prompt + {r.generated_tokens} generated tokens | "
            f"queue {ms(r.queue_ns)} | prefill {ms(r.prefill_ns)} ({r.prefill_tps:.1f} tok/s) | "
            f"decode {ms(r.decode_ns)} ({r.decode_tps:.1f} tok/s) | cache {r.hit_rate:.0%} hits of {n} | "
            f"{nbytes(r.bytes_read)} read")


class ProgressLine:
    """`queued (position N)` / `prefilling` on stderr while a request waits; erased when text arrives."""

    def __init__(self, err: TextIO | None = None, enabled: bool | None = None) -> None:
        self._err = err or sys.stderr
        self._on = self._err.isatty() if enabled is None else enabled
        self._shown = False

    def show(self, p: Progress) -> None:
        if not self._on:
            return
        what = f"queued (position {p.position})" if p.state == "queued" else p.state
        self._err.write(f"\r\x1b[K[{what}]")
        self._err.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._err.write("\r\x1b[K")
            self._err.flush()
            self._shown = False


def ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def nbytes(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    size, units = n / 1000, ["kB", "MB", "GB", "TB"]
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{size:.1f} {units[0]}"


def duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
