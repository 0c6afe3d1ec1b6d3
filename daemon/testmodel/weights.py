"""Deterministic random weight values, and the per-expert names of the Hugging Face checkpoints.

Every tensor is a pure function of (seed, Hugging Face tensor name, shape, layer count): float32 normals
from a numpy `default_rng` seeded by a SHA-256 of the seed and name (stable across processes and
platforms, unlike Python's `hash`), scaled by a per-role std, then rounded to bf16. Both layouts draw from this one
function, so the mlx layout is built from exactly the bf16 values the hf layout stores: a stacked
expert tensor is `mx.stack` of its per-expert tensors, as mlx-lm's `sanitize` does.

Std choices keep a random model usable: projections (router and lm_head included) at 1/sqrt(fan_in),
which is ~0.02 at real hidden sizes and keeps activations at unit scale at any size, so routing is not
near uniform and logits have unit spread; residual-output projections (o_proj, down_proj, w2) further
scaled by 1/sqrt(2 * layers) so the residual stream stays bounded over many layers; embeddings at 1.0,
the same scale as all layers' contributions together, so the output depends on both the token and the
context; norm weights 1.0; biases 0.02.
"""

from __future__ import annotations

import hashlib
import math
import re

import mlx.core as mx
import numpy as np

# mlx-lm's stacked name for the routed experts: `<prefix>.switch_mlp.<proj>.weight`.
_SWITCH = re.compile(r"^(?P<prefix>.+)\.switch_mlp\.(?P<proj>\w+)\.weight$")

# Per-expert projection names of the original checkpoints, where they differ from mlx-lm's.
_EXPERT_PROJ_NAMES: dict[str, dict[str, str]] = {
    "mixtral": {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
}

_RESIDUAL_OUT = ("o_proj", "down_proj", "w2")


def expert_names(arch: str, mlx_name: str, num_experts: int) -> list[str] | None:
    """HF names of the per-expert tensors that mlx-lm stacks into `mlx_name`; None if not stacked."""
    m = _SWITCH.match(mlx_name)
    if m is None:
        return None
    proj = _EXPERT_PROJ_NAMES.get(arch, {}).get(m["proj"], m["proj"])
    return [f"{m['prefix']}.experts.{e}.{proj}.weight" for e in range(num_experts)]


def init_std(name: str, shape: tuple[int, ...], layers: int) -> float | None:
    """Std of the normal a tensor is drawn from; None means all ones (norm weights)."""
    if name.endswith("norm.weight"):
        return None
    if "embed_tokens" in name:
        return 1.0
    if len(shape) < 2:  # biases
        return 0.02
    std = 1.0 / math.sqrt(shape[-1])  # unit-gain projection: output rms ~ input rms
    parts = name.split(".")
    if len(parts) > 1 and parts[-2] in _RESIDUAL_OUT:
        std /= math.sqrt(2 * layers)  # each of the 2 * layers residual branches adds a little
    return std


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"moed-testmodel/{seed}/{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def tensor_value(seed: int, name: str, shape: tuple[int, ...], layers: int) -> mx.array:
    """The bf16 value of the HF tensor `name` (evaluated, so the float32 draw can be freed)."""
    std = init_std(name, shape, layers)
    if std is None:
        out = mx.ones(shape, dtype=mx.bfloat16)
    else:
        draw = _rng(seed, name).standard_normal(shape, dtype=np.float32)
        draw *= np.float32(std)
        out = mx.array(draw).astype(mx.bfloat16)
    mx.eval(out)
    return out


def stacked_value(seed: int, names: list[str], shape: tuple[int, ...], layers: int) -> mx.array:
    """mx.stack of the per-expert tensors `names` (each of shape `shape[1:]`), as mlx-lm's sanitize does."""
    out = mx.stack([tensor_value(seed, n, tuple(shape[1:]), layers) for n in names])
    mx.eval(out)
    return out
