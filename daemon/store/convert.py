"""Convert an mlx-lm or Hugging Face MoE checkpoint into a moed expert store (`moed convert`; format: format.py).

Sources (detected): an mlx-lm checkpoint already quantized (config has `quantization`): every tensor is copied byte
for byte; an mlx-lm float checkpoint (experts stacked as `<SwitchGLU>.{gate,up,down}_proj.weight` [E, out, in]); a
Hugging Face checkpoint with one tensor per expert (`<parent>.experts.{e}.{gate_proj|w1,up_proj|w3,down_proj|w2}`).
Float sources come out bit-identical to `mlx_lm.convert(quantize=True, q_bits=bits, q_group_size=group_size)`.

How: convert_model.py builds the lazy mlx-lm model and its dense weights the way mlx_lm.convert does. The dense
tensors (everything outside the SwitchGLU modules) are then evaluated one at a time and streamed into
model.safetensors (or ~2 GiB shards) with a header written up front. Each expert is read on its own (one contiguous
byte range of a stacked tensor, or its own tensors in an HF checkpoint), cast and quantized with the parameters
mlx-lm chose for that SwitchLinear (`mx.quantize` of one expert is bit-identical to the stacked tensor's slice: groups
run along the last axis), packed and appended to experts/layer-NNN.bin.

Memory bound, independent of the number of layers and experts: the larger of (a) the largest dense tensor with its
quantized output (e.g. a bf16 embedding and its packed form) and (b) about three experts' source tensors (the expert
being converted, the next one being read ahead, and one projection's copy in mlx) plus one record; plus the lazy
model graph (no weight data). mlx's buffer cache is cleared after each layer and shard, so freed tensors do not pile
up. Measured peak RSS: 167 MiB for a 4.8 GB bf16 qwen3_moe checkpoint (mlx_lm.convert: 4.4 GB), 1.05 GiB for
mixtral-sized experts (352 MB each in bf16), 1.6 GiB for a 1.2 GB bf16 embedding.

Atomicity: everything is written into the sibling `DST.partial-<pid>`; when every data file is complete and fsynced
it is renamed to DST and only then is manifest.json written into it (atomically), so a partial folder never holds a
manifest. Any exception, KeyboardInterrupt included, removes what was written (and restores a `--force`d old DST).

`bits`: None keeps the source as it is (quantized stays quantized, float stays float); 0 writes float experts (cast
as mlx_lm.convert casts); N quantizes float sources to N bits, affine, `group_size`. An already-quantized source is
never re-quantized: `bits` must be None or equal its bits and group size.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map
from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS, make_shards, save_config

from .convert_model import Cast, ConvertError, MoELayer, build_model, load_source_config, moe_layers, prepare
from .convert_model import requested, source_kind
from .format import MANIFEST, LayerEntry, LayerFileWriter, Manifest, RecordLayout, write_manifest
from .safetensors_raw import SafetensorsSet, SafetensorsWriter

__all__ = ["convert", "ConvertError", "source_is_quantized"]

Raw = dict[str, tuple[str, np.ndarray]]  # tensor name -> (mlx dtype name, numpy array of its raw bytes)
DTYPES = ("float32", "float16", "bfloat16")  # --dtype choices (mlx_lm.convert's)
SHARD_GB = 2  # dense shards of at most ~2 GiB (mlx-lm uses 5 GiB; only the split into files differs)
Progress = Callable[[str], None]


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    bits: int | None = 4,
    group_size: int = 64,
    force: bool = False,
    progress: Progress | None = None,
    dtype: str | None = None,
) -> Manifest:
    """Convert the checkpoint folder `src` into a store at `dst` (see the module docstring); returns its manifest.

    `dtype` ("float32", "float16", "bfloat16"): cast a float source's floating weights to it before quantizing
    (the dense weights, and the experts when `bits` is 0), in place of the config's `torch_dtype`; on MLX's CPU
    backend float32 runs fastest (docs/performance.md). Partial folders that dead conversions of `dst` left
    behind are removed first.

    Raises:
        StoreError: (ConvertError) an unsupported or inconsistent source, or `dst` exists and not `force`.
        OSError: the disk is full or a path is not writable (the partial folder is removed first).
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents:
        raise ConvertError(f"{dst} would replace the source {src}")
    if os.path.lexists(dst) and not force:
        raise ConvertError(f"{dst} already exists (use --force to replace it)")
    if dtype is not None and dtype not in DTYPES:
        raise ConvertError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_partials(dst):
        (progress or (lambda _: None))(f"removing {stale.name}, left behind by a conversion that died")
        shutil.rmtree(stale, ignore_errors=True)
    partial = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        manifest = _convert_into(src, partial, bits, group_size, progress or (lambda _: None), dtype)
        _commit(partial, dst, manifest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful commit
    return manifest


def stale_partials(dst: Path) -> list[Path]:
    """`DST.partial-<pid>` folders beside `dst` whose process is gone (a convert killed before its cleanup ran)."""
    stale = []
    for p in dst.parent.glob(f"{glob.escape(dst.name)}.partial-*"):
        pid = p.name.rsplit("-", 1)[1]
        if p.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.append(p)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def source_is_quantized(src: str | os.PathLike[str]) -> bool:
    """Whether `src` is an already-quantized mlx-lm checkpoint (the CLI keeps its quantization by default)."""
    return "quantization" in load_source_config(Path(src))


def _convert_into(src: Path, out: Path, bits: int | None, group_size: int, progress: Progress,
                  dtype: str | None = None) -> Manifest:
    config = load_source_config(src)
    if dtype is not None:
        if "quantization" in config:
            raise ConvertError(f"{src} is already quantized: its weights keep their dtypes (drop --dtype)")
        config["torch_dtype"] = dtype  # what mlx_lm.convert's cast reads
    files = sorted(src.glob("model*.safetensors"))  # what mlx_lm.utils.load_model reads
    if not files:
        raise ConvertError(f"no model*.safetensors files in {src}")
    t0 = time.monotonic()
    with contextlib.closing(SafetensorsSet(files)) as st:
        model = build_model(config)
        layers = moe_layers(model, src)
        kind = source_kind(st, config, layers[0], src)
        prep = prepare(model, config, st, layers, kind, requested(kind, config, bits, group_size))
        del model
        quantization = _manifest_quantization(layers)
        dense_files, dense_bytes = _write_dense(prep.model, layers, out, progress)
        del prep.model
        entries, layout = _write_experts(st, layers, kind, prep.cast, out, progress)
    save_config(copy.deepcopy(prep.config), out / "config.json", keep_vision_config=prep.keep_vision_config)
    _copy_small_files(src, out)
    total = dense_bytes + sum(e.num_experts for e in entries) * layout.record_bytes
    progress(f"done: {total / 1e6:.1f} MB in {time.monotonic() - t0:.1f} s ({_rate(total, t0):.1f} MB/s)")
    return Manifest(
        model_type=str(prep.config["model_type"]),
        config=json.loads((out / "config.json").read_text()),  # exactly what config.json says
        quantization=quantization,
        layout=layout,
        layers=tuple(entries),
        dense_files=tuple(dense_files),
        source={"path": str(src.resolve()), "kind": kind, "bits": bits, "group_size": group_size},
    )


def _manifest_quantization(layers: list[MoELayer]) -> dict[str, Any] | None:
    """The one quantization of all expert tensors (a store has one record layout), or None if they are float."""
    qs = {q for layer in layers for q in layer.quant.values()}
    if qs == {None}:
        return None
    if len(qs) != 1:
        raise ConvertError(f"expert projections are quantized differently ({sorted(map(str, qs))}); not supported")
    group_size, bits = next(iter(qs))  # type: ignore[misc]
    return {"bits": bits, "group_size": group_size, "mode": "affine"}


def _write_dense(model: Any, layers: list[MoELayer], out: Path, progress: Progress) -> tuple[list[str], int]:
    """Evaluate and write the non-expert parameters one at a time, in mlx-lm's order; returns the file names."""
    experts = tuple(layer.path + "." for layer in layers)
    dense = {k: v for k, v in tree_flatten(model.parameters()) if not k.startswith(experts)}
    # Drop the model's references (as mlx_lm's save_model(donate_model=True)) so a tensor is freed once written.
    model.update(tree_map(lambda _: mx.array([]), model.parameters()))
    shards = make_shards(dense, SHARD_GB)
    del dense
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map, total = {}, 0
    for i, (name, shard) in enumerate(zip(names, shards)):
        t1, count, specs = time.monotonic(), len(shard), [(k, _dtype_name(v.dtype), v.shape) for k, v in shard.items()]
        writer = SafetensorsWriter(out / name, specs, {"format": "mlx"})
        nbytes = 0
        for k in list(shard):
            v = shard.pop(k)
            mx.eval(v)
            writer.write(k, _to_numpy(v))
            weight_map[k], nbytes = name, nbytes + v.nbytes
            del v
        writer.close()
        mx.clear_cache()
        total += nbytes
        progress(f"dense {i + 1}/{n} ({name}): {count} tensors, {nbytes / 1e6:.1f} MB, {_rate(nbytes, t1):.1f} MB/s")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return names, total


def _write_experts(st: SafetensorsSet, layers: list[MoELayer], kind: str, cast: Cast, out: Path,
                   progress: Progress) -> tuple[list[LayerEntry], RecordLayout]:  # fmt: skip
    """Write each layer's experts; one expert is computed while the next one is read (so two are in memory)."""
    layout: RecordLayout | None = None
    entries = []
    with ThreadPoolExecutor(1, thread_name_prefix="moed-convert-read") as pool:
        for i, layer in enumerate(layers):
            t0 = time.monotonic()
            _check_expert_sources(st, layer, kind)
            writer: LayerFileWriter | None = None
            pending = pool.submit(_read_expert, st, layer, kind, 0)
            for e in range(layer.num_experts):
                source = pending.result()
                if e + 1 < layer.num_experts:  # reading (pread) overlaps the cast/quantize of this expert
                    pending = pool.submit(_read_expert, st, layer, kind, e + 1)
                arrays = _make_record(layer, kind, cast, source)
                del source
                if writer is None:
                    layout = _check_layout(layout, layer, arrays)
                    writer = LayerFileWriter(out, layer.index, layer.path, layer.num_experts, layout)
                writer.append({k: a for k, (_, a) in arrays.items()})
            assert writer is not None and layout is not None  # a SwitchGLU has at least one expert
            entries.append(writer.close())
            mx.clear_cache()
            nbytes = layer.num_experts * layout.record_bytes
            progress(
                f"layer {i + 1}/{len(layers)} ({layer.path}): {layer.num_experts} experts, "
                f"{nbytes / 1e6:.1f} MB, {_rate(nbytes, t0):.1f} MB/s"
            )
    assert layout is not None  # moe_layers returns at least one layer
    return entries, layout


def _check_layout(layout: RecordLayout | None, layer: MoELayer, arrays: Raw) -> RecordLayout:
    """The store's one record layout: built from the first expert, and every layer must match it."""
    specs = [(k, d, tuple(a.shape)) for k, (d, a) in arrays.items()]
    layout = layout or RecordLayout.build(specs)
    if [(t.name, t.dtype, t.shape) for t in layout.tensors] != specs:
        raise ConvertError(f"{layer.path}: expert tensors {specs} differ from the first MoE layer's")
    return layout


def _check_expert_sources(st: SafetensorsSet, layer: MoELayer, kind: str) -> None:
    """Every source tensor of the layer's experts exists with the shape the model expects (before reading any)."""
    hint = f" (an expert tensor of {layer.path})"
    if kind == "hf":
        experts = range(layer.num_experts)
        want = [(layer.hf_key(st, e, rel), s[1:]) for e in experts for rel, s in layer.src_params.items()]
    else:
        params = layer.out_params if kind == "mlx-quantized" else layer.src_params
        want = [(f"{layer.path}.{rel}", s) for rel, s in params.items()]
    for key, shape in want:
        info = st.info(key, hint)
        if info.shape != tuple(shape):
            raise ConvertError(
                f"tensor {key} in {st.file_of(key)} has shape {list(info.shape)}, expected {list(shape)}"
            )
        if kind != "mlx-quantized" and info.mlx_dtype not in ("bfloat16", "float16", "float32"):
            raise ConvertError(f"tensor {key} in {st.file_of(key)} is {info.dtype}, expected a float dtype")


def _read_expert(st: SafetensorsSet, layer: MoELayer, kind: str, e: int) -> Raw:
    """Expert e's source tensors, named relative to the SwitchGLU (a quantized source: already the record)."""
    if kind == "hf":
        keys = {rel: (layer.hf_key(st, e, rel), None) for rel in layer.src_params}
    else:
        rels = layer.out_params if kind == "mlx-quantized" else layer.src_params
        keys = {rel: (f"{layer.path}.{rel}", e) for rel in rels}
    return {rel: (st.info(k).mlx_dtype, st.read(k, index)) for rel, (k, index) in keys.items()}


def _make_record(layer: MoELayer, kind: str, cast: Cast, source: Raw) -> Raw:
    """One expert's record tensors in layout order: the source cast and quantized as mlx_lm.convert would."""
    if kind == "mlx-quantized":  # the source bytes, untouched
        return source
    out: dict[str, mx.array] = {}
    for rel in list(source):
        dtype, data = source.pop(rel)  # drop each raw buffer once mlx has its copy
        a = mx.array(data)
        del data
        a = cast(f"{layer.path}.{rel}", a.view(mx.bfloat16) if dtype == "bfloat16" else a)  # the parameter's name
        proj, _, leaf = rel.partition(".")
        q = layer.quant.get(proj)
        if leaf == "weight" and q is not None:
            out[f"{proj}.weight"], out[f"{proj}.scales"], out[f"{proj}.biases"] = mx.quantize(a, q[0], q[1])
        else:
            out[rel] = a
        mx.eval(list(out.values()))  # one projection at a time: its float temporaries are freed before the next
    if set(out) != set(layer.out_params):
        raise ConvertError(f"{layer.path}: expert tensors {sorted(out)} differ from the model's {[*layer.out_params]}")
    return {rel: (_dtype_name(out[rel].dtype), _to_numpy(out[rel])) for rel in layer.out_params}


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).rpartition(".")[2]  # "mlx.core.bfloat16" -> "bfloat16"


def _to_numpy(a: mx.array) -> np.ndarray:
    """The array's bytes without a copy where mlx allows it (bfloat16 as uint16, as format.DTYPES carries it)."""
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return np.asarray(a)


def _copy_small_files(src: Path, out: Path) -> None:
    """Tokenizer, generation config, chat template...: what mlx-lm downloads besides the weights."""
    skip = {"config.json", MANIFEST, "model.safetensors.index.json"}
    for pattern in DEFAULT_ALLOW_PATTERNS:
        for f in src.glob(pattern):
            if f.is_file() and f.name not in skip and not f.name.endswith((".safetensors", ".safetensors.index.json")):
                shutil.copy2(f, out / f.name)


def _commit(partial: Path, dst: Path, manifest: Manifest) -> None:
    """Rename the complete partial folder to dst (moving an old dst aside), then write the manifest into it."""
    _fsync_dir(partial)
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}") if os.path.lexists(dst) else None
    if old is not None:
        os.rename(dst, old)
    try:
        os.rename(partial, dst)
        write_manifest(dst, manifest)
        _fsync_dir(dst.parent)
    except BaseException:
        if not partial.exists() and dst.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        if old is not None:
            os.rename(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rate(nbytes: int, t0: float) -> float:
    return nbytes / 1e6 / max(time.monotonic() - t0, 1e-9)
