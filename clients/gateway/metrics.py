"""GET /metrics: Prometheus metrics written by prometheus_client, from the gateway's own counters and the daemon's
status.

How it runs: each gateway has its own CollectorRegistry (several gateways may share a process). The gateway
counts HTTP requests and, per finished generation, the daemon's token counts and timings (time to first token =
queue + prefill, as the daemon measured it). StatusCollector turns the latest `status` snapshot (refreshed by the
/metrics handler when older than status_max_age_s) into gauges and counters: queue, batch, cache budget, used
bytes, hits, misses, bytes read. Metric names are listed in docs/gateway.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import protocol
from ..events import Result, Status

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format

_TPS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# status `cache` field -> (metric name, help, counter?)
_CACHE_FIELDS: tuple[tuple[str, str, str, bool], ...] = (
    ("budget_bytes", "moed_cache_budget_bytes", "the expert cache's budget", False),
    ("used_bytes", "moed_cache_used_bytes", "bytes the expert cache holds now", False),
    ("slots", "moed_cache_slots", "expert slots in the cache", False),
    ("hit_rate", "moed_cache_hit_ratio", "fraction of expert lookups served from the cache", False),
    ("hits", "moed_cache_hits", "expert lookups served from the cache", True),
    ("misses", "moed_cache_misses", "expert lookups that read the store", True),
    ("evictions", "moed_cache_evictions", "experts evicted from the cache", True),
    ("bytes_loaded", "moed_cache_bytes_loaded", "bytes read from the store into the cache", True),
    ("decode_tokens", "moed_decode_tokens", "tokens of pure decode steps (the daemon's expert traffic counters)", True),
)
_PHASE_BYTES = (("decode", "decode_bytes_read"), ("prefill", "prefill_bytes_read"))


class StatusCollector(Collector):
    """The daemon's status as metrics; `snapshot()` gives the latest status and whether it is current."""

    def __init__(self, snapshot: Callable[[], tuple[Status | None, bool]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status, fresh = self._snapshot()
        yield GaugeMetricFamily("moed_daemon_up", "1 when the daemon answered the gateway's last status request",
                                value=1 if status is not None and fresh else 0)
        if status is None:
            return
        state = GaugeMetricFamily("moed_daemon_state", "1 for the daemon's current state", labels=["state"])
        for name in protocol.DAEMON_STATES:
            state.add_metric([name], 1 if status.state == name else 0)
        yield state
        info = GaugeMetricFamily("moed_daemon_info", "the served model and the daemon's version",
                                 labels=["model_type", "store", "version"])
        info.add_metric([status.model_type, status.store, status.version], 1)
        yield info
        gauges = ((status.active, "moed_active_requests", "requests prefilling or decoding"),
                  (status.queued, "moed_queue_length", "requests waiting for a batch slot"),
                  (status.max_batch, "moed_max_batch", "the current batch ceiling"),
                  (status.queue_limit, "moed_queue_limit", "queued requests beyond which new ones are refused"),
                  (status.uptime_s, "moed_daemon_uptime_seconds", "seconds since the daemon started"))
        for value, name, doc in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        yield from _cache_metrics(status.cache)
        yield from _finished_metrics(status.raw.get("finished"))
        yield from _governor_metrics(status.raw.get("governor"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cache_metrics(cache: dict[str, Any]) -> Iterator[Metric]:
    for key, name, doc, counter in _CACHE_FIELDS:
        if (value := _number(cache.get(key))) is not None:
            yield (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, value=value)
    read = CounterMetricFamily("moed_store_bytes_read", "bytes read from the expert store, by step phase",
                               labels=["phase"])
    for phase, key in _PHASE_BYTES:
        if (value := _number(cache.get(key))) is not None:
            read.add_metric([phase], value)
    if read.samples:
        yield read


GOVERNOR_STATES = ("PERFORMANCE", "BALANCED", "SAVER", "CRITICAL")
_KNOB_METRICS = (("batch_ceiling", "moed_governor_batch_ceiling", "the governor's batch ceiling"),
                 ("prefetch_depth", "moed_governor_prefetch_depth", "the governor's prefetch depth"),
                 ("cache_budget_bytes", "moed_governor_cache_budget_bytes", "the governor's cache budget"),
                 ("pace_steps_per_s", "moed_governor_pace_steps_per_second", "the governor's cap on decode steps "
                  "per second (absent: no cap)"))


def _governor_metrics(gov: Any) -> Iterator[Metric]:
    """The governor's state (one gauge per state, 1 for the current one), profile, knobs and power cap; nothing
    when the daemon runs without its governor (an optional status field)."""
    if not isinstance(gov, dict) or gov.get("state") is None:
        return
    state = GaugeMetricFamily("moed_governor_state", "1 for the governor's current state", labels=["state"])
    for name in GOVERNOR_STATES:
        state.add_metric([name], 1 if gov["state"] == name else 0)
    yield state
    profile = GaugeMetricFamily("moed_governor_profile", "1 for the governor's profile", labels=["profile"])
    profile.add_metric([str(gov.get("profile"))], 1)
    yield profile
    limits = gov.get("limits") if isinstance(gov.get("limits"), dict) else {}
    for key, name, doc in _KNOB_METRICS:
        if (value := _number(limits.get(key))) is not None:
            yield GaugeMetricFamily(name, doc, value=value)
    if (cap := _number(gov.get("power_cap_w"))) is not None:
        yield GaugeMetricFamily("moed_governor_power_cap_watts", "the power cap set with governor_set", value=cap)


def _finished_metrics(finished: Any) -> Iterator[Metric]:
    if not isinstance(finished, dict):
        return  # an optional status field
    fam = CounterMetricFamily("moed_daemon_requests_finished", "requests the daemon finished, by done reason or "
                              "error code", labels=["outcome"])
    for outcome, count in sorted(finished.items()):
        if isinstance(outcome, str) and (value := _number(count)) is not None:
            fam.add_metric([outcome], value)
    yield fam


class Metrics:
    """The gateway's registry: its own counters plus a StatusCollector."""

    def __init__(self, snapshot: Callable[[], tuple[Status | None, bool]]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("moed_http_requests", "HTTP requests answered, by API, route and status code",
                                ["api", "route", "code"], registry=r)
        self.in_flight = Gauge("moed_http_requests_in_flight", "HTTP requests being answered", registry=r)
        self.generations = Counter("moed_generations", "generations finished through the gateway, by done reason",
                                   ["api", "done_reason"], registry=r)
        self.prompt_tokens = Counter("moed_prompt_tokens", "prompt tokens (after the chat template) of finished "
                                     "generations", ["api"], registry=r)
        self.generated_tokens = Counter("moed_generated_tokens", "tokens generated by finished generations",
                                        ["api"], registry=r)
        self.prefill_seconds = Counter("moed_prefill_seconds", "seconds of prefill of finished generations",
                                       registry=r)
        self.decode_seconds = Counter("moed_decode_seconds", "seconds of decode of finished generations", registry=r)
        self.ttft = Histogram("moed_time_to_first_token_seconds", "arrival at the daemon to the first token "
                              "(queue + prefill)", buckets=_TTFT_BUCKETS, registry=r)
        self.prefill_tps = Histogram("moed_prefill_tokens_per_second", "prefill speed of each generation",
                                     buckets=_TPS_BUCKETS, registry=r)
        self.decode_tps = Histogram("moed_decode_tokens_per_second", "decode speed of each generation",
                                    buckets=_TPS_BUCKETS, registry=r)
        r.register(StatusCollector(snapshot))

    def observe(self, api: str, result: Result) -> None:
        """Count one finished generation."""
        self.generations.labels(api, result.done_reason).inc()
        self.prompt_tokens.labels(api).inc(result.prompt_tokens)
        self.generated_tokens.labels(api).inc(result.generated_tokens)
        self.prefill_seconds.inc(result.prefill_ns / 1e9)
        self.decode_seconds.inc(result.decode_ns / 1e9)
        if result.generated_tokens:
            self.ttft.observe((result.queue_ns + result.prefill_ns) / 1e9)
        if result.prefill_ns:
            self.prefill_tps.observe(result.prefill_tps)
        if result.decode_ns and result.generated_tokens > 1:
            self.decode_tps.observe(result.decode_tps)

    def http_in_flight(self) -> int:
        """HTTP requests being answered now."""
        return int(next(iter(self.in_flight.collect()[0].samples)).value)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
