"""`platform_sources`: the sensor sources that make sense on this platform (each still optional)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .base import Source
from .battery import PsutilBatterySource
from .macos import PmsetSource, ThermalPressureSource, VmPressureSource
from .memory import MemorySource, PressureSource
from .nvml import NvmlSource
from .sysfs import PowerSupplySource, ThermalZonesSource


def platform_sources(platform: str = sys.platform, root: str | Path = "/", gpu: bool | None = None) -> list[Source]:
    """Sources for `platform` ('darwin', 'linux', others get psutil only), rooted at `root` on Linux.

    gpu: add the NVML source; None = when pynvml is importable.
    """
    sources: list[Source] = []
    if platform == "darwin":
        sources += [ThermalPressureSource(platform), PmsetSource(), VmPressureSource(), MemorySource(root, platform)]
    elif platform.startswith("linux"):
        sources += [ThermalZonesSource(root), PowerSupplySource(root), PressureSource(root),
                    MemorySource(root, platform)]
    else:
        sources += [PsutilBatterySource(), MemorySource(root, platform)]
    if gpu or (gpu is None and importlib.util.find_spec("pynvml") is not None):
        sources.append(NvmlSource())
    return sources
