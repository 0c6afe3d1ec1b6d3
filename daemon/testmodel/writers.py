"""Sharded safetensors writing in a streaming fashion, byte-compatible with mlx-lm's `save_model`.

The shard plan is fixed up front from tensor sizes (`plan_shards`, the rule of mlx-lm's `make_shards`:
start a new shard when the next tensor would overflow the current one), so file names
(`model-0000i-of-0000n.safetensors`) are known before any value exists. Tensors are then added one
at a time in plan order; a shard is written with `mx.save_safetensors` as soon as its last tensor
arrives and is dropped, so at most one shard plus the tensors in flight are held in memory. The dict
handed to `mx.save_safetensors` is filled in plan order because MLX lays out the data in the order
of its (insertion-order dependent) map: the same order as mlx-lm gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import mlx.core as mx

from .structure import TensorSpec


def plan_shards(tensors: Iterable[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors (in order) into shards of at most `max_bytes`, a bigger tensor alone in its own."""
    shards: list[list[TensorSpec]] = []
    size = 0
    for t in tensors:
        if not shards or size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardWriter:
    """Writes tensors into the planned shards; `style` "mlx" (mlx-lm's index, always written) or "hf"."""

    def __init__(self, out: Path, plan: list[list[TensorSpec]], style: str, total_parameters: int = 0):
        if style not in ("mlx", "hf"):
            raise ValueError(f"unknown style {style!r}")
        self.out, self.plan, self.style = out, plan, style
        self.total_parameters = total_parameters
        self.files = shard_file_names(len(plan))
        self.expected = {t.name: t for shard in plan for t in shard}
        self.shard_of = {t.name: i for i, shard in enumerate(plan) for t in shard}
        self.pending: dict[int, dict[str, mx.array]] = {}
        self.bytes_added = 0
        self.total_bytes = sum(t.nbytes for t in self.expected.values())
        self.done: set[int] = set()

    def add(self, name: str, value: mx.array) -> None:
        spec = self.expected.get(name)
        if spec is None:
            raise KeyError(f"tensor {name} is not in the shard plan")
        if tuple(value.shape) != spec.shape or value.dtype != spec.dtype:
            raise ValueError(f"{name}: got {value.dtype}{tuple(value.shape)}, "
                             f"layout says {spec.dtype}{spec.shape}")
        i = self.shard_of[name]
        self.pending.setdefault(i, {})[name] = value
        self.bytes_added += spec.nbytes
        if len(self.pending[i]) == len(self.plan[i]):
            self._write(i)

    def _write(self, i: int) -> None:
        got = self.pending.pop(i)
        shard = {t.name: got[t.name] for t in self.plan[i]}  # plan order decides the bytes
        del got
        fmt = "mlx" if self.style == "mlx" else "pt"
        mx.save_safetensors(str(self.out / self.files[i]), shard, metadata={"format": fmt})
        self.done.add(i)

    def close(self) -> None:
        """Check every shard was written, then write model.safetensors.index.json."""
        if len(self.done) != len(self.plan):
            missing = [n for n, i in self.shard_of.items() if i not in self.done]
            raise RuntimeError(f"{len(missing)} tensors never added, e.g. {missing[:3]}")
        weight_map = {t.name: self.files[self.shard_of[t.name]] for t in self.expected.values()}
        weight_map = {k: weight_map[k] for k in sorted(weight_map)}
        path = self.out / "model.safetensors.index.json"
        if self.style == "mlx":
            # Exactly mlx-lm's save_model: written even for one shard, indent 4, no final newline.
            meta = {"total_size": self.total_bytes, "total_parameters": self.total_parameters}
            with open(path, "w") as f:
                json.dump({"metadata": meta, "weight_map": weight_map}, f, indent=4)
        elif len(self.plan) > 1:
            # Hugging Face writes an index only for a sharded checkpoint.
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            path.write_text(json.dumps(index, indent=2) + "\n")
