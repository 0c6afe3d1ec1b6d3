"""Raw device read throughput, measured with the same machinery the ExpertReader uses.

`measure_device_throughput` issues parallel positional reads of `block_bytes` at random aligned offsets of the
given files (typically a store's experts/layer-NNN.bin files) into page-aligned buffers, with O_DIRECT / F_NOCACHE
in "direct" mode. Benchmarks put moed's expert read throughput next to this number, measured in the same run.

In "direct" mode the page cache is bypassed, so there is no need to drop caches first. In "buffered" mode the
numbers are page-cache numbers (whatever of the files is cached is served from RAM); the result says so.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..store.reader import open_for_read, pread_into

ALIGN = 4096  # O_DIRECT needs offset, length and buffer aligned to the logical block size; 4 KiB is safe


def _open_all(paths: Sequence[str], mode: str, probe_bytes: int) -> tuple[list[tuple[int, int]], str]:
    """Open each file (fd, size); fall back to buffered where direct reads are refused. Returns files and mode."""
    files, effective = [], mode
    probe = mmap.mmap(-1, probe_bytes)
    try:
        buf = np.frombuffer(probe, dtype=np.uint8)
        for path in paths:
            fd, direct = open_for_read(path, mode)
            if direct:
                try:
                    pread_into(fd, buf, 0)  # a filesystem may accept O_DIRECT on open and refuse the read
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        os.close(fd)
                        raise
                    os.close(fd)
                    fd, direct = open_for_read(path, "buffered")
            if mode == "direct" and not direct and effective == "direct":
                effective = f"buffered (direct unsupported on {path})"
            files.append((fd, os.fstat(fd).st_size))
        del buf
    finally:
        probe.close()
    return files, effective


def measure_device_throughput(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    mode: str = "direct",
    block_bytes: int = 4 << 20,
    threads: int = 4,
    total_bytes: int = 1 << 30,
    seconds: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Read throughput of the device holding `path` (one file or several), as moed would read it.

    `threads` workers each read `block_bytes` blocks at random ALIGN-aligned offsets of a random file until
    `total_bytes` have been read in all or, if `seconds` is given, until that much time has passed. Pass the
    store's record_bytes as `block_bytes` to measure the expert-read pattern.

    Returns {"bytes", "seconds", "gb_per_s" (1e9 bytes/s), "mode" (mode in effect), "threads", "block_bytes"},
    plus "note" in buffered mode: those are page-cache numbers.
    """
    if mode not in ("direct", "buffered"):
        raise ValueError(f"mode must be 'direct' or 'buffered', not {mode!r}")
    if block_bytes <= 0 or block_bytes % ALIGN:
        raise ValueError(f"block_bytes must be a positive multiple of {ALIGN}, not {block_bytes}")
    paths = [str(path)] if isinstance(path, (str, os.PathLike)) else [str(p) for p in path]
    files, effective = _open_all(paths, mode, ALIGN)
    try:
        usable = [(fd, size) for fd, size in files if size >= block_bytes]
        if not usable:
            raise ValueError(f"no file of {paths} holds a whole block of {block_bytes} bytes")
        done = _run_workers(usable, block_bytes, threads, total_bytes, seconds, seed)
    finally:
        for fd, _ in files:
            os.close(fd)
    nbytes, elapsed = done
    out: dict[str, Any] = {
        "bytes": nbytes,
        "seconds": elapsed,
        "gb_per_s": nbytes / elapsed / 1e9 if elapsed > 0 else 0.0,
        "mode": effective,
        "threads": threads,
        "block_bytes": block_bytes,
    }
    if not effective.startswith("direct"):
        out["note"] = "buffered reads: page-cache numbers, not device numbers"
    return out


def _run_workers(files: list[tuple[int, int]], block_bytes: int, threads: int, total_bytes: int,
                 seconds: float | None, seed: int) -> tuple[int, float]:
    """Run the reading threads; returns (bytes read, seconds from first start to last finish)."""
    lock = threading.Lock()
    state = {"claimed": 0, "bytes": 0}
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    mm = mmap.mmap(-1, threads * block_bytes)  # page aligned; one block per thread
    whole = np.frombuffer(mm, dtype=np.uint8)
    deadline: list[float] = [0.0]

    def claim() -> bool:  # reserve the next block so the total is split between threads without overshoot
        with lock:
            if errors:
                return False
            if seconds is not None:
                return time.perf_counter() < deadline[0]
            if state["claimed"] + block_bytes > max(total_bytes, block_bytes):
                return False
            state["claimed"] += block_bytes
            return True

    def worker(i: int) -> None:
        rng, buf, n = random.Random(seed + i), whole[i * block_bytes : (i + 1) * block_bytes], 0
        start.wait()
        try:
            while claim():
                fd, size = files[rng.randrange(len(files))]
                offset = rng.randrange((size - block_bytes) // ALIGN + 1) * ALIGN
                n += pread_into(fd, buf, offset)
        except BaseException as e:  # surfaced to the caller below
            errors.append(e)
        with lock:
            state["bytes"] += n

    workers = [threading.Thread(target=worker, args=(i,), name=f"moed-iobench-{i}") for i in range(threads)]
    for t in workers:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + (seconds or 0.0)
    start.wait()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - t0
    del whole
    mm.close()
    if errors:
        raise errors[0]
    return state["bytes"], elapsed


def store_layer_files(root: str | os.PathLike[str]) -> list[str]:
    """The expert layer files of a store, for measure_device_throughput."""
    from ..store.format import read_manifest

    return [str(Path(root) / layer.file) for layer in read_manifest(root).layers]
