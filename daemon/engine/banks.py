"""Slot-bank memory: page-aligned MLX byte arrays the host writes through numpy views, and handing rows back.

Used by ExpertCache (cache.py) through `SlotBanks`. A bank is one MLX uint8 array [slots, width] per expert
tensor; the host writes
expert records into its rows (reader threads) and the compute reads typed views of it. Two facts about MLX shape
this file: its CPU allocator returns addresses 24 bytes past a page (O_DIRECT needs page-aligned buffers), and it
cannot create an array without writing it (so rows beyond a budget are given back with madvise instead of being
left untouched).
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

import mlx.core as mx
import numpy as np

from ..store.format import RecordLayout

_MLX_DTYPES = {
    "uint32": mx.uint32, "uint8": mx.uint8, "int8": mx.int8,
    "float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16,
}


def page_aligned_bank(slots: int, width: int) -> tuple[mx.array, np.ndarray]:
    """An MLX uint8 array [slots, width] whose first row starts on a page boundary, and a writable numpy view of
    it. MLX's CPU allocator returns addresses 24 bytes past a page; aligned rows (with a width that is a multiple
    of 4 KiB, as the Qwen3-30B shapes are) let direct reads land straight in a slot (reader scatter reads)."""
    page = mmap.PAGESIZE
    flat = mx.zeros((slots * width + page,), dtype=mx.uint8)
    mx.eval(flat)
    host = np.array(flat, copy=False)  # writable view of MLX memory
    pad = -host.ctypes.data % page
    bank = flat[pad : pad + slots * width].reshape(slots, width)  # a view: the same buffer, no copy
    mx.eval(bank)
    return bank, host[pad : pad + slots * width].reshape(slots, width)


def release_rows(host: dict[str, np.ndarray], start: int, end: int) -> bool:
    """Give the physical memory of bank rows [start, end) back to the OS without reallocating: madvise(DONTNEED)
    on the whole pages inside those rows (they read as zeros afterwards and fault back in on the next write).
    Only where MLX arrays live in ordinary anonymous memory: Linux on MLX's CPU backend. Elsewhere (Metal,
    CUDA's managed memory) it does nothing and returns False: the rows stay allocated until a reallocation."""
    if start >= end or not sys.platform.startswith("linux") or mx.default_device() != mx.cpu:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    for rows in host.values():
        width = rows.shape[1]
        lo = rows.ctypes.data + start * width
        hi = rows.ctypes.data + end * width
        lo, hi = -(-lo // page) * page, hi // page * page  # whole pages only: neighbours keep theirs
        if hi > lo and libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4) != 0:  # MADV_DONTNEED
            return False
    return True


class SlotBanks:
    """The banks of one layout: `host` (numpy views the reads write, by tensor name), `views` (typed MLX arrays
    [slots, *per-expert shape] the compute reads, sharing the banks' buffers) and `rows(start, n)`.

    `copied_rows` (off by default) makes `rows` hand out copies the device computed instead of views (the same
    values in arrays of its own): a benchmark switch to measure what computing over bank views costs. Copies are
    dropped whenever the cache's epoch changes, so they never outlive the slots' contents."""

    def __init__(self, layout: RecordLayout, slots: int):
        self.layout = layout
        self.slots = slots
        self.copied_rows = False
        self._slices: dict[tuple[int, int], dict[str, mx.array]] = {}
        self._copies: tuple[int, dict[tuple[int, int], dict[str, mx.array]]] = (-1, {})
        self._releasing: threading.Thread | None = None
        banks, self.host = {}, {}
        for t in layout.tensors:
            banks[t.name], self.host[t.name] = page_aligned_bank(slots, t.nbytes)
        self.views = {t.name: banks[t.name].view(_MLX_DTYPES[t.dtype]).reshape((slots,) + t.shape)
                      for t in layout.tensors}
        mx.eval(list(self.views.values()))

    def copy_rows(self, other: "SlotBanks", pairs: list[tuple[int, int]]) -> None:
        """Copy rows of `other` into this: (row here, row there) pairs."""
        for new, old in pairs:
            for name, rows in self.host.items():
                rows[new] = other.host[name][old]

    def rows(self, start: int, n: int, epoch: int) -> dict[str, mx.array]:
        """Bank rows [start, start+n) of every tensor, as views sharing the banks' memory (made once); copies
        made for this `epoch` instead while `copied_rows` is on."""
        key = (start, n)
        if key not in self._slices:
            self._slices[key] = {k: v[start : start + n] for k, v in self.views.items()}
            mx.eval(list(self._slices[key].values()))
        if not self.copied_rows:
            return self._slices[key]
        if self._copies[0] != epoch:
            self._copies = (epoch, {})
        copies = self._copies[1]
        if key not in copies:
            copies[key] = {k: v * 1 for k, v in self._slices[key].items()}  # same numbers, computed by the device
            mx.eval(list(copies[key].values()))
        return copies[key]

    def release(self, start: int, end: int) -> None:
        """Hand the memory of rows [start, end) back (release_rows) on a thread, off the step path (it takes time
        in proportion to the bytes). `wait_released` before any of those rows is written again."""
        self.wait_released()
        self._releasing = threading.Thread(target=release_rows, args=(self.host, start, end),
                                           name="moed-release", daemon=True)
        self._releasing.start()

    def wait_released(self) -> None:
        """Wait until the memory of the rows of the last `release` has been handed back."""
        if self._releasing is not None:
            self._releasing.join()
            self._releasing = None
