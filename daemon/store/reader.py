"""The expert reader: every routed expert the daemon loads from the packed store comes through here.

`ExpertReader.read(layer, expert, sink)` reads one expert record (exactly `record_bytes` at
`expert * record_bytes` of the layer's file) with one positional read into a page-aligned buffer, hands the
payload to `sink` on the reader thread, checks its CRC-32 against the manifest the first time that expert is
read, puts the buffer back in the pool and resolves the returned future. The sink may see a record before its
checksum is checked: nothing may use what it kept before the future resolves (it fails on a mismatch).

How it runs:
  * Threads: `threads` persistent workers take requests from one priority queue (lower number first, FIFO
    within a priority: 0 = demand reads, higher = prefetch). `os.preadv` and `zlib.crc32` release the GIL, so
    reads and checksums of different experts overlap; sinks run on the workers and hold the GIL while in Python.
    With direct reads, first-read checksums go to `threads // 2` checker threads (at least one), which resolve
    the future and free the buffer, so the workers keep the disk busy (buffered reads checksum inline).
  * Buffers and memory bound: `buffers` (default 2 x threads) record-sized slices of one anonymous mmap (page
    aligned, as O_DIRECT requires). A worker takes a request only once a buffer is free, so expert I/O holds at
    most buffers x record_bytes bytes however many requests are queued (a queued request is only a small tuple).
  * Modes: "direct" bypasses the page cache (Linux O_DIRECT, macOS F_NOCACHE) so the daemon's expert cache, not
    the kernel, decides what stays in RAM. Where the filesystem refuses it (EINVAL on open or first read), that
    file is read buffered, a warning is logged and `stats().mode` says so. "buffered" uses the page cache.
  * One fd per layer file, opened on first use and kept until close().
  * Scatter reads: a sink may carry `targets`, a list of (record offset, writable uint8 view) for the payload's
    pieces (the cache gives its slot rows). Then the record is read with one `preadv` straight into those views
    (gaps and padding into the worker's buffer) and the sink is not called: no staging copy, and the copy into
    the destination happens in the kernel with the GIL released, so workers fill slots in parallel. Direct reads
    do this only when every piece is 4 KiB-aligned in address and length (O_DIRECT's rule), and stop for good if
    the kernel refuses to read into that memory (a GPU's managed memory may be such); otherwise, and where
    `preadv` is missing, the staging path runs. Reading straight into the rows is the faster path where both work
    (bench/results/notebook.md).
  * `buffer_region()` and `on_close(fn)` let the cache page-lock the buffers for the reader's life (CUDA).
  * Fault injection (tests): `faults` (faults.py) is asked before and after each record's positional read, on both
    paths; None, the default, costs one attribute test per read. Errors name the layer number and the expert.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import mmap
import os
import queue
import sys
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .format import Manifest, StoreError

from .faults import Faults

try:
    import fcntl
except ImportError:  # not on Windows; direct mode then falls back to buffered
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Sink = Callable[[np.ndarray], None]
_PREADV = getattr(os, "preadv", None)  # macOS >= 11, Linux; os.pread (one extra copy) elsewhere


def open_for_read(path: str, mode: str) -> tuple[int, bool]:
    """Open `path` read-only; returns (fd, direct), direct saying whether the page cache is bypassed.

    In "direct" mode an EINVAL from the O_DIRECT open (filesystem without direct I/O) gives a buffered fd.
    """
    if mode == "direct":
        o_direct = getattr(os, "O_DIRECT", None)
        f_nocache = getattr(fcntl, "F_NOCACHE", None) if fcntl is not None else None
        if sys.platform == "darwin" and f_nocache is not None:
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.fcntl(fd, f_nocache, 1)  # macOS has no O_DIRECT: F_NOCACHE per fd instead
                return fd, True
            except OSError:
                return fd, False
        if o_direct is not None and sys.platform != "darwin":
            try:
                return os.open(path, os.O_RDONLY | o_direct), True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
    return os.open(path, os.O_RDONLY), False


def pread_into(fd: int, buf: np.ndarray, offset: int) -> int:
    """Fill `buf` from `fd` at `offset`; returns the bytes read (fewer than len(buf) only at end of file)."""
    n, got = len(buf), 0
    while got < n:
        if _PREADV is not None:
            r = _PREADV(fd, [buf[got:]], offset + got)
        else:
            data = os.pread(fd, n - got, offset + got)
            r = len(data)
            buf[got : got + r] = np.frombuffer(data, dtype=np.uint8)
        if r == 0:
            break
        got += r
    return got


@dataclass(frozen=True)
class ReaderStats:
    """A snapshot of an ExpertReader's counters (errors counts failed reads, not sink exceptions)."""

    reads: int  # positional reads that returned (a short read counts, with the bytes it got)
    bytes_read: int
    read_ns: int  # summed over threads: time spent inside preadv/pread
    verify_ns: int  # summed over threads: time spent computing CRC-32
    errors: int
    mode: str  # "direct", "buffered", or "buffered (direct unsupported on <file>)"
    scatter_reads: int = 0  # of `reads`, those read straight into the sink's targets (see the module docstring)


@dataclass
class _LayerFile:
    path: str
    fd: int
    direct: bool
    proven: bool = False  # a read has succeeded on this fd: a later EINVAL is an error, not a fallback


class ExpertReader:
    """Reads expert records of one store; see the module docstring for threads, buffers and the memory bound.

    `layer` arguments are the manifest's layer *positions* (indices into `manifest.layers`), not the model's
    layer numbers (`LayerEntry.index`, which error messages name); `expert` is the expert id in that layer.
    """

    def __init__(self, root: str | os.PathLike[str], manifest: Manifest, *, mode: str = "direct",
                 threads: int = 4, verify: bool = True, buffers: int | None = None):
        if mode not in ("direct", "buffered"):
            raise ValueError(f"mode must be 'direct' or 'buffered', not {mode!r}")
        if threads < 1 or (buffers is not None and buffers < 1):
            raise ValueError("threads and buffers must be at least 1")
        self.root, self.manifest, self.verify = Path(root), manifest, verify
        self._mode, self._mode_in_effect = mode, mode
        rb = manifest.layout.record_bytes
        nbuf = buffers if buffers is not None else 2 * threads
        self._mm: mmap.mmap | None = mmap.mmap(-1, nbuf * rb)  # anonymous mmap: page aligned
        self._bufs: list[np.ndarray] | None = [np.frombuffer(self._mm, np.uint8, rb, i * rb) for i in range(nbuf)]
        self._free = list(range(nbuf))
        self._heap: list[tuple[int, int, int, int, Sink, Future[None]]] = []
        self._seq = itertools.count()  # FIFO tie-break within a priority
        self._cond = threading.Condition()  # guards _heap, _free, _closed
        self._closed = False
        self._files: dict[int, _LayerFile] = {}  # by layer position, guarded by _files_lock
        self._stale_fds: list[int] = []  # replaced by a fallback; closed only in close(), a read may still use one
        self._files_lock = threading.Lock()
        self._verified = [bytearray(layer.num_experts) for layer in manifest.layers]
        self._stats_lock = threading.Lock()
        self._reads = self._bytes = self._read_ns = self._verify_ns = self._errors = self._scattered = 0
        self._direct_scatter = True  # cleared if the kernel refuses a direct read into a sink's memory
        self.faults: Faults | None = None  # fault injection for tests (faults.py); None on the normal path
        self._on_close: list = []  # callbacks run by close() before the buffers are unmapped
        self._workers = [threading.Thread(target=self._work, name=f"moed-reader-{i}", daemon=True)
                         for i in range(threads)]
        # Direct reads hand first-read checksums to these threads, so the workers go back to the disk at once
        # (the CRC of a record holds a thread off the disk ~10 % of a read; a cold fill lost 22 % without this).
        self._checks: queue.SimpleQueue = queue.SimpleQueue()
        n_checkers = max(1, threads // 2) if mode == "direct" and verify else 0
        self._checkers = [threading.Thread(target=self._check_deferred, name=f"moed-checksum-{i}", daemon=True)
                          for i in range(n_checkers)]
        for t in self._workers + self._checkers:
            t.start()

    def buffer_region(self) -> tuple[int, int]:
        """(address, bytes) of the workers' buffers, one contiguous mapping (the cache page-locks it on CUDA)."""
        bufs = self._bufs
        if bufs is None:
            raise StoreError("expert reader is closed")
        return bufs[0].ctypes.data, len(bufs) * self.manifest.layout.record_bytes

    def on_close(self, fn) -> None:
        """Run `fn()` in close(), after the workers stop and before the buffers are unmapped."""
        self._on_close.append(fn)

    def read(self, layer: int, expert: int, sink: Sink, *, priority: int = 0) -> Future[None]:
        """Queue a read of expert `expert` of layer position `layer`; `sink(payload)` runs on a reader thread.

        `payload` is a read-only uint8 view of the buffer's first payload_bytes, valid only during the call: the
        sink copies what it keeps. The future resolves (None) after the sink returns and the buffer is back in the
        pool; it fails with StoreError on I/O, truncation or checksum errors, or with whatever the sink raised.
        """
        if not (0 <= layer < len(self.manifest.layers) and 0 <= expert < self.manifest.layers[layer].num_experts):
            raise IndexError(f"no expert {expert} at layer position {layer} in this store")
        fut: Future[None] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("ExpertReader is closed")
            heapq.heappush(self._heap, (priority, next(self._seq), layer, expert, sink, fut))
            self._cond.notify()
        return fut

    def read_now(self, layer: int, expert: int) -> np.ndarray:
        """Read one expert synchronously and return a copy of its payload (do not call from a sink)."""
        out: list[np.ndarray] = []
        self.read(layer, expert, lambda p: out.append(p.copy())).result()
        return out[0]

    def stats(self) -> ReaderStats:
        with self._stats_lock:
            return ReaderStats(self._reads, self._bytes, self._read_ns, self._verify_ns, self._errors,
                               self._mode_in_effect, self._scattered)

    def close(self) -> None:
        """Cancel queued reads, let running ones finish, stop the workers, close fds, unmap buffers. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for *_, fut in pending:
            fut.cancel()
        me = threading.current_thread()
        for t in self._workers:
            if t is not me:  # close() from inside a sink must not join its own thread
                t.join()
        for _ in self._checkers:  # after every queued checksum: each read's future resolves
            self._checks.put(None)
        for t in self._checkers:
            if t is not me:
                t.join()
        with self._files_lock:
            for fd in [f.fd for f in self._files.values()] + self._stale_fds:
                os.close(fd)
            self._files.clear()
            self._stale_fds.clear()
        for fn in self._on_close:
            try:
                fn()
            except Exception as e:  # closing goes on: the buffers are unmapped regardless
                log.warning("expert reader close hook failed: %s", e)
        self._bufs = None  # drop our views so the mmap has no exported buffers left
        try:
            if self._mm is not None:
                self._mm.close()
        except BufferError:  # a sink kept a payload view: leave the mapping to the garbage collector
            log.debug("expert reader buffers still referenced at close; unmapped when released")
        self._mm = None

    def __enter__(self) -> "ExpertReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            with self._cond:
                # take a request only with a free buffer in hand: the most urgent request gets the next buffer
                while not self._closed and not (self._heap and self._free):
                    self._cond.wait()
                if self._closed:
                    return
                _, _, layer, expert, sink, fut = heapq.heappop(self._heap)
                bi = self._free.pop()
            if fut.set_running_or_notify_cancel():
                self._serve(layer, expert, sink, fut, bi)
            else:
                self._release(bi)

    def _release(self, bi: int) -> None:
        with self._cond:
            self._free.append(bi)
            self._cond.notify()

    def _serve(self, layer: int, expert: int, sink: Sink, fut: Future[None], bi: int) -> None:
        try:
            buf = self._bufs[bi]  # type: ignore[index]  # set until close()
            targets = getattr(sink, "targets", None)  # rows to read straight into (the cache's SlotSink), or None
            check = self._scatter(layer, expert, buf, targets) if targets is not None else False
            if check is False:
                payload, check = self._fetch(layer, expert, buf)
                sink(payload)
            if check is not None:
                if self._checkers and self._files[layer].direct:
                    self._checks.put((check, fut, bi))  # the checker resolves the future, releases the buffer
                    return
                self._checksum(*check)
        except BaseException as e:  # the future must always resolve and the buffer go back, whatever went wrong
            self._fail(fut, bi, e)
        else:
            self._release(bi)
            fut.set_result(None)

    def _check_deferred(self) -> None:
        while (job := self._checks.get()) is not None:
            check, fut, bi = job
            try:
                self._checksum(*check)
            except BaseException as e:
                self._fail(fut, bi, e)
            else:
                self._release(bi)
                fut.set_result(None)

    def _fail(self, fut: Future[None], bi: int, e: BaseException) -> None:
        if isinstance(e, StoreError):  # a failed read (not a sink's own exception)
            with self._stats_lock:
                self._errors += 1
        self._release(bi)
        fut.set_exception(e)

    def _fetch(self, layer: int, expert: int, buf: np.ndarray) -> tuple[np.ndarray, tuple | None]:
        """Read one record into buf and check its length; returns the read-only payload view and the checksum
        still to verify (None: verified before)."""
        offset = self.manifest.layers[layer].offset(expert, self.manifest.layout)
        got, path = self._read_record(layer, expert, buf, offset)
        if self.faults is not None:
            got = self.faults.after(layer, expert, [buf], got)
        payload = buf[: self.manifest.layout.payload_bytes]
        payload.flags.writeable = False
        return payload, self._check(layer, expert, path, offset, got, [buf])

    def _scatter(self, layer: int, expert: int, buf: np.ndarray,
                 targets: list[tuple[int, np.ndarray]]) -> tuple | None | bool:
        """Read the record straight into `targets` (see the module docstring) and return the checksum still to
        verify (None: verified before); False: not read, use the staging path."""
        entry, layout = self.manifest.layers[layer], self.manifest.layout
        lf = self._file(layer)
        iov, pos = [], 0
        for off, view in targets:  # gaps between the pieces, and the padding after them, land in buf
            if off > pos:
                iov.append(buf[pos:off])
            iov.append(view)
            pos = off + view.nbytes
        if layout.record_bytes > pos:
            iov.append(buf[pos : layout.record_bytes])
        aligned = all(v.ctypes.data % 4096 == 0 and v.nbytes % 4096 == 0 for v in iov)  # O_DIRECT's rule
        if _PREADV is None or (lf.direct and not (self._direct_scatter and aligned)):
            return False
        offset = entry.offset(expert, layout)
        t0 = time.perf_counter_ns()
        try:
            if self.faults is not None:
                self.faults.before(layer, expert)
            got = _PREADV(lf.fd, iov, offset)
        except OSError as e:
            if lf.direct:
                # EINVAL: the staging path knows how to fall back to buffered reads. Anything else: memory the
                # kernel will not DMA into (e.g. a GPU's managed memory): direct reads stop scattering, for good.
                if e.errno != errno.EINVAL:
                    self._direct_scatter = False
                    log.warning("direct reads into the cache's memory failed (%s); reading through buffers", e)
                return False
            raise StoreError(f"layer {entry.index} expert {expert}: reading {lf.path} at offset {offset} "
                             f"failed: {e}") from e
        if self.faults is not None:
            got = self.faults.after(layer, expert, iov, got)
        with self._stats_lock:
            self._reads += 1
            self._scattered += 1
            self._bytes += got
            self._read_ns += time.perf_counter_ns() - t0
        lf.proven = True
        return self._check(layer, expert, lf.path, offset, got, iov)

    def _check(self, layer: int, expert: int, path: str, offset: int, got: int,
               pieces: list[np.ndarray]) -> tuple | None:
        """The length of a record just read (raises StoreError if short); returns the arguments of `_checksum`
        if this is the expert's first read (CRC-32 still to verify), else None. `pieces` hold it in order."""
        entry, layout = self.manifest.layers[layer], self.manifest.layout
        if got != layout.record_bytes:  # a record is one read; a short one means a truncated file
            raise StoreError(f"layer {entry.index} expert {expert}: short read of {path} at offset {offset}: "
                             f"expected {layout.record_bytes} bytes, got {got} (file truncated?)")
        if not self.verify or self._verified[layer][expert]:
            return None
        return layer, expert, path, offset, pieces

    def _checksum(self, layer: int, expert: int, path: str, offset: int, pieces: list[np.ndarray]) -> None:
        """CRC-32 of a record's payload against the manifest; raises StoreError naming the expert on a mismatch."""
        entry, layout = self.manifest.layers[layer], self.manifest.layout
        t0, crc, left = time.perf_counter_ns(), 0, layout.payload_bytes
        for v in pieces:  # zlib releases the GIL for large buffers: threads checksum in parallel
            n = min(v.nbytes, left)
            crc, left = zlib.crc32(v[:n], crc), left - n
        with self._stats_lock:
            self._verify_ns += time.perf_counter_ns() - t0
        want = entry.checksums[expert]
        if crc != want:
            raise StoreError(f"layer {entry.index} expert {expert}: checksum mismatch in {path} at offset "
                             f"{offset}: manifest says crc32 {want:08x}, record has {crc:08x}")
        self._verified[layer][expert] = 1

    def _read_record(self, layer: int, expert: int, buf: np.ndarray, offset: int) -> tuple[int, str]:
        lf = self._file(layer)
        try:
            if self.faults is not None:
                self.faults.before(layer, expert)
            try:
                got = self._timed_pread(lf.fd, buf, offset)
            except OSError as e:
                if not (e.errno == errno.EINVAL and lf.direct and not lf.proven):
                    raise
                lf = self._fall_back(layer, lf)  # the fs accepted O_DIRECT on open but refuses the read
                got = self._timed_pread(lf.fd, buf, offset)
        except OSError as e:
            raise StoreError(f"layer {self.manifest.layers[layer].index} expert {expert}: reading {lf.path} at "
                             f"offset {offset} failed: {e}") from e
        lf.proven = True
        return got, lf.path

    def _timed_pread(self, fd: int, buf: np.ndarray, offset: int) -> int:
        t0 = time.perf_counter_ns()
        got = pread_into(fd, buf, offset)
        dt = time.perf_counter_ns() - t0
        with self._stats_lock:
            self._reads += 1
            self._bytes += got
            self._read_ns += dt
        return got

    def _file(self, layer: int) -> _LayerFile:
        lf = self._files.get(layer)
        if lf is not None:
            return lf
        with self._files_lock:
            if layer not in self._files:
                if self._closed:
                    raise StoreError("ExpertReader is closed")
                path = str(self.root / self.manifest.layers[layer].file)
                try:
                    fd, direct = open_for_read(path, self._mode)
                except OSError as e:
                    raise StoreError(f"cannot open expert file {path}: {e}") from e
                self._files[layer] = _LayerFile(path, fd, direct)
                if self._mode == "direct" and not direct:
                    self._note_fallback(path)
            return self._files[layer]

    def _fall_back(self, layer: int, failed: _LayerFile) -> _LayerFile:
        with self._files_lock:
            lf = self._files[layer]
            if lf is failed:  # another thread may have replaced it already
                try:
                    fd, _ = open_for_read(failed.path, "buffered")
                except OSError as e:
                    raise StoreError(f"cannot open expert file {failed.path}: {e}") from e
                self._stale_fds.append(failed.fd)
                lf = self._files[layer] = _LayerFile(failed.path, fd, False)
                self._note_fallback(failed.path)
            return lf

    def _note_fallback(self, path: str) -> None:
        with self._stats_lock:
            if self._mode_in_effect != "direct":
                return  # report the first fallback once
            self._mode_in_effect = f"buffered (direct unsupported on {path})"
        log.warning("expert store: direct I/O is not supported on %s; reading it through the page cache", path)
