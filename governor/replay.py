"""Replays a sensor trace through a Governor on a simulated clock and prints the transitions.

    python -m moed.governor.replay governor/traces/thermal_ramp.jsonl [--step 1] [--until SECONDS]

Shows what the governor would do on a machine without sensors; `replay` is also what the trace tests use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterator

from .config import GovernorConfig
from .governor import Governor
from .limits import Decision
from .policy import Bounds
from .sensors.trace import TraceSource

TRACES = Path(__file__).parent / "traces"
DEMO_BOUNDS = Bounds(max_batch=8, prefetch_depth=2, cache_budget_bytes=8 << 30, idle_cache_budget_bytes=1 << 30,
                     keep_alive_s=300.0)


def replay(trace: str | Path, config: GovernorConfig | None = None, bounds: Bounds = DEMO_BOUNDS,
           step_s: float = 1.0, until: float | None = None) -> Iterator[Decision]:
    """Yields one Decision per `step_s` of simulated time from 0 to `until` (default: the trace's end + 10 min).
    Every source is sampled every tick (intervals set to `step_s`)."""
    config = (config or GovernorConfig()).replace(fast_interval_s=step_s, slow_interval_s=step_s)
    source = TraceSource(trace, start=0.0)
    end = source.duration + 600.0 if until is None else until
    gov = Governor(config, bounds, [source], clock=lambda: 0.0)
    n = 0
    while n * step_s <= end:
        yield gov.tick(n * step_s)
        n += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moed.governor.replay", description=__doc__.split("\n")[0])
    parser.add_argument("trace", help=f"a JSONL trace (examples in {TRACES})")
    parser.add_argument("--step", type=float, default=1.0, help="simulated seconds per tick")
    parser.add_argument("--until", type=float, default=None, help="simulated seconds to run")
    args = parser.parse_args(argv)
    last = None
    for d in replay(args.trace, step_s=args.step, until=args.until):
        if last is None or d.limits != last.limits or d.state != last.state:
            print(json.dumps({"t": d.at, "state": d.state.name, **d.limits.as_dict(),
                              "why": d.reasons["state"] if last is None or d.state != last.state else
                              "; ".join(f"{k}: {d.reasons[k]}" for k, v in d.limits.as_dict().items()
                                        if v != last.limits.as_dict()[k])}))
        last = d
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
