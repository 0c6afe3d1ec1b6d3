"""The shipped traces replayed through the governor (default config, DEMO_BOUNDS: max_batch 8, prefetch 2,
cache 8 GiB, idle 1 GiB), each with its expected sequence of states and knob values."""

from __future__ import annotations

from typing import Any

from moed.governor import State
from moed.governor.replay import TRACES, replay

P, B, SV, C = State.PERFORMANCE, State.BALANCED, State.SAVER, State.CRITICAL
FULL = 8 << 30
SHRINK, GROW = int(FULL * 0.1), int(FULL * 0.05)


def transitions(decisions: list[Any]) -> list[tuple[float, State]]:
    out = [(decisions[0].at, decisions[0].state)]
    for a, b in zip(decisions, decisions[1:]):
        if a.state != b.state:
            out.append((b.at, b.state))
    return out


def knob_changes(decisions: list[Any], knob: str) -> list[tuple[float, Any]]:
    out = [(decisions[0].at, getattr(decisions[0].limits, knob))]
    for a, b in zip(decisions, decisions[1:]):
        if getattr(a.limits, knob) != getattr(b.limits, knob):
            out.append((b.at, getattr(b.limits, knob)))
    return out


def test_discharge_from_100_to_5_percent_unplugged() -> None:
    ds = list(replay(TRACES / "discharge.jsonl", step_s=10.0))
    assert transitions(ds) == [(0.0, B), (4800.0, SV), (5580.0, C)]  # on battery; 20 %; 7 %
    assert knob_changes(ds, "batch_ceiling") == [(0.0, 4), (4800.0, 2), (5580.0, 1)]
    assert knob_changes(ds, "prefetch_depth") == [(0.0, 1), (4800.0, 0)]
    assert knob_changes(ds, "cache_budget_bytes") == [(0.0, FULL)]  # battery never shrinks the cache
    assert ds[-1].reasons["state"] == "CRITICAL: escalate: battery"


def test_thermal_ramp_to_critical_and_back() -> None:
    ds = list(replay(TRACES / "thermal_ramp.jsonl"))
    # Up at 0.4, 0.7, 0.9 at once; down one state per 60 s dwell once below threshold - 0.1 (0.75 at t=300).
    assert transitions(ds) == [(0.0, P), (80.0, B), (140.0, SV), (180.0, C), (360.0, SV), (420.0, B), (480.0, P)]
    assert knob_changes(ds, "batch_ceiling") == [
        (0.0, 8), (80.0, 4), (140.0, 2), (180.0, 1),            # multiplicative decrease, at once
        (360.0, 2), (420.0, 3), (425.0, 4),                     # additive increase, one per 5 s
        (480.0, 5), (485.0, 6), (490.0, 7), (495.0, 8)]
    assert knob_changes(ds, "prefetch_depth") == [(0.0, 2), (80.0, 1), (140.0, 0), (420.0, 1), (480.0, 2)]
    assert knob_changes(ds, "cache_budget_bytes") == [(0.0, FULL)]


def test_plug_unplug_flapping_every_3_s() -> None:
    ds = list(replay(TRACES / "plug_flap.jsonl"))
    # One escalation at the first unplug, held through the flapping, one relaxation 60 s after the last plug-in.
    assert transitions(ds) == [(0.0, P), (3.0, B), (180.0, P)]
    assert knob_changes(ds, "batch_ceiling") == [(0.0, 8), (3.0, 4), (180.0, 5), (185.0, 6), (190.0, 7), (195.0, 8)]
    assert knob_changes(ds, "prefetch_depth") == [(0.0, 2), (3.0, 1), (180.0, 2)]


def test_memory_pressure_spike_and_clearing() -> None:
    ds = list(replay(TRACES / "memory_spike.jsonl"))
    assert transitions(ds) == [(0.0, P)]  # memory pressure moves the cache, not the state
    shrink = [(40.0 + 5 * k, FULL - (k + 1) * SHRINK) for k in range(7)]  # critical from t=40 to t=75
    low = FULL - 7 * SHRINK                                                # held at warn, t=75..90
    grow = [(100.0 + 30 * n, low + (n + 1) * GROW) for n in range(13)]     # clear from t=90: +5 % per 30 s
    assert knob_changes(ds, "cache_budget_bytes") == [(0.0, FULL), *shrink, *grow, (490.0, FULL)]
    assert "memory pressure cap" in ds[50].reasons["cache_budget_bytes"]
    assert knob_changes(ds, "batch_ceiling") == [(0.0, 8)]
