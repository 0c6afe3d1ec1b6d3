"""The packed expert store: on-disk layout, manifest, and the record layout of one expert.

A store is a folder (see docs/store-format.md for the full description):

    manifest.json                 format name + version, model config, expert record layout, per-layer files,
                                  per-expert offset, length and CRC-32
    config.json, tokenizer files  copied from the source so mlx-lm can build the model and tokenizer
    model*.safetensors            the dense (non-expert) weights, in mlx-lm layout (already sanitized/quantized)
    experts/layer-NNN.bin         one file per MoE layer; expert e is one contiguous record at e * record_bytes

An expert record holds every tensor of one expert (e.g. gate_proj.weight/scales/biases, up_proj..., down_proj...)
back to back, each at an offset aligned to TENSOR_ALIGN inside the record; the record is padded to RECORD_ALIGN
(4 KiB) so that a single O_DIRECT read of `record_bytes` at the record's offset fetches the whole expert.

This module has no MLX dependency: it describes bytes. The writer appends records and computes checksums; the
manifest is written last, and the store is only renamed to its final name by the converter once complete.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

import numpy as np

FORMAT_NAME = "moed-expert-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXPERTS_DIR = "experts"
RECORD_ALIGN = 4096  # one direct read per expert: records start and end on 4 KiB boundaries
TENSOR_ALIGN = 64  # tensors inside a record start on cache-line boundaries

# dtype names as mlx spells them -> (numpy dtype used to hold the raw bytes, itemsize)
DTYPES: dict[str, tuple[str, int]] = {
    "uint32": ("uint32", 4),
    "uint8": ("uint8", 1),
    "int8": ("int8", 1),
    "float32": ("float32", 4),
    "float16": ("float16", 2),
    "bfloat16": ("uint16", 2),  # numpy has no bfloat16: bytes are carried as uint16
}


class StoreError(Exception):
    """A store is missing, incomplete, of another format version, or corrupt; the message names what and where."""


def align(n: int, a: int) -> int:
    """Round n up to a multiple of a."""
    return (n + a - 1) // a * a


def crc32(buf: Any) -> int:
    """CRC-32 of a bytes-like object (zlib releases the GIL for large buffers, so reader threads run in parallel)."""
    return zlib.crc32(buf) & 0xFFFFFFFF


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of an expert record: `name` is relative to the expert module (e.g. 'gate_proj.scales')."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # per-expert shape (without the leading expert axis)
    offset: int  # byte offset inside the record

    @cached_property  # read per expert landed, on the hot path
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype][1]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "TensorSpec":
        return TensorSpec(str(d["name"]), str(d["dtype"]), tuple(int(x) for x in d["shape"]), int(d["offset"]))


@dataclass(frozen=True)
class RecordLayout:
    """Where each tensor of one expert sits inside its record; identical for every expert of every layer."""

    tensors: tuple[TensorSpec, ...]
    payload_bytes: int  # end of the last tensor
    record_bytes: int  # payload padded to RECORD_ALIGN

    @staticmethod
    def build(specs: Iterable[tuple[str, str, Sequence[int]]]) -> "RecordLayout":
        """Lay out (name, dtype, per-expert shape) tensors in the given order."""
        tensors, off = [], 0
        for name, dtype, shape in specs:
            if dtype not in DTYPES:
                raise StoreError(f"tensor {name}: dtype {dtype} is not supported in an expert record")
            off = align(off, TENSOR_ALIGN)
            t = TensorSpec(name, dtype, tuple(int(s) for s in shape), off)
            tensors.append(t)
            off += t.nbytes
        return RecordLayout(tuple(tensors), off, align(max(off, 1), RECORD_ALIGN))

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def pack(self, arrays: Mapping[str, np.ndarray]) -> bytearray:
        """Pack one expert's tensors (numpy arrays holding the raw bytes) into a zero-padded record."""
        rec = bytearray(self.record_bytes)
        for t in self.tensors:
            a = arrays.get(t.name)
            if a is None:
                raise StoreError(f"expert record is missing tensor {t.name}")
            if tuple(a.shape) != t.shape or a.dtype.itemsize != DTYPES[t.dtype][1]:
                raise StoreError(
                    f"tensor {t.name}: expected shape {t.shape} of {t.dtype}, got {tuple(a.shape)} of {a.dtype}"
                )
            rec[t.offset : t.offset + t.nbytes] = np.ascontiguousarray(a).tobytes()
        return rec

    def unpack(self, record: Any) -> dict[str, np.ndarray]:
        """Views of each tensor inside a record buffer (bfloat16 comes back as uint16 raw bytes)."""
        buf = np.frombuffer(record, dtype=np.uint8)
        return {
            t.name: buf[t.offset : t.offset + t.nbytes].view(DTYPES[t.dtype][0]).reshape(t.shape)
            for t in self.tensors
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": [t.to_json() for t in self.tensors],
            "payload_bytes": self.payload_bytes,
            "record_bytes": self.record_bytes,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "RecordLayout":
        return RecordLayout(
            tuple(TensorSpec.from_json(t) for t in d["tensors"]), int(d["payload_bytes"]), int(d["record_bytes"])
        )


@dataclass(frozen=True)
class LayerEntry:
    """One MoE layer's expert file: `module` is the mlx-lm module path of the SwitchGLU it replaces."""

    index: int
    module: str
    file: str  # relative to the store root
    num_experts: int
    checksums: tuple[int, ...]  # CRC-32 of each record's payload bytes

    def offset(self, expert: int, layout: RecordLayout) -> int:
        return expert * layout.record_bytes

    def to_json(self, layout: RecordLayout) -> dict[str, Any]:
        return {
            "index": self.index,
            "module": self.module,
            "file": self.file,
            "num_experts": self.num_experts,
            # [offset, length, crc32] per expert, as the format document promises
            "experts": [[e * layout.record_bytes, layout.record_bytes, c] for e, c in enumerate(self.checksums)],
        }

    @staticmethod
    def from_json(d: Mapping[str, Any], layout: RecordLayout) -> "LayerEntry":
        experts = d["experts"]
        for e, (off, length, _) in enumerate(experts):
            if off != e * layout.record_bytes or length != layout.record_bytes:
                raise StoreError(f"layer {d['index']}: expert {e} has offset/length {off}/{length}, not packed")
        return LayerEntry(
            int(d["index"]), str(d["module"]), str(d["file"]), int(d["num_experts"]), tuple(int(x[2]) for x in experts)
        )


@dataclass(frozen=True)
class Manifest:
    """Everything needed to read a store; written last, read first."""

    model_type: str
    config: dict[str, Any]
    quantization: dict[str, Any] | None  # {"bits", "group_size", "mode"} of the expert tensors, None if float
    layout: RecordLayout
    layers: tuple[LayerEntry, ...]
    dense_files: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)  # what it was converted from (informational)

    @property
    def expert_bytes(self) -> int:
        """Bytes one cached expert occupies: its tensors, without the record's alignment padding."""
        return sum(t.nbytes for t in self.layout.tensors)

    @property
    def total_expert_bytes(self) -> int:
        return sum(layer.num_experts for layer in self.layers) * self.expert_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model_type": self.model_type,
            "config": self.config,
            "quantization": self.quantization,
            "record": self.layout.to_json(),
            "layers": [layer.to_json(self.layout) for layer in self.layers],
            "dense_files": list(self.dense_files),
            "source": self.source,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "Manifest":
        if d.get("format") != FORMAT_NAME:
            raise StoreError(f"not a moed store manifest (format={d.get('format')!r})")
        if d.get("version") != FORMAT_VERSION:
            raise StoreError(f"store format version {d.get('version')} is not supported (this moed reads {FORMAT_VERSION})")
        layout = RecordLayout.from_json(d["record"])
        return Manifest(
            model_type=str(d["model_type"]),
            config=dict(d["config"]),
            quantization=d.get("quantization"),
            layout=layout,
            layers=tuple(LayerEntry.from_json(x, layout) for x in d["layers"]),
            dense_files=tuple(d["dense_files"]),
            source=dict(d.get("source", {})),
        )


def not_a_store(root: Path) -> str:
    """Why `root` (with no manifest) is not a store, and what to do: it is missing, a model checkpoint, a model
    hub id, or a conversion's leftovers."""
    if not root.exists():
        if not root.is_absolute() and len(root.parts) == 2 and not str(root).startswith("."):
            return (f"{root} is not a folder here; if it is a Hugging Face model id, download the checkpoint and "
                    f"convert it: `moed convert CHECKPOINT_FOLDER STORE`")
        return f"{root} does not exist: give the folder `moed convert` wrote"
    if not root.is_dir():
        return f"{root} is a file, not a store folder: give the folder `moed convert` wrote"
    if not (root / "experts").is_dir() and (root / "config.json").is_file() and any(root.glob("*.safetensors")):
        return (f"{root} is a model checkpoint, not a moed store: convert it with "
                f"`moed convert {root} {root}-store`, then use the store")
    if ".partial-" in root.name:
        return f"{root} is the unfinished output of a conversion: run `moed convert` again"
    return (f"{root} is not a moed store: {MANIFEST} is missing (was the conversion interrupted? run "
            f"`moed convert` again)")


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read and check a store's manifest and that every file it names exists with the size it implies.

    Raises:
        StoreError: the folder is not a complete store of this format version.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise StoreError(not_a_store(root))
    try:
        manifest = Manifest.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise StoreError(f"{path} is corrupt: {type(e).__name__}: {e}") from e
    for layer in manifest.layers:
        f = root / layer.file
        want = layer.num_experts * manifest.layout.record_bytes
        if not f.is_file():
            raise StoreError(f"layer {layer.index}: expert file {f} is missing")
        if f.stat().st_size != want:
            raise StoreError(f"layer {layer.index}: expert file {f} has {f.stat().st_size} bytes, expected {want}")
    for name in manifest.dense_files:
        if not (root / name).is_file():
            raise StoreError(f"dense weight file {root / name} is missing")
    return manifest


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (temp file + fsync + rename)."""
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest.to_json(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)


class LayerFileWriter:
    """Appends the records of one layer's experts, in expert order, and collects their checksums."""

    def __init__(self, root: Path, index: int, module: str, num_experts: int, layout: RecordLayout):
        self.entry_args = (index, module, f"{EXPERTS_DIR}/layer-{index:03d}.bin", num_experts)
        self.layout = layout
        (root / EXPERTS_DIR).mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = open(root / self.entry_args[2], "wb")
        self._checksums: list[int] = []

    def append(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Append the next expert (expert ids are implicit: 0, 1, 2, ...)."""
        rec = self.layout.pack(arrays)
        self._checksums.append(crc32(memoryview(rec)[: self.layout.payload_bytes]))
        self._f.write(rec)

    def close(self) -> LayerEntry:
        index, module, file, num_experts = self.entry_args
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if len(self._checksums) != num_experts:
            raise StoreError(f"layer {index}: wrote {len(self._checksums)} experts, expected {num_experts}")
        return LayerEntry(index, module, file, num_experts, tuple(self._checksums))
