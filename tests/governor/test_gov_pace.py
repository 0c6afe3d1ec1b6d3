"""The pace law: state caps, and the power-cap controller against a simulated plant P = idle + k * steps/s."""

from __future__ import annotations

import pytest

from moed.governor import Bounds, GovernorConfig, Policy, State
from moed.governor import signals as S
from moed.governor.config import MIN_PACE_STEPS_PER_S
from moed.governor.knobs import WINDUP_HEADROOM, PaceLaw

CFG = GovernorConfig()


def simulate(cap_w: float, *, idle_w: float = 30.0, k: float = 4.0, natural: float = 50.0, seconds: float = 300.0,
             law: PaceLaw | None = None, start: float = 0.0) -> tuple[PaceLaw, list[tuple[float, float | None]]]:
    """Runs the controller every 0.5 s; the engine runs at min(cap, natural) steps/s. Returns (law, [(P, cap)])."""
    law = law or PaceLaw()
    cap: float | None = None
    history = []
    t = start
    while t < start + seconds:
        steps = natural if cap is None else min(cap, natural)
        power = idle_w + k * steps
        cap, _ = law.step({S.POWER_AVG_W: power, S.STEPS_PER_S: steps}, CFG, 0.0, cap_w, t)
        history.append((power, cap))
        t += 0.5
    return law, history


@pytest.mark.parametrize("cap_w, k, idle_w", [(150.0, 4.0, 30.0), (100.0, 4.0, 30.0), (60.0, 1.0, 40.0),
                                              (250.0, 4.0, 100.0)])
def test_power_cap_converges_without_oscillation(cap_w: float, k: float, idle_w: float) -> None:
    _, history = simulate(cap_w, k=k, idle_w=idle_w)
    target_steps = (cap_w - idle_w) / k
    tail = history[-100:]  # the last 50 s
    assert all(abs(p - cap_w) <= 0.03 * cap_w for p, _ in tail), tail[-5:]
    assert all(c is not None and abs(c - target_steps) <= 0.05 * target_steps for _, c in tail)
    errors = [abs(p - cap_w) for p, _ in history[::4]]  # one sample per controller update
    assert max(errors[-20:]) <= max(errors[:5])  # settles rather than growing


def test_cap_above_the_plants_power_does_not_wind_up() -> None:
    law, history = simulate(500.0)  # the engine's natural 230 W stays under the cap
    assert all(c is None or c <= WINDUP_HEADROOM * 50.0 + 1e-9 for _, c in history)
    # Lowering the cap then bites within a few updates, since the cap did not climb far above the plant.
    _, after = simulate(150.0, law=law, seconds=20.0, start=300.0)
    assert after[-1][0] <= 1.05 * 150.0


def test_cap_below_idle_power_stops_at_the_least_pace() -> None:
    _, history = simulate(20.0, idle_w=30.0)
    assert history[-1][1] == pytest.approx(MIN_PACE_STEPS_PER_S)


def test_no_power_reading_means_no_cap_from_the_controller() -> None:
    law = PaceLaw()
    cap, why = law.step({}, CFG, 0.0, 100.0, 0.0)
    assert cap is None and "no power reading" in why
    assert law.step({}, CFG, 4.0, 100.0, 1.0)[0] == 4.0  # a state's fixed cap still applies


def test_policy_pace_per_state() -> None:
    cfg = GovernorConfig(pace_steps_per_s=(0.0, 0.0, 8.0, 2.0), dwell_s=0.0)
    policy = Policy(cfg, Bounds(8, 1, 1 << 30, 1 << 28))
    assert policy.step({S.ON_AC: True}, 0.0).limits.pace_steps_per_s is None
    assert policy.step({S.ON_AC: False, S.BATTERY_PERCENT: 15.0}, 1.0).limits.pace_steps_per_s == 8.0
    d = policy.step({S.ON_AC: False, S.BATTERY_PERCENT: 5.0}, 2.0)
    assert d.state == State.CRITICAL and d.limits.pace_steps_per_s == 2.0


def test_policy_power_cap_uses_the_measured_power() -> None:
    cfg = GovernorConfig(power_cap_w=(0.0, 100.0, 100.0, 100.0))
    policy = Policy(cfg, Bounds(8, 1, 1 << 30, 1 << 28))
    d = policy.step({S.ON_AC: False, S.BATTERY_PERCENT: 90.0, S.POWER_W: 200.0, S.STEPS_PER_S: 40.0}, 0.0)
    assert d.state == State.BALANCED and d.limits.pace_steps_per_s is not None
    assert d.limits.pace_steps_per_s < 50.0 and "power cap 100 W" in d.reasons["pace_steps_per_s"]


def test_a_power_cap_set_at_run_time_holds_in_every_state_and_the_tighter_cap_wins() -> None:
    cfg = GovernorConfig(power_cap_w=(0.0, 0.0, 120.0, 120.0), pace_interval_s=0.1)
    policy = Policy(cfg, Bounds(8, 1, 1 << 30, 1 << 28))
    hot = {S.ON_AC: True, S.POWER_W: 200.0, S.STEPS_PER_S: 40.0}
    assert policy.step(hot, 0.0).limits.pace_steps_per_s is None  # PERFORMANCE has no cap of its own
    policy.set_power_cap(150.0)
    d = policy.step(hot, 1.0)
    assert d.state == State.PERFORMANCE and "power cap 150 W" in d.reasons["pace_steps_per_s"]
    assert d.limits.pace_steps_per_s is not None
    policy.set_power_cap(None)
    cool = {S.ON_AC: True, S.POWER_W: 50.0, S.STEPS_PER_S: 40.0}
    paces = [policy.step(cool, 2.0 + i).limits.pace_steps_per_s for i in range(40)]
    assert paces[-1] is None  # released once nothing caps it
    policy.set_power_cap(500.0)
    d = policy.step({S.ON_AC: False, S.BATTERY_PERCENT: 10.0, S.POWER_W: 200.0, S.STEPS_PER_S: 40.0}, 50.0)
    assert "power cap 120 W" in d.reasons["pace_steps_per_s"]  # SAVER's own 120 W is tighter than 500 W
    for bad in (0, -5.0, float("nan"), float("inf"), True, "100"):
        with pytest.raises(ValueError, match="power_cap_w"):
            policy.set_power_cap(bad)  # type: ignore[arg-type]
