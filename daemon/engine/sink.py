"""Reads into cache slots: the sink a read writes through, and how its rows are reached (the upload path).

A read of one expert hands its record to a `SlotSink` on a reader thread. The sink writes only its slot's rows:
  * "plain" (CPU, Metal; CUDA on request): `targets` lists (offset in the record, the slot's row as a writable
    uint8 view) per tensor. The reader reads the record straight into those rows with one preadv where it can
    (daemon/store/reader.py, scatter reads) and calls the sink only otherwise, which then copies each tensor.
  * "copy" (CUDA): no targets; the sink has the driver's copy engine copy each tensor from the reader's buffer
    into the slot's rows (managed.py: no page faults on either side).
Sinks are made on the MLX thread once per read, so their row addresses come from per-bank bases kept once
(numpy's `.ctypes` is slow per access; see bench/results/notebook.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..store.format import TensorSpec
from . import managed

log = logging.getLogger(__name__)

DEMAND, PREFETCH, WARM = 0, 1, 2  # reader priorities of a slot's read: lower is more urgent


class SlotSink:
    """What a read of one slot writes through: `targets` (rows to read straight into, or None) and the fallback
    called with the record's payload when the reader does not use the targets."""

    __slots__ = ("targets", "_fallback")

    def __init__(self, fallback: Callable[[np.ndarray], None],
                 targets: list[tuple[int, np.ndarray]] | None = None):
        self.targets = targets
        self._fallback = fallback

    def __call__(self, payload: np.ndarray) -> None:
        self._fallback(payload)


class Uploads:
    """Makes the sinks of one set of banks for one upload path ("plain" or "copy", see the module docstring)."""

    def __init__(self, path: str, driver: managed.Driver | None):
        self.path, self.driver = path, driver
        self.pinned = False  # the reader's buffers are page-locked (copies from them are only queued)
        self._rows: list[tuple[int, int, TensorSpec]] = []
        self._host: dict[str, np.ndarray] = {}

    def pin_reader_buffers(self, reader) -> None:
        """Copy path: page-lock the reader's buffers for its life (`buffer_region`, `on_close`), if it has them."""
        region = getattr(reader, "buffer_region", None)
        if self.path != "copy" or region is None:
            return
        addr, nbytes = region()
        try:
            self.driver.pin(addr, nbytes)
        except managed.CudaError as e:  # copies still work from pageable memory, staged by the driver
            log.warning("page-locking the reader's buffers failed (%s): uploads copy from pageable memory", e)
            return
        self.pinned = True
        reader.on_close(lambda: self.driver.unpin(addr))

    def bind(self, host: dict[str, np.ndarray], tensors: list[TensorSpec]) -> None:
        """Use these banks (host views [slots, width] by tensor name); on the copy path, move them to the GPU."""
        self._host = host
        # per tensor, in record order: (address of its bank's row 0, bytes per row, tensor)
        self._rows = [(host[t.name].ctypes.data, host[t.name].strides[0], t)
                      for t in sorted(tensors, key=lambda t: t.offset)]
        if self.path == "copy":  # the banks' pages start on the GPU, where the copies then land
            slots = len(next(iter(host.values()))) if host else 0
            self.driver.to_device([(row0, width * slots) for row0, width, _ in self._rows])

    def sink(self, slot: int) -> SlotSink:
        """The sink a read of `slot` hands its record to."""
        if self.path == "copy":
            drv, pinned = self.driver, self.pinned
            pieces = [(row0 + slot * width, t.offset, t.nbytes) for row0, width, t in self._rows]

            def copy_by_driver(payload: np.ndarray) -> None:  # the reader's buffer -> rows, by the copy engine
                base = payload.ctypes.data
                drv.copy([(dst, base + offset, n) for dst, offset, n in pieces], pinned=pinned)

            return SlotSink(copy_by_driver)

        rows = [(t.offset, self._host[t.name][slot]) for _, _, t in self._rows]  # (offset in the record, row)

        def copy_by_host(payload: np.ndarray) -> None:
            for offset, row in rows:  # record -> bank, one memcpy per tensor
                row[...] = payload[offset : offset + row.nbytes]

        return SlotSink(copy_by_host, rows)
