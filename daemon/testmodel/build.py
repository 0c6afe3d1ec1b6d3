"""`make_test_model`: write a deterministic random-weight MoE checkpoint in the hf or mlx layout.

Both layouts come from the same bf16 values (see weights.py). The hf layout is the original Hugging
Face checkpoint (per-expert tensors, bf16); the mlx layout is what `mlx_lm.convert` makes of it,
quantized or not, produced directly: the tensor list, order, quantization and config come from
mlx-lm itself (structure.py), the values are generated one layer at a time and streamed into shards
(writers.py), so memory stays around one shard plus one layer even for the multi-GB bench size.
Everything is written into a hidden sibling directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from itertools import groupby
from pathlib import Path
from typing import Any, Callable, Iterator

import mlx.core as mx

from .presets import Dims, hf_config, resolve_dims
from .structure import MlxLayout, TensorSpec, hf_tensors, mlx_layout
from .tokenizer import special_ids, train_tokenizer, write_tokenizer_files
from .weights import expert_names, stacked_value, tensor_value
from .writers import ShardWriter, plan_shards

LAYOUTS = ("mlx", "hf")
DEFAULT_SHARD_GB = 2.0
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def make_test_model(
    out_dir: str | os.PathLike,
    arch: str = "qwen3_moe",
    size: str = "tiny",
    layout: str = "mlx",
    bits: int = 4,
    group_size: int = 64,
    seed: int = 0,
    *,
    shard_gb: float = DEFAULT_SHARD_GB,
    progress: bool | None = None,
    dtype: str = "bfloat16",
    **overrides: Any,
) -> Path:
    """Write the test model to `out_dir` (which must not exist) and return its path.

    layout "hf": the Hugging Face checkpoint (bf16, per-expert tensors; `bits`/`group_size` ignored).
    layout "mlx": what `mlx_lm.convert` makes of it: quantized to `bits` with `group_size`, or bf16
    when bits == 0. `overrides` replace preset dimensions (layers=, experts=, top_k=, hidden=, ...).
    `progress` (default: only for checkpoints over 256 MB) prints per-layer progress to stderr.
    `dtype` (mlx layout only): the float dtype, as `mlx_lm.convert --dtype` sets it. "float32" is the one MLX's
    CPU kernels run fast (its bf16/fp16 quantized matmuls are 8-30x slower), so CPU benchmarks use it.
    """
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be bfloat16, float16 or float32; got {dtype!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout == "mlx" and bits not in (0, 2, 3, 4, 5, 6, 8):
        raise ValueError(f"bits must be 0 (bf16) or one of 2, 3, 4, 5, 6, 8; got {bits}")
    if layout == "mlx" and bits and group_size not in (32, 64, 128):
        raise ValueError(f"group_size must be 32, 64 or 128; got {group_size}")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    dims = resolve_dims(arch, size, **overrides)
    ids = special_ids(train_tokenizer(dims.vocab))
    config = hf_config(arch, dims, bos_id=ids["bos"], eos_id=ids["eos"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_tokenizer_files(tmp, dims.vocab, dims.max_pos)
        max_bytes = int(shard_gb * (1 << 30))
        if layout == "hf":
            _write_hf(tmp, arch, dims, config, seed, max_bytes, progress)
        else:
            _write_mlx(tmp, arch, dims, {**config, "torch_dtype": dtype}, seed, bits, group_size, max_bytes,
                       progress)
        recipe = {"arch": arch, "size": size, "layout": layout, "seed": seed, "dims": vars(dims)}
        if layout == "mlx":
            recipe |= {"bits": bits, "group_size": group_size, "dtype": dtype}
        (tmp / "moed_testmodel.json").write_text(json.dumps(recipe, indent=2) + "\n")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_hf(tmp: Path, arch: str, dims: Dims, config: dict, seed: int, max_bytes: int,
              progress: bool | None) -> None:
    tensors = hf_tensors(arch, mlx_layout(config, bits=0, group_size=64), dims.experts)
    writer = ShardWriter(tmp, plan_shards(tensors, max_bytes), style="hf")
    log = _logger(progress, writer.total_bytes, dims.layers)
    for unit in _units(tensors):
        for t in unit:
            writer.add(t.name, tensor_value(seed, t.name, t.shape, dims.layers))
        log(unit[0].name, writer)
    writer.close()
    _write_hf_config(tmp, config)


def _write_hf_config(folder: Path, config: dict) -> None:
    # Hugging Face's config.json style: sorted keys, indent 2.
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_mlx(tmp: Path, arch: str, dims: Dims, config: dict, seed: int, bits: int,
               group_size: int, max_bytes: int, progress: bool | None) -> None:
    from mlx_lm.utils import load_config, save_config

    # Start from the config exactly as mlx_lm.convert reads it from the hf layout (its load_config
    # merges generation_config.json's eos_token_id, for one); save_config replaces the file below.
    _write_hf_config(tmp, config)
    layout = mlx_layout(load_config(tmp), bits, group_size)
    writer = ShardWriter(tmp, plan_shards(layout.tensors, max_bytes), style="mlx",
                         total_parameters=layout.total_parameters)
    log = _logger(progress, writer.total_bytes, dims.layers)
    for unit in _units(layout.tensors):
        for name, value in _mlx_values(unit, layout, arch, dims, seed, getattr(mx, config["torch_dtype"])):
            writer.add(name, value)
        log(unit[0].name, writer)
    writer.close()
    save_config(layout.config, config_path=tmp / "config.json")


def _units(tensors: list[TensorSpec]) -> list[list[TensorSpec]]:
    """Consecutive tensors of the same decoder layer; every other tensor is a unit of its own."""
    def key(t: TensorSpec) -> str:
        m = _LAYER.match(t.name)
        return m.group(0) if m else t.name
    return [list(g) for _, g in groupby(tensors, key=key)]


def _mlx_values(unit: list[TensorSpec], layout: MlxLayout, arch: str, dims: Dims,
                seed: int, dtype: mx.Dtype) -> Iterator[tuple[str, mx.array]]:
    """Values of one unit's mlx tensors: bf16 values, stacked experts, mx.quantize'd where mlx-lm
    quantizes (weight, scales, biases of one module computed together, then handed out)."""
    def float_value(name: str) -> mx.array:
        shape = layout.float_shapes[name]
        names = expert_names(arch, name, dims.experts)
        if names is not None:
            value = stacked_value(seed, names, shape, dims.layers)
        else:
            value = tensor_value(seed, name, shape, dims.layers)
        return value if dtype == mx.bfloat16 else value.astype(dtype)  # the hf values, cast as convert casts

    quantized: dict[str, dict[str, mx.array]] = {}
    for t in unit:
        module, param = t.name.rsplit(".", 1)
        q = layout.quantized.get(module)
        if q is None or param not in ("weight", "scales", "biases"):
            yield t.name, float_value(t.name)
            continue
        if module not in quantized:
            packed = mx.quantize(float_value(module + ".weight"), q.group_size, q.bits, mode=q.mode)
            mx.eval(packed)
            quantized[module] = dict(zip(("weight", "scales", "biases"), packed))
        yield t.name, quantized[module].pop(param)


def _logger(progress: bool | None, total_bytes: int, layers: int) -> Callable[[str, ShardWriter], None]:
    if progress is None:
        progress = total_bytes > 256 << 20
    start = time.monotonic()

    def log(first_name: str, writer: ShardWriter) -> None:
        m = _LAYER.match(first_name)
        if not progress or m is None:
            return
        print(f"[make-test-model] layer {int(m.group(1)) + 1}/{layers}: "
              f"{writer.bytes_added / 1e9:.2f}/{writer.total_bytes / 1e9:.2f} GB, "
              f"{len(writer.done)}/{len(writer.plan)} shards written, "
              f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return log
