"""Upload paths from read buffers into MLX memory, measured on one store; prints (or writes) JSON.

    python -m bench.upload STORE [--experts 64] [--out upload.json]

Each candidate puts the same `experts` records of layer 0 into a slot bank the compute can use, then a device
op reads every byte of those slots (on CUDA that is where managed pages migrate, so it is part of the price).
The records are read once beforehand into host memory, so the candidates that start from a staging buffer are
timed without I/O; the two that include the read say so.

- view_copy: moed's path. The bank is an MLX array; a numpy view of its memory is written, one memcpy per
  tensor per expert, from the staging buffer.
- mx_array: one `mx.array(numpy)` per tensor per expert (the obvious path), evaluated, then gathered into a
  bank (`mx.stack`) as the compute would need.
- mx_array_batched: the staging records of 8 experts gathered per tensor on the host, then one `mx.array` per
  tensor per batch, concatenated into the bank.
- read_copy: pread (page cache) into a staging buffer, then view_copy: moed's buffered read path end to end.
- read_into_bank: os.preadv straight from the file into the bank's per-tensor slot views, no staging buffer.
On CUDA, where the banks are managed memory (managed.py), three more, each starting with the bank's pages on
the GPU (where a used slot's are) and checked byte for byte afterwards:
- view_copy_prefetch: view_copy, then `cuMemPrefetchAsync` of the rows to the GPU, waited for.
- driver_copy: `cuMemcpyHtoDAsync` per tensor per expert from the (page-locked) staging records.
- read_driver_copy: pread into a page-locked record buffer, then driver_copy: moed's CUDA path end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from moed.daemon.engine import managed
from moed.daemon.store.format import read_manifest

BATCH = 8


def _consume(bank: dict[str, mx.array], n: int) -> float:
    """Seconds for a device op reading every byte of slots 0..n-1 of each bank."""
    t0 = time.perf_counter()
    mx.eval([mx.max(b[:n]) for b in bank.values()])
    return time.perf_counter() - t0


def _new_bank(layout, n: int) -> dict[str, mx.array]:
    bank = {t.name: mx.zeros((n, t.nbytes), dtype=mx.uint8) for t in layout.tensors}
    mx.eval(list(bank.values()))
    return bank


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_upload(cfg: dict) -> dict:
    root = Path(cfg["store"])
    m = read_manifest(root)
    lay, layer = m.layout, m.layers[0]
    n = min(int(cfg.get("experts", 64)), layer.num_experts)
    path = str(root / layer.file)
    fd = os.open(path, os.O_RDONLY)
    try:
        staging = np.empty((n, lay.record_bytes), dtype=np.uint8)
        for e in range(n):
            os.preadv(fd, [staging[e]], e * lay.record_bytes)  # also brings the file into the page cache
        payload = n * sum(t.nbytes for t in lay.tensors)
        out = {}

        def record(name: str, upload_s: float, consume_s: float) -> None:
            out[name] = {"upload_ms_per_expert": 1000 * upload_s / n, "consume_ms_per_expert": 1000 * consume_s / n,
                         "gb_per_s": payload / (upload_s + consume_s) / 1e9}

        # view_copy
        bank = _new_bank(lay, n)
        host = {k: np.array(v, copy=False) for k, v in bank.items()}

        def view_copy(src=staging):
            for e in range(n):
                for t in lay.tensors:
                    host[t.name][e] = src[e, t.offset : t.offset + t.nbytes]

        record("view_copy", _timed(view_copy), _consume(bank, n))

        # mx_array per expert
        def per_expert():
            parts = {t.name: [mx.array(staging[e, t.offset : t.offset + t.nbytes]) for e in range(n)]
                     for t in lay.tensors}
            mx.eval([p for ps in parts.values() for p in ps])
            return {k: mx.stack(v) for k, v in parts.items()}

        def record_new_bank(name: str, build) -> None:
            t0 = time.perf_counter()
            new = build()
            mx.eval(list(new.values()))
            record(name, time.perf_counter() - t0, _consume(new, n))

        record_new_bank("mx_array", per_expert)

        # mx_array batched
        def batched():
            parts = {t.name: [] for t in lay.tensors}
            for s in range(0, n, BATCH):
                for t in lay.tensors:
                    parts[t.name].append(mx.array(np.ascontiguousarray(staging[s : s + BATCH, t.offset : t.offset
                                                                                + t.nbytes])))
            return {k: mx.concatenate(v) for k, v in parts.items()}

        record_new_bank("mx_array_batched", batched)

        # read_copy: pread into one staging record, then the view copy
        buf = np.empty(lay.record_bytes, dtype=np.uint8)

        def read_copy():
            for e in range(n):
                os.preadv(fd, [buf], e * lay.record_bytes)
                for t in lay.tensors:
                    host[t.name][e] = buf[t.offset : t.offset + t.nbytes]

        record("read_copy", _timed(read_copy), _consume(bank, n))

        # read_into_bank: scatter-read each record into the slot views (gaps go to a scratch buffer)
        def read_into():
            for e in range(n):
                views, pos = [], 0
                for t in lay.tensors:
                    if t.offset > pos:
                        views.append(buf[: t.offset - pos])
                    views.append(host[t.name][e])
                    pos = t.offset + t.nbytes
                os.preadv(fd, views, e * lay.record_bytes)

        record("read_into_bank", _timed(read_into), _consume(bank, n))
        correct = {"read_into_bank": _holds(host, staging, lay, n)}
        drv = managed.driver()
        if drv is not None:
            correct.update(_driver_candidates(drv, fd, bank, host, staging, buf, lay, n, record, view_copy))
    finally:
        os.close(fd)
    return {"experts": n, "expert_bytes": payload // n, "candidates": out, "correct": correct}


def _holds(host: dict[str, np.ndarray], staging: np.ndarray, lay, n: int) -> bool:
    """Whether every slot 0..n-1 holds its staging record's bytes."""
    return all(np.array_equal(host[t.name][e], staging[e, t.offset : t.offset + t.nbytes])
               for e in range(n) for t in lay.tensors)


def _driver_candidates(drv, fd, bank, host, staging, buf, lay, n, record, view_copy) -> dict[str, bool]:
    rows = {t.name: host[t.name].ctypes.data for t in lay.tensors}  # slot 0's address per tensor bank
    src0 = staging.ctypes.data

    def on_gpu_zeroed() -> None:  # every row zero and on the GPU, as a used slot's pages are
        for h in host.values():
            h[:n] = 0
        _consume(bank, n)

    def prefetched():
        view_copy()
        drv.to_device([(rows[t.name], n * t.nbytes) for t in lay.tensors])
        drv.copy([])  # waits for this thread's stream: the prefetch is done

    def copied():
        drv.copy([(rows[t.name] + e * t.nbytes, src0 + e * lay.record_bytes + t.offset, t.nbytes)
                  for e in range(n) for t in lay.tensors], pinned=True)

    def read_copied():
        for e in range(n):
            os.preadv(fd, [buf], e * lay.record_bytes)
            drv.copy([(rows[t.name] + e * t.nbytes, buf.ctypes.data + t.offset, t.nbytes) for t in lay.tensors],
                     pinned=True)

    correct = {}
    drv.pin(src0, staging.nbytes)
    drv.pin(buf.ctypes.data, buf.nbytes)
    try:
        for name, fn in (("view_copy_prefetch", prefetched), ("driver_copy", copied),
                         ("read_driver_copy", read_copied)):
            on_gpu_zeroed()
            record(name, _timed(fn), _consume(bank, n))
            correct[name] = _holds(host, staging, lay, n)
    finally:
        drv.unpin(src0)
        drv.unpin(buf.ctypes.data)
    return correct


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--experts", type=int, default=64, help="records of layer 0 each candidate uploads")
    ap.add_argument("--out", help="write the JSON here as well as printing it")
    a = ap.parse_args()
    from moed.daemon.bench.single import backend

    result = {"store": a.store, **run_upload({"store": a.store, "experts": a.experts}), "backend": backend(),
              "upload": managed.upload_path()}
    text = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
