"""Which configurations `moed bench` runs.

The "axes" plan (default) varies one knob at a time around a base point (budget 25 %, prefetch depth 1, direct
reads, the LFU policy), which covers every value the issue asks for in ~12 runs instead of the 64 of a full
product: budgets 100/50/25/12.5 %, depths 0..3, direct vs buffered, LFU vs LRU (at 25 % and 12.5 %). The "full"
plan is the Cartesian product of the given lists.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Axes:
    budgets: tuple[str, ...] = ("100", "50", "25", "12.5")
    depths: tuple[int, ...] = (0, 1, 2, 3)
    modes: tuple[str, ...] = ("direct", "buffered")
    policies: tuple[str, ...] = ("lfu", "lru")
    base_budget: str = "25"
    base_depth: int = 1
    base_mode: str = "direct"
    base_policy: str = "lfu"


def moed_points(axes: Axes, plan: str) -> list[tuple[str, int, str, str]]:
    """(budget %, depth, read mode, policy) tuples, in run order, without duplicates."""
    if plan == "full":
        pts = list(itertools.product(axes.budgets, axes.depths, axes.modes, axes.policies))
    elif plan == "axes":
        b, d, m, p = axes.base_budget, axes.base_depth, axes.base_mode, axes.base_policy
        pts = [(x, d, m, p) for x in axes.budgets]
        pts += [(b, x, m, p) for x in axes.depths]
        pts += [(b, d, x, p) for x in axes.modes]
        pts += [(x, d, m, q) for x in (b, "12.5") for q in axes.policies]
    else:
        raise ValueError(f"unknown plan {plan!r}: expected axes or full")
    seen, out = set(), []
    for pt in pts:
        if pt not in seen:
            seen.add(pt)
            out.append(pt)
    return out


def configs(store: str, reference: str | None, axes: Axes, plan: str, common: dict, restart: bool) -> list[dict]:
    """Every run of one `moed bench` invocation."""
    out = []
    if reference:
        out.append({"kind": "mlx-lm", "model": reference, **common})
    for budget, depth, mode, policy in moed_points(axes, plan):
        out.append({"kind": "moed", "store": store, "budget": f"{budget}%", "prefetch_depth": depth,
                    "read_mode": mode, "policy": policy, **common})
    for mode in axes.modes:
        out.append({"kind": "readpath", "store": store, "read_mode": mode, "read_threads": common["read_threads"]})
    if restart:
        out.append({"kind": "restart", "store": store, "budget": f"{axes.base_budget}%",
                    "prefetch_depth": axes.base_depth, "read_mode": axes.base_mode, "policy": axes.base_policy,
                    "steps": max(common["steps"], 96), "window": 32})
    return out


def spec_configs(store: str, reference: str | None, budgets: tuple[str, ...], modes: tuple[str, ...],
                 common: dict, repeat: int) -> list[dict]:
    """Every run of a `moed bench --speculation` invocation: the mlx-lm reference (if given) once, then per budget
    `repeat` rounds of every mode, each round in the reverse order of the last (off, lookup, lookup, off, ...) so
    a drifting machine load falls on both sides of each with/without comparison."""
    out = [{"kind": "spec-ref", "model": reference, **common}] if reference else []
    for budget in budgets:
        for i in range(repeat):
            for mode in (modes if i % 2 == 0 else tuple(reversed(modes))):
                out.append({"kind": "spec", "store": store, "budget": f"{budget}%", "speculation": mode, **common})
    return out
