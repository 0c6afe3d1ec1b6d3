"""Which tensors a checkpoint holds, in which order, with which shapes and dtypes, taken from mlx-lm itself.

`mlx_layout` builds the mlx-lm model for a config *lazily* (MLX evaluates nothing until asked, so even
the bench model costs no memory here), casts it to the config's dtype and quantizes it with mlx-lm's
own `quantize_model`, exactly as `mlx_lm.convert` does. The result gives, without computing any
value: the parameter names in mlx-lm's `tree_flatten` order (which is the order `save_model` puts
them into shards and files, and so decides the bytes), their shapes and dtypes, which modules are
quantized with which (group_size, bits, mode) (including the model's own `quant_predicate`, e.g.
8-bit routers for qwen3_moe), the config.json mlx-lm would write, and the index's parameter count.
`hf_tensors` turns the unquantized layout back into the per-expert tensors of the original checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from .weights import expert_names


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: mx.Dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.size
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class QuantSpec:
    group_size: int
    bits: int
    mode: str


@dataclass
class MlxLayout:
    tensors: list[TensorSpec]  # what the checkpoint stores, in mlx-lm's save order
    float_shapes: dict[str, tuple[int, ...]]  # unquantized shape of every parameter
    quantized: dict[str, QuantSpec] = field(default_factory=dict)  # module path -> its quantization
    config: dict[str, Any] = field(default_factory=dict)  # config.json as mlx-lm writes it
    total_parameters: int = 0


def _lazy_model(config: dict[str, Any]) -> nn.Module:
    """The mlx-lm model for `config`, parameters cast to the config's dtype, nothing evaluated."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    dtype = getattr(mx, config["torch_dtype"])
    # Same cast as mlx_lm.convert: floating parameters the model allows to cast.
    cast = getattr(model, "cast_predicate", lambda _: True)
    model.update(tree_map_with_path(
        lambda k, v: v.astype(dtype) if cast(k) and mx.issubdtype(v.dtype, mx.floating) else v,
        model.parameters(),
    ))
    return model


def _specs(model: nn.Module) -> list[TensorSpec]:
    return [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tree_flatten(model.parameters())]


def mlx_layout(config: dict[str, Any], bits: int, group_size: int) -> MlxLayout:
    """The layout `mlx_lm.convert` gives `config` (quantized to `bits`, or unquantized when bits == 0)."""
    from mlx_lm.utils import get_total_parameters, quantize_model

    model = _lazy_model(config)
    float_shapes = {t.name: t.shape for t in _specs(model)}
    out_config = copy.deepcopy(config)
    if bits:
        # quantize_model prints a bits-per-weight line to stdout; keep stdout clean for callers.
        with contextlib.redirect_stdout(io.StringIO()):
            model, out_config = quantize_model(model, out_config, group_size, bits)
    quantized = {
        path: QuantSpec(m.group_size, m.bits, m.mode)
        for path, m in model.named_modules()
        if hasattr(m, "bits") and hasattr(m, "group_size") and "scales" in m
    }
    return MlxLayout(
        tensors=_specs(model),
        float_shapes=float_shapes,
        quantized=quantized,
        config=out_config,
        total_parameters=get_total_parameters(model),
    )


def hf_tensors(arch: str, layout: MlxLayout, num_experts: int) -> list[TensorSpec]:
    """The original checkpoint's tensors (bf16): stacked experts split back into per-expert tensors.

    Order: mlx-lm's, with each layer's experts written expert-major (all projections of expert 0,
    then expert 1, ...) where mlx-lm has its stacked projections, as HF checkpoints list them.
    """
    floats = [TensorSpec(n, s, mx.bfloat16) for n, s in layout.float_shapes.items()]
    out: list[TensorSpec] = []
    done: set[str] = set()
    for t in floats:
        if expert_names(arch, t.name, num_experts) is None:
            out.append(t)
            continue
        prefix = t.name.rsplit(".switch_mlp.", 1)[0]
        if prefix in done:
            continue
        done.add(prefix)
        group = [
            (expert_names(arch, s.name, num_experts), s.shape[1:])
            for s in floats
            if s.name.startswith(prefix + ".switch_mlp.")
        ]
        for e in range(num_experts):
            out.extend(TensorSpec(names[e], shape, mx.bfloat16) for names, shape in group)
    return out
