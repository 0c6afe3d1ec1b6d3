"""A tiny safetensors reader and streaming writer that never holds more than one tensor (or one slice) in memory.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__": {str: str}}, padded with spaces),
then the data; offsets are relative to the first data byte. Tensors are C-contiguous, so expert e of a stacked
[E, ...] tensor is the contiguous byte range begin + e * (end - begin) / E: `SafetensorsFile.read(name, index=e)`
reads just those bytes with `os.pread`.

`SafetensorsWriter` writes the header first (names, dtypes and shapes must be known up front) and then the tensors in
header order, one at a time, so a shard of any size is written with one tensor's worth of memory.

Arrays are numpy arrays holding the raw bytes; bfloat16 is carried as uint16 (see format.DTYPES). Every problem with
a file (short, bad header, offsets out of range, sizes that disagree with the shape) raises StoreError naming it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

import numpy as np

from .format import DTYPES, StoreError, align

MAX_HEADER = 100 << 20  # the reference implementation's limit: a larger "header" means a corrupt file

# safetensors dtype names <-> mlx dtype names (the names format.DTYPES and the manifest use)
ST_TO_MLX: dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
    "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16", "F32": "float32",
    "F64": "float64",
}  # fmt: skip
MLX_TO_ST = {v: k for k, v in ST_TO_MLX.items()}
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4}
ITEMSIZE |= {"U64": 8, "I64": 8, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: absolute file offsets [begin, end)."""

    name: str
    dtype: str  # safetensors spelling, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def mlx_dtype(self) -> str:
        if self.dtype not in ST_TO_MLX:
            raise StoreError(f"tensor {self.name}: dtype {self.dtype} is not supported")
        return ST_TO_MLX[self.dtype]


class SafetensorsFile:
    """The parsed header of one .safetensors file plus positional reads of its tensors."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise StoreError(f"cannot open {self.path}: {e}") from e
        try:
            self.tensors, self.metadata = self._parse(os.fstat(self._fd).st_size)
        except BaseException:
            os.close(self._fd)
            raise

    def _parse(self, size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise StoreError(f"{self.path} is not a safetensors file: {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise StoreError(f"{self.path}: corrupt safetensors header (length {n}, file {size} bytes)")
        try:
            header = json.loads(os.pread(self._fd, n, 8))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            metadata = dict(header.pop("__metadata__", None) or {})
            tensors = {k: self._entry(k, v, 8 + n, size) for k, v in header.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise StoreError(f"{self.path}: corrupt safetensors header: {e}") from e
        return tensors, metadata

    def _entry(self, name: str, d: Mapping[str, Any], data_start: int, size: int) -> TensorInfo:
        dtype, shape, (b, e) = str(d["dtype"]), tuple(int(s) for s in d["shape"]), d["data_offsets"]
        if dtype not in ITEMSIZE:
            raise ValueError(f"tensor {name} has unknown dtype {dtype}")
        want = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
        if not (0 <= b <= e and data_start + e <= size and e - b == want):
            raise ValueError(f"tensor {name}: data_offsets {[b, e]} do not fit shape {list(shape)} of {dtype}")
        return TensorInfo(name, dtype, shape, data_start + int(b), data_start + int(e))

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise StoreError(f"tensor {name} is not in {self.path}") from None

    def read(self, name: str, index: int | None = None) -> np.ndarray:
        """The tensor's bytes as a numpy array of its shape; with `index`, only [index] of the outermost axis."""
        t = self.info(name)
        begin, end, shape = t.begin, t.end, t.shape
        if index is not None:
            if not shape or not 0 <= index < shape[0]:
                raise StoreError(f"{self.path}: tensor {name} of shape {list(shape)} has no slice [{index}]")
            step = (end - begin) // shape[0]
            begin, end, shape = begin + index * step, begin + (index + 1) * step, shape[1:]
        buf = bytearray(end - begin)
        view, pos = memoryview(buf), 0
        while pos < len(buf):  # one pread may return less than asked (Linux caps a read at ~2 GiB)
            got = os.preadv(self._fd, [view[pos:]], begin + pos)
            if got <= 0:
                raise StoreError(f"{self.path}: short read of tensor {name} ({pos} of {len(buf)} bytes)")
            pos += got
        return np.frombuffer(buf, dtype=_np_dtype(t)).reshape(shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _np_dtype(t: TensorInfo) -> np.dtype:
    mlx = t.mlx_dtype
    return np.dtype(DTYPES[mlx][0] if mlx in DTYPES else mlx)


class SafetensorsWriter:
    """Writes one .safetensors file: header from (name, mlx dtype, shape) specs, then `write` each tensor in order."""

    def __init__(self, path: Path, specs: Sequence[tuple[str, str, Sequence[int]]], metadata: Mapping[str, str]):
        self.path = path
        header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
        self._todo: list[tuple[str, int]] = []
        off = 0
        for name, dtype, shape in specs:
            st = MLX_TO_ST[dtype]
            n = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[st]
            header[name] = {"dtype": st, "shape": [int(s) for s in shape], "data_offsets": [off, off + n]}
            self._todo.append((name, n))
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (align(len(raw), 8) - len(raw))  # the data starts 8-byte aligned, as the spec recommends
        self._f: BinaryIO = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, data: np.ndarray) -> None:
        """Append the next tensor's bytes (it must be the next one in header order)."""
        want, n = self._todo.pop(0)
        if name != want or data.nbytes != n:
            raise StoreError(f"{self.path}: expected {want} ({n} bytes), got {name} ({data.nbytes} bytes)")
        self._f.write(memoryview(np.ascontiguousarray(data)).cast("B"))

    def close(self) -> None:
        if self._todo:
            raise StoreError(f"{self.path}: tensors {[n for n, _ in self._todo]} were never written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


class SafetensorsSet:
    """The tensors of several files (a sharded checkpoint), looked up by name."""

    def __init__(self, paths: Sequence[Path]):
        self.files: list[SafetensorsFile] = []
        self._where: dict[str, SafetensorsFile] = {}
        try:
            for p in paths:
                f = SafetensorsFile(p)
                self.files.append(f)
                for k in f.tensors:
                    if k in self._where:
                        raise StoreError(f"tensor {k} is in both {self._where[k].path} and {p}")
                    self._where[k] = f
        except BaseException:
            self.close()
            raise

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> Path | None:
        f = self._where.get(name)
        return f.path if f else None

    def info(self, name: str, hint: str = "") -> TensorInfo:
        f = self._where.get(name)
        if f is None:
            where = self.files[0].path.parent if self.files else "the source"
            raise StoreError(f"tensor {name} is missing from {where}{hint}")
        return f.info(name)

    def read(self, name: str, index: int | None = None) -> np.ndarray:
        self.info(name)
        return self._where[name].read(name, index)

    def close(self) -> None:
        for f in self.files:
            f.close()
