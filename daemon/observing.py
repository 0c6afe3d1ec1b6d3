"""What the scheduler tells the world about its work, besides finals: figures for a governor, views for ps/status.

    rates = EngineRates(observer)           # observer(active=, queue_len=, decode_tok_s=, steps_per_s=, hit_rate=,
    rates.observe(...)                      #          bytes_read=): governing.Governing.observe
    request_rows(waiting, active)           # ps and status `requests`
    expert_map(engine)                      # status `experts`

All of it runs on the scheduler thread (the MLX thread) between steps and is cheap: the rates are differences of
counters the engine keeps anyway, sampled at most every OBSERVE_S unless the load changes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine.model import Engine
    from .engine.stats import CacheStats
    from .jobs import Job, Key

Observer = Callable[..., None]
OBSERVE_S = 0.25  # the least time between two reports while the load stays the same
RATE_WINDOW_S = 3.0  # decode tok/s, steps/s and hit rate are measured over about this long


class EngineRates:
    """Hands the observer the load and the rates over the last RATE_WINDOW_S: at most every OBSERVE_S, and at once
    when the daemon goes from idle to busy or back (a governor restores an idle-shrunk cache on that)."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer
        self._samples: deque[tuple[float, int, int, int, int]] = deque()  # (t, steps, tokens, hits, lookups)
        self._last: tuple[float, int, int] = (0.0, -1, -1)  # (when, active, queued) last reported

    def observe(self, *, active: int, queued: int, steps: int, decoded: int, cache: Callable[[], CacheStats],
                bytes_read: Callable[[], int]) -> None:
        now = time.monotonic()
        last_t, last_active, last_queued = self._last
        if now - last_t < OBSERVE_S and (active > 0) == (last_active > 0) and (queued > 0) == (last_queued > 0):
            return
        self._last = (now, active, queued)
        c = cache()
        hits, lookups = c.hits + c.inflight_hits, c.hits + c.inflight_hits + c.misses
        self._samples.append((now, steps, decoded, hits, lookups))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        t0, s0, d0, h0, l0 = self._samples[0]
        span = now - t0
        rates: dict[str, float | None] = {"decode_tok_s": None, "steps_per_s": None, "hit_rate": None}
        if span > 0 and steps > s0:
            rates.update(decode_tok_s=(decoded - d0) / span, steps_per_s=(steps - s0) / span)
        if lookups > l0:
            rates["hit_rate"] = (hits - h0) / (lookups - l0)
        self._observer(active=active, queue_len=queued, bytes_read=bytes_read(), **rates)


def request_rows(waiting: Iterable[Job], active: Iterable[Job]) -> list[tuple[Key, str, int, int, dict[str, Any]]]:
    """(key, state, prompt tokens, tokens so far, speculation figures) of every request the scheduler holds, queued
    ones first."""
    rows = [(j.key, "queued", len(j.prompt), 0, speculation_row(j)) for j in waiting]
    rows += [(j.key, "decoding" if j.first_token_ns else "prefilling", len(j.prompt), j.generated, speculation_row(j))
             for j in active]
    return rows


def speculation_row(job: Job) -> dict[str, Any]:
    """A request's speculation figures for ps: whether it speculates now, its decode passes and accepted drafts."""
    return {"speculating": job.speculating, "verify_passes": job.verify_passes, "accepted_tokens": job.accepted_tokens}


def expert_map(engine: Engine) -> dict[str, Any]:
    """Every MoE layer's resident experts and their heat (ExpertCache.heat_map), for status `experts`."""
    heat = engine.cache.heat_map()
    layers = []
    for pos, entry in enumerate(engine.manifest.layers):  # the cache keys layers by store position
        resident = heat.get(pos, [])
        layers.append({"layer": entry.index, "num_experts": entry.num_experts,
                       "resident": [e for e, _ in resident], "heat": [round(h, 4) for _, h in resident]})
    return {"layers": layers}
