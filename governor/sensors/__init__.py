"""Sensor sources: each returns a reading (see moed.governor.signals) or raises; none is required.

Sources never run in the serving path directly: the Governor samples them through `Sampler`, which gives every
read a deadline and turns failures, hangs and NaN into unknown signals.
"""

from .auto import platform_sources
from .base import FunctionSource, Sampler, Source
from .engine import EngineSource
from .trace import TraceError, TraceSource, load_trace

__all__ = ["EngineSource", "FunctionSource", "Sampler", "Source", "TraceError", "TraceSource", "load_trace",
           "platform_sources"]
