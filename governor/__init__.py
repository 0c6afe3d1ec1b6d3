"""moed governor: battery/thermal/memory policy, readings in, limits out (no MLX, no daemon imports).

    from moed.governor import Bounds, Governor, GovernorConfig, GovernorThread, platform_sources

    gov = Governor(GovernorConfig(), Bounds(max_batch=8, prefetch_depth=1, cache_budget_bytes=...,
                   idle_cache_budget_bytes=..., keep_alive_s=300), platform_sources() + [engine_source])
    GovernorThread(gov, on_change=lambda limits, decision: ...).start()

docs/governor.md describes signals, states, knobs, profiles, the trace format and the status dict.
"""

from .config import PROFILES, GovernorConfig, GovernorConfigError
from .governor import Governor
from .limits import KNOBS, Decision, Limits
from .policy import Bounds, Policy
from .runner import GovernorThread
from .sensors import EngineSource, FunctionSource, Source, TraceError, TraceSource, platform_sources
from .state import State

__all__ = ["KNOBS", "PROFILES", "Bounds", "Decision", "EngineSource", "FunctionSource", "Governor",
           "GovernorConfig", "GovernorConfigError", "GovernorThread", "Limits", "Policy", "Source", "State",
           "TraceError", "TraceSource", "platform_sources"]
