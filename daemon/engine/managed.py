"""Uploads into CUDA managed memory through the CUDA driver: bulk copies and migrations instead of page faults.

On MLX's CUDA backend every array the host can see lives in managed memory (`cudaMallocManaged`; an array the
host touches is moved there from device memory). The cache's slot banks are such arrays, and the host fills
their rows. Left to the driver's page faults, that costs twice: the host's write migrates the slot's pages from
the GPU to the host a few KiB at a time, and the GPU's first read of the new expert faults them back (several
times slower end to end than the reads themselves: bench/results/notebook.md). MLX exposes no copy
into an existing array, so this module calls the CUDA driver (libcuda, which MLX's CUDA backend itself loads)
through ctypes, on the reader threads:

  * "copy": a record is read into the reader's own buffer (page-locked with `cuMemHostRegister`) and each tensor
    is copied into its slot row with `cuMemcpyHtoDAsync` on a per-thread non-blocking stream, then waited for.
    The copy engine writes the rows where their pages live (on the GPU once used), so nothing faults.
  * "plain": the record is read straight into the rows (the page-fault path; CPU and Metal always, where memory
    is one).
New banks are moved to the GPU once (`cuMemPrefetchAsync`), so the copies land in device memory from the start.
The copy path against the plain one, per expert and in decode tok/s, and the variant tried and dropped (reading
into the rows, then prefetching them to the GPU: no faster than plain) are recorded in bench/results/notebook.md.

Managed memory stays coherent whatever these calls do; they change only where the bytes are and how they get
there. `driver()` returns None off CUDA, or if the driver cannot be used (then a warning is logged once): moed
then runs the plain path. `upload_path(requested)` resolves the path a cache asks for (ExpertCache(upload=...),
load_engine(upload=...): "auto" = "copy" on CUDA; benchmarks ask for "plain" to compare).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

import mlx.core as mx

log = logging.getLogger(__name__)

UPLOADS = ("auto", "plain", "copy")

_CU_STREAM_NON_BLOCKING = 1
_CU_MEM_LOCATION_TYPE_DEVICE = 1


class CudaError(RuntimeError):
    """A CUDA driver call failed; the message names the call and the driver's error."""


class _Location(ctypes.Structure):  # CUmemLocation, passed by value
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class Driver:
    """The few CUDA driver calls the uploads need, on MLX's device (its primary context)."""

    def __init__(self, lib: ctypes.CDLL, device: int = 0, held: ctypes.PyDLL | None = None):
        self._lib = lib
        # From page-locked memory cuMemcpyHtoDAsync only queues a copy (microseconds): through a PyDLL (`held`) the
        # reader thread keeps the GIL instead of releasing and retaking it once per tensor, which the MLX thread
        # may be waiting for (less waiting for reads at a 25 % budget: bench/results/notebook.md). From pageable
        # memory the driver copies before returning: that call releases the GIL.
        self._queue_copy = (held or lib).cuMemcpyHtoDAsync_v2
        self._check("cuInit", lib.cuInit(0))
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        self._check("cuDeviceGet", lib.cuDeviceGet(ctypes.byref(dev), device))
        self._check("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
        self._ctx, self._loc = ctx, _Location(_CU_MEM_LOCATION_TYPE_DEVICE, dev.value)
        self._local = threading.local()  # per thread: the context made current, and its stream
        for fn in (lib.cuMemcpyHtoDAsync_v2, self._queue_copy):  # the same function when `held` is None
            fn.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.cuMemPrefetchAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_size_t, _Location, ctypes.c_uint,
                                              ctypes.c_void_p]
        lib.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        lib.cuMemHostUnregister.argtypes = [ctypes.c_void_p]
        lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]

    def _check(self, call: str, rc: int) -> None:
        if rc != 0:
            name = ctypes.c_char_p()
            self._lib.cuGetErrorName(rc, ctypes.byref(name))
            raise CudaError(f"{call} failed: {(name.value or b'?').decode()} ({rc})")

    def _stream(self) -> ctypes.c_void_p:
        stream = getattr(self._local, "stream", None)
        if stream is None:  # first call on this thread: bind MLX's context, make this thread's stream
            self._check("cuCtxSetCurrent", self._lib.cuCtxSetCurrent(self._ctx))
            stream = ctypes.c_void_p()
            self._check("cuStreamCreate", self._lib.cuStreamCreate(ctypes.byref(stream), _CU_STREAM_NON_BLOCKING))
            self._local.stream = stream
        return stream

    def copy(self, pieces: list[tuple[int, int, int]], pinned: bool = False) -> None:
        """Copy (destination address, source address, bytes) pieces host -> managed memory; returns when done.
        `pinned`: every source is in memory page-locked by `pin` (then each copy is only queued, holding the GIL)."""
        stream = self._stream()
        queue = self._queue_copy if pinned else self._lib.cuMemcpyHtoDAsync_v2
        for dst, src, n in pieces:
            self._check("cuMemcpyHtoDAsync", queue(dst, src, n, stream))
        self._check("cuStreamSynchronize", self._lib.cuStreamSynchronize(stream))

    def to_device(self, ranges: list[tuple[int, int]]) -> None:
        """Start moving (address, bytes) ranges of managed memory to the GPU; does not wait (a `copy([])` on the
        same thread does)."""
        stream = self._stream()
        for ptr, n in ranges:
            self._check("cuMemPrefetchAsync", self._lib.cuMemPrefetchAsync_v2(ptr, n, self._loc, 0, stream))

    def pin(self, ptr: int, n: int) -> None:
        """Page-lock host memory (not managed) so copies from it run as DMA; `unpin` before it is unmapped."""
        self._stream()
        self._check("cuMemHostRegister", self._lib.cuMemHostRegister_v2(ptr, n, 0))

    def unpin(self, ptr: int) -> None:
        self._stream()
        self._check("cuMemHostUnregister", self._lib.cuMemHostUnregister(ptr))


_driver: Driver | None = None
_tried = False
_lock = threading.Lock()


def driver() -> Driver | None:
    """The CUDA driver when MLX computes on CUDA and the driver answers; None elsewhere (logged once if it fails)."""
    global _driver, _tried
    with _lock:
        if not _tried:
            _tried = True
            if _on_cuda():
                try:
                    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
                    _driver = Driver(ctypes.CDLL(name), held=ctypes.PyDLL(name))
                except (OSError, AttributeError, CudaError) as e:
                    log.warning("CUDA driver not usable for expert uploads (%s): uploads go through page faults", e)
        return _driver


def upload_path(requested: str = "auto") -> str:
    """The upload path a cache asking for `requested` gets: "plain" without a driver, else `requested` ("auto" =
    "copy"). Raises ValueError for a path not in UPLOADS."""
    if requested not in UPLOADS:
        raise ValueError(f"upload path {requested!r}: expected one of {UPLOADS}")
    if driver() is None:
        return "plain"
    return "copy" if requested == "auto" else requested


def _on_cuda() -> bool:
    cuda = getattr(mx, "cuda", None)
    return mx.default_device() != mx.cpu and cuda is not None and cuda.is_available()
