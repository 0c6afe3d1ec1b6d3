"""Governor (sampling rates, merging, profiles, overrides, keep-alive, status) and GovernorThread."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from moed.governor import (Bounds, Decision, EngineSource, FunctionSource, Governor, GovernorConfig, GovernorThread,
                           Limits, State)
from moed.governor import signals as S

GIB = 1 << 30
BOUNDS = Bounds(max_batch=8, prefetch_depth=2, cache_budget_bytes=8 * GIB, idle_cache_budget_bytes=GIB,
                keep_alive_s=300.0)


def test_sources_sampled_at_their_own_rates_and_merged() -> None:
    calls = {"fast": 0, "slow": 0}

    def fast(now: float) -> dict[str, object]:
        calls["fast"] += 1
        return {S.THERMAL: 0.1, S.ON_AC: None}

    def slow(now: float) -> dict[str, object]:
        calls["slow"] += 1
        return {S.ON_AC: False, S.BATTERY_PERCENT: 50.0, S.THERMAL: 0.9}

    cfg = GovernorConfig(fast_interval_s=1.0, slow_interval_s=30.0)
    gov = Governor(cfg, BOUNDS, [FunctionSource("fast", fast, blocking=False),
                                 FunctionSource("slow", slow, fast=False, blocking=False)])
    for t in range(61):
        d = gov.tick(float(t))
    assert calls == {"fast": 61, "slow": 3}
    # The first source that knows a signal wins; an unknown value does not hide a later source's.
    assert d.readings[S.THERMAL] == 0.1 and d.readings[S.ON_AC] is False
    assert d.state == State.BALANCED


def test_profiles_and_overrides() -> None:
    reading = {S.ON_AC: False, S.BATTERY_PERCENT: 50.0, S.THERMAL: 0.2}
    gov = Governor(GovernorConfig(dwell_s=0.0), BOUNDS, [FunctionSource("r", lambda now: reading, blocking=False)])
    assert gov.tick(0.0).state == State.BALANCED
    gov.set_profile("saver")
    assert gov.tick(1.0).state == State.SAVER and gov.decision is not None
    gov.set_profile("performance")
    d = gov.tick(2.0)
    assert d.state == State.BALANCED  # relaxes one level per tick (dwell 0)
    assert gov.tick(3.0).state == State.PERFORMANCE
    reading[S.THERMAL] = 0.95  # critical heat still counts under `performance`
    assert gov.tick(4.0).state == State.CRITICAL
    gov.set_override("batch_ceiling", 6)
    gov.set_override("pace_steps_per_s", 5.0)
    d = gov.tick(5.0)
    assert d.limits.batch_ceiling == 6 and d.limits.pace_steps_per_s == 5.0 and d.reasons["batch_ceiling"] == "override"
    assert d.limits.prefetch_depth == 0
    gov.clear_overrides()
    assert gov.tick(6.0).limits.batch_ceiling == 1
    for knob, value in (("batch_ceiling", 0), ("prefetch_depth", -1), ("pace_steps_per_s", 0.5), ("nope", 1),
                        ("cache_budget_bytes", 1.5), ("batch_ceiling", True)):
        with pytest.raises(ValueError, match=knob if knob != "nope" else "unknown knob"):
            gov.set_override(knob, value)
    with pytest.raises(ValueError, match="unknown profile"):
        gov.set_profile("turbo")


def test_idle_keep_alive_drops_the_cache_budget() -> None:
    clock = [0.0]
    engine = EngineSource(lambda: clock[0])
    gov = Governor(GovernorConfig(), BOUNDS, [engine], clock=lambda: clock[0])
    engine.update(active=1, queue_len=0)
    assert gov.tick(10.0).limits.cache_budget_bytes == 8 * GIB
    clock[0] = 20.0
    engine.update(active=0, queue_len=0)
    assert gov.tick(319.0).limits.cache_budget_bytes == 8 * GIB
    d = gov.tick(320.0)
    assert d.limits.cache_budget_bytes == GIB and "keep_alive" in d.reasons["cache_budget_bytes"]
    engine.update(active=0, queue_len=1)
    assert gov.tick(321.0).limits.cache_budget_bytes == 8 * GIB


def test_cgroup_limit_counts_for_the_cache() -> None:
    reading = {S.MEM_AVAILABLE_BYTES: 64 * GIB, S.CGROUP_MEM_LIMIT_BYTES: 10 * GIB,
               S.CGROUP_MEM_USAGE_BYTES: 9.5 * GIB}  # 0.5 GiB left under the limit, reserve 1 GiB
    gov = Governor(GovernorConfig(), BOUNDS, [FunctionSource("m", lambda now: reading, blocking=False)])
    d = gov.tick(0.0)
    assert d.limits.cache_budget_bytes == 8 * GIB - int(8 * GIB * 0.1)
    assert "512 MiB left" in d.reasons["cache_budget_bytes"]


def test_status_is_serialisable_and_complete() -> None:
    gov = Governor(GovernorConfig(), BOUNDS, [FunctionSource("bad", lambda now: 1 / 0)])
    before = gov.to_status()
    assert before["state"] is None and before["profile"] == "auto"
    gov.tick(0.0)
    status = json.loads(json.dumps(gov.to_status()))
    assert status["state"] == "PERFORMANCE" and status["limits"]["batch_ceiling"] == 8
    assert set(status) >= {"reasons", "readings", "overrides", "sources", "state_changed_at", "limits_changed_at"}
    assert status["sources"]["bad"]["status"].startswith("error: ZeroDivisionError")


def test_transitions_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reading: dict[str, Any] = {S.THERMAL: 0.8}
    gov = Governor(GovernorConfig(), BOUNDS, [FunctionSource("r", lambda now: reading, blocking=False)])
    with caplog.at_level(logging.INFO, logger="moed.governor"):
        for t in range(10):
            gov.tick(float(t))
    lines = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert len(lines) == 1 and "start -> SAVER" in lines[0] and "thermal=0.8" in lines[0]


def test_thread_calls_back_on_change() -> None:
    reading: dict[str, Any] = {S.ON_AC: True}
    got: list[Limits] = []
    changed = threading.Event()

    def on_change(limits: Limits, decision: Decision) -> None:
        got.append(limits)
        if len(got) == 2:
            changed.set()
        if len(got) == 1:
            raise RuntimeError("a failing callback must not stop the thread")

    gov = Governor(GovernorConfig(tick_s=0.05, fast_interval_s=0.05), BOUNDS, [FunctionSource("r", lambda now: dict(reading),
                                                                        blocking=False)])
    thread = GovernorThread(gov, on_change)
    thread.start()
    try:
        reading[S.ON_AC] = False
        assert changed.wait(10.0)
    finally:
        thread.stop()
    assert got[0].batch_ceiling == 8 and got[1].batch_ceiling == 4
    with pytest.raises(RuntimeError):
        thread.start()
