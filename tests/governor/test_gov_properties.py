"""Property tests of the policy (hypothesis): bounds, monotonicity, hysteresis, dwell, escalation, safe defaults."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from moed.governor import Bounds, FunctionSource, Governor, GovernorConfig, Policy, State
from moed.governor import signals as S
from moed.governor.config import MIN_PACE_STEPS_PER_S
from moed.governor.state import apply_profile, levels

GIB = 1 << 30
CFG = GovernorConfig(pace_steps_per_s=(0.0, 0.0, 8.0, 2.0), power_cap_w=(0.0, 200.0, 100.0, 50.0))
BOUNDS = Bounds(max_batch=8, prefetch_depth=3, cache_budget_bytes=8 * GIB, idle_cache_budget_bytes=GIB,
                keep_alive_s=300.0)


def maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


readings = st.fixed_dictionaries({
    S.BATTERY_PERCENT: maybe(st.floats(0, 100)),
    S.ON_AC: maybe(st.booleans()),
    S.THERMAL: maybe(st.floats(0, 1)),
    S.LOW_POWER: maybe(st.booleans()),
    S.MEM_PRESSURE_SOME_AVG10: maybe(st.floats(0, 100)),
    S.MEM_PRESSURE_FULL_AVG10: maybe(st.floats(0, 100)),
    S.MEM_AVAILABLE_BYTES: maybe(st.integers(0, 64 * GIB)),
    S.POWER_W: maybe(st.floats(0, 500)),
    S.STEPS_PER_S: maybe(st.floats(0, 100)),
    S.IDLE_S: maybe(st.floats(0, 1000)),
})
gaps = st.floats(0.0, 120.0)
histories = st.lists(st.tuples(readings, gaps), min_size=1, max_size=40)
profiles = st.sampled_from(["auto", "performance", "balanced", "saver"])


def run(history: list[tuple[dict[str, Any], float]], profile: str = "auto") -> tuple[Policy, list[Any], float]:
    policy = Policy(CFG, BOUNDS)
    policy.set_profile(profile)
    now, decisions = 0.0, []
    for reading, gap in history:
        now += gap
        decisions.append(policy.step(reading, now))
    return policy, decisions, now


@settings(max_examples=150, deadline=None)
@given(histories, profiles)
def test_knobs_stay_within_bounds(history: list[tuple[dict[str, Any], float]], profile: str) -> None:
    floor = int(BOUNDS.cache_budget_bytes * CFG.cache_min_fraction)
    for d in run(history, profile)[1]:
        lim = d.limits
        assert 1 <= lim.batch_ceiling <= BOUNDS.max_batch
        assert 0 <= lim.prefetch_depth <= BOUNDS.prefetch_depth
        assert min(floor, BOUNDS.idle_cache_budget_bytes) <= lim.cache_budget_bytes <= BOUNDS.cache_budget_bytes
        assert lim.pace_steps_per_s is None or MIN_PACE_STEPS_PER_S <= lim.pace_steps_per_s
        assert d.state in State


def worse(r: dict[str, Any], amount: float) -> dict[str, Any]:
    """The same reading made no better on every signal (None stays None: unknown is not a value to compare)."""
    w = dict(r)
    if w[S.BATTERY_PERCENT] is not None:
        w[S.BATTERY_PERCENT] = max(0.0, w[S.BATTERY_PERCENT] - 100 * amount)
    if w[S.ON_AC] is True and amount > 0.5:
        w[S.ON_AC] = False
    if w[S.THERMAL] is not None:
        w[S.THERMAL] = min(1.0, w[S.THERMAL] + amount)
    if w[S.LOW_POWER] is False and amount > 0.5:
        w[S.LOW_POWER] = True
    for key in (S.MEM_PRESSURE_SOME_AVG10, S.MEM_PRESSURE_FULL_AVG10):
        if w[key] is not None:
            w[key] = min(100.0, w[key] + 100 * amount)
    if w[S.MEM_AVAILABLE_BYTES] is not None:
        w[S.MEM_AVAILABLE_BYTES] = int(w[S.MEM_AVAILABLE_BYTES] * (1 - amount))
    return w


def tightness(d: Any) -> tuple[int, int, int, int, float]:
    pace = d.limits.pace_steps_per_s
    return (d.state, -d.limits.batch_ceiling, -d.limits.prefetch_depth, -d.limits.cache_budget_bytes,
            -(pace if pace is not None else float("inf")))


@settings(max_examples=150, deadline=None)
@given(histories, readings, gaps, st.floats(0, 1), profiles)
def test_worse_readings_never_loosen_a_knob(history: list[tuple[dict[str, Any], float]], last: dict[str, Any],
                                             gap: float, amount: float, profile: str) -> None:
    last = {**last, S.POWER_W: None}  # the power controller is tested on its own plant (test_gov_pace)
    history = [({**r, S.POWER_W: None}, g) for r, g in history]
    a, _, now = run(history, profile)
    b, _, _ = run(history, profile)
    good, bad = a.step(last, now + gap), b.step(worse(last, amount), now + gap)
    assert all(x <= y for x, y in zip(tightness(good), tightness(bad))), (good.limits, bad.limits)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.lists(st.tuples(st.floats(0, 1), gaps), min_size=2, max_size=60))
def test_thermal_oscillation_inside_a_band_changes_state_at_most_once(k: int, seq: list[tuple[float, float]]) -> None:
    ths = [CFG.thermal_balanced, CFG.thermal_saver, CFG.thermal_critical, 1.01]
    lo, hi = ths[k - 1] - CFG.thermal_hysteresis + 1e-6, ths[k] - 1e-6
    values = [(lo + u * (hi - lo), gap) for u, gap in seq]
    assert_at_most_one_change([{S.THERMAL: v, S.ON_AC: True} for v, _ in values], [g for _, g in values])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["saver", "critical"]), st.lists(st.tuples(st.floats(0, 1), gaps), min_size=2, max_size=60))
def test_battery_oscillation_inside_a_band_changes_state_at_most_once(which: str,
                                                                       seq: list[tuple[float, float]]) -> None:
    th = CFG.battery_saver_pct if which == "saver" else CFG.battery_critical_pct
    lo, hi = th - 1e-6 if which == "saver" else 0.0, th + CFG.battery_hysteresis_pct - 1e-6
    if which == "saver":
        lo = CFG.battery_critical_pct + CFG.battery_hysteresis_pct + 1e-6
    values = [(lo + u * (hi - lo), gap) for u, gap in seq]
    assert_at_most_one_change([{S.BATTERY_PERCENT: v, S.ON_AC: False} for v, _ in values], [g for _, g in values])


def assert_at_most_one_change(rs: list[dict[str, Any]], gs: list[float]) -> None:
    policy = Policy(CFG, BOUNDS)
    now = 0.0
    for _ in range(20):  # settle on the first value for well over the dwell
        now += CFG.dwell_s
        policy.step(rs[0], now)
    states = [policy.machine.state]
    for r, g in zip(rs, gs):
        now += g
        states.append(policy.step(r, now).state)
    changes = sum(1 for x, y in zip(states, states[1:]) if x != y)
    assert changes <= 1, states


@settings(max_examples=150, deadline=None)
@given(histories)
def test_relaxations_are_spaced_by_the_dwell_and_escalation_is_immediate(
        history: list[tuple[dict[str, Any], float]]) -> None:
    policy = Policy(CFG, BOUNDS)
    now, last_change, state = 0.0, None, State.PERFORMANCE
    for reading, gap in history:
        now += gap
        entry = max(apply_profile(levels(reading, CFG, hold=False), "auto").values())
        d = policy.step(reading, now)
        if entry > state:
            assert d.state == entry  # escalation within the tick
        if d.state < state:
            assert d.state == state - 1  # one level at a time
            assert last_change is None or now - last_change >= CFG.dwell_s
        if d.state != state:
            last_change, state = now, d.state


def test_a_source_that_raises_hangs_or_gives_nan_gives_the_safe_default() -> None:
    release = threading.Event()

    def hang(now: float) -> dict[str, object]:
        release.wait(10.0)
        return {S.THERMAL: 1.0}

    cfg = GovernorConfig(read_timeout_s=0.05)
    sources = [FunctionSource("raises", lambda now: 1 / 0), FunctionSource("hangs", hang),
               FunctionSource("hangs too", hang, fast=False),
               FunctionSource("nan", lambda now: {S.THERMAL: float("nan"), S.BATTERY_PERCENT: float("nan"),
                                                  S.ON_AC: None, S.MEM_AVAILABLE_BYTES: float("-inf")})]
    gov = Governor(cfg, BOUNDS, sources, clock=lambda: 0.0)
    try:
        for t in range(5):
            d = gov.tick(float(t))
            assert d.state == State.PERFORMANCE
            assert (d.limits.batch_ceiling, d.limits.prefetch_depth, d.limits.cache_budget_bytes,
                    d.limits.pace_steps_per_s) == (8, 3, 8 * GIB, None)
        status = gov.to_status()["sources"]
        assert status["raises"]["status"].startswith("error") and status["hangs"]["status"] == "hung"
        assert status["hangs too"]["status"] == "timeout"  # sampled once (slow), abandoned at the deadline
        assert status["nan"]["status"] == "ok"
    finally:
        release.set()
