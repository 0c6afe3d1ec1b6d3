"""A stand-in for the CUDA driver (engine/managed.py's `Driver`) over host memory, for running the copy path
where there is no CUDA: the tests and the host-cost benchmark (bench/hostcost.py) hand it to an ExpertCache.

It does what the real calls promise without a device: a copy moves the bytes (memmove), a prefetch to the GPU
moves none, page-locking changes nothing. Every call is recorded (counts, bytes, ranges, the calling threads) so
a test can check what the copy path asked of the driver.
"""

from __future__ import annotations

import ctypes
import threading


class StandInDriver:
    """managed.Driver's interface: copies really copy (memmove), prefetches and pins are recorded."""

    def __init__(self) -> None:
        self.copied_bytes, self.copies, self.pinned_copies = 0, 0, 0
        self.prefetched: list[tuple[int, int]] = []
        self.pinned: dict[int, int] = {}
        self.unpinned: list[int] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def copy(self, pieces: list[tuple[int, int, int]], pinned: bool = False) -> None:
        """Copy (destination address, source address, bytes) pieces; returns when done, as the driver's does."""
        for dst, src, n in pieces:
            ctypes.memmove(dst, src, n)
        with self.lock:
            self.pinned_copies += pinned
            self.copies += 1
            self.copied_bytes += sum(n for _, _, n in pieces)
            self.threads.add(threading.current_thread().name)

    def to_device(self, ranges: list[tuple[int, int]]) -> None:
        with self.lock:
            self.prefetched.extend(ranges)

    def pin(self, ptr: int, n: int) -> None:
        self.pinned[ptr] = n

    def unpin(self, ptr: int) -> None:
        self.unpinned.append(ptr)
