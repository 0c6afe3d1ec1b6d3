"""The controls seam: one Limits object handed over from any thread, applied by the scheduler at step boundaries
(batch ceiling, prefetch depth, cache budget, pace), and the budget policy that idle keep-alive implements."""

from __future__ import annotations

import threading
import time

import pytest

from daemon_harness import Conn, InProcess, check_sequence, make_config
from moed.daemon.budget_policy import BudgetDecision, IdleKeepAlive
from moed.daemon.handover import Handover
from moed.daemon.limits import MIN_PACE, Limits


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


# -- pure parts ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(max_batch=0), dict(max_batch=True), dict(prefetch_depth=-1),
                                 dict(cache_budget=0), dict(cache_budget=1.5), dict(pace=0.5),
                                 dict(pace=float("nan")), dict(pace=0)])
def test_limits_are_validated(bad):
    with pytest.raises(ValueError):
        Limits(**{"max_batch": 2, "prefetch_depth": 1, **bad})


def test_a_pace_never_pauses_a_second_or_more():
    assert MIN_PACE >= 1.0 and Limits(max_batch=1, prefetch_depth=0, pace=MIN_PACE).pace == MIN_PACE


def test_handover_hands_limits_over_once_per_change(tmp_path):
    h = Handover(make_config(tmp_path, str(tmp_path), max_batch=4, prefetch_depth=2))
    first = h.take_limits()
    assert first == Limits(max_batch=4, prefetch_depth=2) and h.take_limits() is None
    h.wake.clear()
    done = threading.Thread(target=lambda: h.update_limits(pace=8.0, cache_budget=1234))
    done.start()
    done.join()
    assert h.wake.is_set() and h.take_limits() == Limits(4, 2, 1234, 8.0) and h.take_limits() is None
    h.set_max_batch(0)  # the one-knob forms keep their old behaviour: at least one
    h.set_prefetch_depth(0)
    h.set_cache_budget(None)
    assert h.take_limits() == Limits(1, 0, None, 8.0) and h.snapshot()["max_batch"] == 1
    with pytest.raises(ValueError):
        h.set_pace(0.1)
    with pytest.raises(TypeError):
        h.set_limits({"max_batch": 2})  # type: ignore[arg-type]
    assert h.limits == Limits(1, 0, None, 8.0)


def test_idle_keep_alive_shrinks_after_the_delay_and_restores_on_work():
    p = IdleKeepAlive(keep_alive_s=10.0, idle_budget=100)
    assert p.decide(now=5.0, idle_since=0.0, active=0, configured=1000) == BudgetDecision(1000, "set", wake_at=10.0)
    assert p.decide(now=10.0, idle_since=0.0, active=0, configured=1000) == BudgetDecision(100, "idle")
    assert p.decide(now=11.0, idle_since=0.0, active=0, configured=50) == BudgetDecision(50, "idle")
    assert p.decide(now=12.0, idle_since=0.0, active=1, configured=1000) == BudgetDecision(1000, "restore")
    assert p.decide(now=13.0, idle_since=0.0, active=1, configured=1000) == BudgetDecision(1000, "set")
    never = IdleKeepAlive(keep_alive_s=-1.0, idle_budget=100)
    assert never.decide(now=1e9, idle_since=0.0, active=0, configured=1000) == BudgetDecision(1000, "set")


# -- in the daemon -------------------------------------------------------------------------------------------------
def test_each_limit_takes_effect_at_a_step_boundary(store, monkeypatch):
    """A spy around each step records the knobs as the step starts and ends: they never change inside a step,
    switch all together at one boundary after set_limits, and the paced steps start at least 1/pace apart."""
    from moed.daemon.scheduler import Scheduler

    steps: list[tuple[float, tuple, tuple]] = []
    original = Scheduler._step

    def knobs(s: Scheduler) -> tuple:
        return (s.engine.prefetcher.depth, s.engine.cache.stats().budget_bytes, s._limits.max_batch,
                s._limits.pace)

    def spy(self: Scheduler) -> None:
        t, before = time.monotonic(), knobs(self)
        assert len(self._active) <= self._limits.max_batch or before[2] == 8  # a lower ceiling evicts no one
        original(self)
        steps.append((t, before + (len(self._active),), knobs(self)))

    monkeypatch.setattr(Scheduler, "_step", spy)
    with InProcess(store, keep_alive_s=-1, max_batch=8, prefetch_depth=1) as d:
        c = Conn(d.endpoint)
        try:
            full = c.result("status")["cache"]["budget_bytes"]
            c.send("long", "generate", {"prompt": "Once upon a time", "max_tokens": 40})
            chunks = 0
            while chunks < 3:
                chunks += c.recv()["type"] == "chunk"
            new = Limits(max_batch=1, prefetch_depth=0, cache_budget=full // 2, pace=20.0)
            d.daemon.controls.set_limits(new)
            c.send("second", "generate", {"prompt": "Later", "max_tokens": 3})
            for rid in ("long", "second"):
                assert check_sequence(c.wait(rid))["status"] == "ok"
        finally:
            c.close()
    old = (1, full, 8, None)
    assert all(before[:4] == after for _, before, after in steps), "a knob changed inside a step"
    switch = next(i for i, (_, before, _) in enumerate(steps) if before[:4] != old)
    assert switch >= 3 and all(before[:4] == old for _, before, _ in steps[:switch])
    assert all(before[:4] == (0, full // 2, 1, 20.0) for _, before, _ in steps[switch:])
    assert max(before[4] for _, before, _ in steps[switch + 1:]) <= 1  # "second" waited for the one slot
    starts = [t for t, _, _ in steps[switch:]]
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 1 / 20.0 - 0.002  # the pace held between steps


def test_a_budget_policy_replaces_idle_keep_alive(store):
    """The scheduler asks its policy at each boundary: here one that holds every request at half the budget and
    keeps an idle cache at one expert."""
    from moed.daemon.serving import Daemon

    asked: list[tuple[int, int]] = []

    class Halve:
        def decide(self, now: float, idle_since: float, active: int, configured: int) -> BudgetDecision:
            asked.append((active, configured))
            return BudgetDecision(configured // 2 if active else 1, "test", wake_at=now + 0.05)

    d = InProcess(store, wait=False)
    d.daemon = Daemon(d.config, budget_policy=Halve())
    with d:
        from daemon_harness import wait_ready

        wait_ready(d.endpoint)
        c = Conn(d.endpoint)
        try:
            # the first boundary applies the idle decision (one expert) after the daemon is ready: wait for it
            deadline = time.monotonic() + 30
            while (one := c.result("status")["cache"]["budget_bytes"]) and time.monotonic() < deadline:
                if asked and one < max(conf for _, conf in asked) // 2:
                    break
                time.sleep(0.05)
            assert check_sequence(c.call("generate", {"prompt": "Hello", "max_tokens": 3}))["status"] == "ok"
            configured = max(conf for _, conf in asked)
            assert one < configured // 2 and (1, configured) in asked
        finally:
            c.close()
