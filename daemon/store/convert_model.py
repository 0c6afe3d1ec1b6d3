"""The mlx-lm side of `moed convert`: which model, which MoE layers, and the dense weights as mlx_lm.convert makes them.

mlx-lm's model class is instantiated for the source config lazily: its parameters are random arrays that are never
evaluated, so even a huge model costs only its graph. Its `SwitchGLU` modules are the MoE layers. The source's
tensors are opened with mx.load, which is lazy too (a tensor is read only when evaluated), and then put through
mlx_lm.convert's own steps: the model's `sanitize`, mlx_lm.utils.load_model's quantization for an already-quantized
checkpoint, a strict key/shape check, the cast to config `torch_dtype` (with the model's `cast_predicate`), and
mlx_lm.utils.quantize_model (group-size divisibility and the model's `quant_predicate`). What comes out is a model
whose dense parameters are lazy arrays equal to what mlx_lm.convert would save, and, per MoE layer, the tensors and
quantization parameters its experts get (read by convert.py one expert at a time).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.convert import MODEL_CONVERSION_DTYPES
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchGLU
from mlx_lm.utils import _get_classes, infer_quant_config, load_config, quantize_model

from .format import StoreError
from .safetensors_raw import SafetensorsSet

HF_ALIASES = {"gate_proj": ("gate_proj", "w1"), "up_proj": ("up_proj", "w3"), "down_proj": ("down_proj", "w2")}
Cast = Callable[[str, mx.array], mx.array]


class ConvertError(StoreError):
    """The source cannot be converted; the message names the tensor, file or setting."""


@dataclass
class MoELayer:
    """One SwitchGLU of the model: where its experts come from and how they are written."""

    index: int  # the layer number in the module path
    path: str  # module path of the SwitchGLU, e.g. model.layers.3.mlp.switch_mlp
    num_experts: int
    src_params: dict[str, tuple[int, ...]]  # source tensors relative to the SwitchGLU -> stacked shape
    out_params: dict[str, tuple[int, ...]] = field(default_factory=dict)  # record tensors in order -> stacked shape
    quant: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # projection -> (group_size, bits)

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    def hf_key(self, st: SafetensorsSet, e: int, rel: str) -> str:
        """Expert e's `rel` tensor in a Hugging Face checkpoint (mixtral: w1 = gate, w3 = up, w2 = down)."""
        proj, _, leaf = rel.partition(".")
        aliases = HF_ALIASES.get(proj, (proj,))
        found = next((a for a in aliases if f"{self.parent}.experts.{e}.{a}.{leaf}" in st), None)
        if found is None:  # missing: name it as the checkpoint names its other experts (w3 in mixtral)
            found = next((a for a in aliases if f"{self.parent}.experts.0.{a}.{leaf}" in st), aliases[0])
        return f"{self.parent}.experts.{e}.{found}.{leaf}"


@dataclass
class Prepared:
    """The model with its dense weights ready to evaluate, the config to write, and how experts are cast."""

    model: nn.Module
    config: dict[str, Any]
    cast: Cast
    keep_vision_config: bool


def load_source_config(src: Path) -> dict[str, Any]:
    """config.json as mlx-lm reads it (generation_config's eos_token_id merged in, tagged floats decoded)."""
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder: give a checkpoint folder (mlx-lm or Hugging Face layout)")
    if not (src / "config.json").is_file():
        raise ConvertError(f"{src / 'config.json'} is missing: not a model checkpoint")
    try:
        config = load_config(src)
    except ValueError as e:
        raise ConvertError(f"{src / 'config.json'} is not valid JSON: {e}") from e
    if "model_file" in config:
        raise ConvertError(f"{src}: custom model code (model_file={config['model_file']!r}) is not supported")
    if "model_type" not in config:
        raise ConvertError(f"{src / 'config.json'} has no model_type")
    return config


def build_model(config: dict[str, Any]) -> nn.Module:
    """mlx-lm's model for the config, unevaluated."""
    try:
        model_cls, args_cls = _get_classes(config)
    except ValueError as e:
        raise ConvertError(f"model_type {config.get('model_type')!r} is not supported by mlx-lm") from e
    return model_cls(args_cls.from_dict(config))


def moe_layers(model: nn.Module, src: Path) -> list[MoELayer]:
    """The model's SwitchGLU modules, in layer order."""
    found = [(p, m) for p, m in model.named_modules() if isinstance(m, SwitchGLU)]
    if not found:
        raise ConvertError(f"the {type(model).__module__} model of {src} has no SwitchGLU (MoE) layers")
    layers = []
    for ordinal, (path, m) in enumerate(found):
        num = re.search(r"(?:^|\.)layers\.(\d+)\.", path)
        params = {k: tuple(v.shape) for k, v in tree_flatten(m.parameters())}
        layers.append(MoELayer(int(num.group(1)) if num else ordinal, path, next(iter(params.values()))[0], params))
    return sorted(layers, key=lambda layer: layer.index)


def source_kind(st: SafetensorsSet, config: dict[str, Any], layer: MoELayer, src: Path) -> str:
    """'mlx-quantized', 'mlx-float' or 'hf', from the config and where the first layer's experts are."""
    if "quantization" in config:
        return "mlx-quantized"
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method")
        raise ConvertError(f"{src}: pre-quantized Hugging Face checkpoints ({method}) are not supported")
    rel = next(iter(layer.src_params))
    if f"{layer.path}.{rel}" in st:
        return "mlx-float"
    if layer.hf_key(st, 0, rel) in st:
        return "hf"
    raise ConvertError(
        f"no expert tensors for {layer.path} in {src}: expected {layer.path}.{rel} (mlx-lm layout) "
        f"or {layer.parent}.experts.0.{rel} (Hugging Face layout)"
    )


def requested(kind: str, config: dict[str, Any], bits: int | None, group_size: int) -> tuple[int, int] | None:
    """(bits, group_size) to quantize a float source to, or None to keep the source's representation."""
    if kind != "mlx-quantized":
        return (bits, group_size) if bits else None
    q = config["quantization"]
    if bits is not None and (bits, group_size) != (q.get("bits"), q.get("group_size")):
        raise ConvertError(
            f"the source is already quantized ({q.get('bits')} bits, group size {q.get('group_size')}); "
            f"re-quantizing to {bits} bits, group size {group_size} is not supported (omit --bits to keep it)"
        )
    if q.get("mode", "affine") != "affine":
        raise ConvertError(f"quantization mode {q.get('mode')!r} is not supported (only affine)")
    return None


def prepare(model: nn.Module, config: dict[str, Any], st: SafetensorsSet, layers: list[MoELayer], kind: str,
            requant: tuple[int, int] | None) -> Prepared:  # fmt: skip
    """Load the lazy dense weights into the model as mlx_lm.convert would; fill in each layer's out_params/quant."""
    weights = {k: v for f in st.files for k, v in mx.load(str(f.path)).items()}  # lazy: nothing is read yet
    per_expert = re.compile("|".join(rf"{re.escape(layer.parent)}\.experts\.\d+\." for layer in layers))
    weights = {k: v for k, v in weights.items() if not per_expert.match(k)}  # HF experts: read one at a time later
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    if kind == "mlx-quantized":
        _quantize_like_source(model, config, weights, st)
    experts = tuple(layer.path + "." for layer in layers)
    weights = {k: v for k, v in weights.items() if not k.startswith(experts)}
    _check_dense(model, weights, experts, st)
    model.load_weights(list(weights.items()), strict=False)
    del weights
    cast = _cast_fn(model, config, kind)
    config = copy.deepcopy(config)
    if kind != "mlx-quantized":
        model.update(tree_map_with_path(cast, model.parameters()))
        if requant:
            with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints the bits per weight
                model, config = quantize_model(model, config, requant[1], requant[0], mode="affine")
    for layer in layers:
        switch = _submodule(model, layer.path)
        layer.out_params = {k: tuple(v.shape) for k, v in tree_flatten(switch.parameters())}
        projections = {n: m for n, m in switch.children().items() if isinstance(m, nn.Module) and "weight" in m}
        layer.quant = {n: _qparams(m) for n, m in projections.items()}
    keep_vision = "vision_tower" in getattr(model, "model", {})  # as mlx_lm.utils.save decides
    return Prepared(model, config, cast, keep_vision)


def _submodule(model: nn.Module, path: str) -> nn.Module:
    m: Any = model
    for part in path.split("."):
        m = m[int(part)] if isinstance(m, list) else m[part]
    return m


def _qparams(m: nn.Module) -> tuple[int, int] | None:
    if not isinstance(m, QuantizedSwitchLinear):
        return None
    if m.mode != "affine" or m.get("global_scale") is not None:
        raise ConvertError(f"expert quantization mode {m.mode!r} is not supported (only affine)")
    return (m.group_size, m.bits)


def _quantize_like_source(model: nn.Module, config: dict[str, Any], weights: dict[str, mx.array],
                          st: SafetensorsSet) -> None:  # fmt: skip
    """Quantize the lazy model's modules as mlx_lm.utils.load_model does for a quantized checkpoint."""
    q = config["quantization"]

    def predicate(p: str, m: nn.Module) -> Any:
        if p in q:
            return q[p]
        if not hasattr(m, "to_quantized") or f"{p}.scales" not in weights:
            return False
        if f"{p}.weight" not in weights:
            raise ConvertError(f"tensor {p}.weight is missing from {st.files[0].path.parent}")
        return infer_quant_config(p, m, weights)

    nn.quantize(model, q["group_size"], q["bits"], mode=q.get("mode", "affine"), class_predicate=predicate)


def _check_dense(model: nn.Module, weights: dict[str, mx.array], experts: tuple[str, ...], st: SafetensorsSet) -> None:
    """mlx_lm's load(strict=True) checks, with messages that name the tensor and its file."""
    want = {k: v for k, v in tree_flatten(model.parameters()) if not k.startswith(experts)}
    for k, v in want.items():
        if k not in weights:
            raise ConvertError(f"tensor {k} is missing from {st.files[0].path.parent}")
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ConvertError(
                f"tensor {k} in {st.file_of(k) or 'the source'} has shape {list(weights[k].shape)}, "
                f"the model expects {list(v.shape)}"
            )
    for k in sorted(weights.keys() - want.keys()):
        raise ConvertError(f"tensor {k} in {st.file_of(k) or 'the source'} is not a parameter of the model")


def _cast_fn(model: nn.Module, config: dict[str, Any], kind: str) -> Cast:
    """mlx_lm.convert's cast: floating parameters to config torch_dtype (or text_config.dtype); none if quantized."""
    dtype = config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    if kind == "mlx-quantized" or dtype not in MODEL_CONVERSION_DTYPES:
        return lambda _k, v: v
    target = getattr(mx, dtype)
    predicate = getattr(model, "cast_predicate", lambda _: True)

    def cast(k: str, v: mx.array) -> mx.array:
        return v.astype(target) if predicate(k) and mx.issubdtype(v.dtype, mx.floating) else v

    return cast
