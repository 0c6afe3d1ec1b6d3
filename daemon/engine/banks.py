"""Slot-bank memory: page-aligned MLX byte arrays the host writes through numpy views, and handing rows back.

Used by ExpertCache (cache.py). A bank is one MLX uint8 array [slots, width] per expert tensor; the host writes
expert records into its rows (reader threads) and the compute reads typed views of it. Two facts about MLX shape
this file: its CPU allocator returns addresses 24 bytes past a page (O_DIRECT needs page-aligned buffers), and it
cannot create an array without writing it (so rows beyond a budget are given back with madvise instead of being
left untouched).
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import mlx.core as mx
import numpy as np


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
