"""Architectures and size presets of the test models, and the Hugging Face config.json each one gets.

A preset is a `Dims` (the numbers that shape the model); `resolve_dims` picks the preset for an
(arch, size) pair and applies overrides; `hf_config` turns dims into the config.json the original
Hugging Face checkpoints of that architecture carry, with every field mlx-lm's `ModelArgs` needs.
Every dimension is a multiple of 64, so group-size-64 quantization applies to every projection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ARCHES: tuple[str, ...] = ("qwen3_moe", "mixtral", "qwen2_moe", "olmoe")
SIZES: tuple[str, ...] = ("tiny", "small", "bench")


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    experts: int
    top_k: int
    expert_inter: int  # intermediate size of one routed expert
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    shared_inter: int = 0  # qwen2_moe's always-on shared expert
    max_pos: int = 4096


_COMMON: dict[str, Dims] = {
    "tiny": Dims(hidden=64, layers=4, experts=8, top_k=2, expert_inter=64, heads=4, kv_heads=2,
                 head_dim=16, vocab=1024, shared_inter=128),
    "small": Dims(hidden=256, layers=6, experts=32, top_k=4, expert_inter=128, heads=8, kv_heads=4,
                  head_dim=32, vocab=4096, shared_inter=512),
}

# Bench sizes keep the expert shapes of a real model of each family, with layers cut so the 4-bit
# routed experts total a little over 4 GiB (enough that they do not fit a small cache).
_BENCH: dict[str, Dims] = {
    # Qwen3-30B-A3B: 2.65 MB per 4-bit expert, 128 x 13 layers = 4.41 GB.
    "qwen3_moe": Dims(hidden=2048, layers=13, experts=128, top_k=8, expert_inter=768, heads=32,
                      kv_heads=4, head_dim=128, vocab=16384, max_pos=40960),
    # Mixtral-8x7B: 99 MB per 4-bit expert, 8 x 6 layers = 4.76 GB.
    "mixtral": Dims(hidden=4096, layers=6, experts=8, top_k=2, expert_inter=14336, heads=32,
                    kv_heads=8, head_dim=128, vocab=16384, max_pos=32768),
    # Qwen1.5-MoE-A2.7B: 4.87 MB per 4-bit expert, 60 x 15 layers = 4.38 GB.
    "qwen2_moe": Dims(hidden=2048, layers=15, experts=60, top_k=4, expert_inter=1408, heads=16,
                      kv_heads=16, head_dim=128, vocab=16384, shared_inter=5632, max_pos=8192),
    # OLMoE-1B-7B: 3.54 MB per 4-bit expert, 64 x 19 layers = 4.30 GB.
    "olmoe": Dims(hidden=2048, layers=19, experts=64, top_k=8, expert_inter=1024, heads=16,
                  kv_heads=16, head_dim=128, vocab=16384, max_pos=4096),
}

# Architectures whose mlx-lm attention derives head_dim as hidden // heads (no head_dim field).
_DERIVED_HEAD_DIM = {"mixtral", "qwen2_moe", "olmoe"}


def resolve_dims(arch: str, size: str, **overrides: Any) -> Dims:
    """The preset for (arch, size) with `overrides` (any Dims field; None values are ignored)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    dims = _BENCH[arch] if size == "bench" else _COMMON[size]
    fields = {f.name for f in dataclasses.fields(Dims)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; allowed: {sorted(fields)}")
    dims = dataclasses.replace(dims, **{k: v for k, v in overrides.items() if v is not None})
    if arch in _DERIVED_HEAD_DIM:
        dims = dataclasses.replace(dims, head_dim=dims.hidden // dims.heads)
    _check(dims)
    return dims


def _check(d: Dims) -> None:
    if min(d.hidden, d.layers, d.experts, d.top_k, d.expert_inter, d.heads, d.kv_heads, d.vocab) < 1:
        raise ValueError(f"every dimension must be positive: {d}")
    if d.top_k > d.experts:
        raise ValueError(f"top_k ({d.top_k}) exceeds the number of experts ({d.experts})")
    if d.heads % d.kv_heads:
        raise ValueError(f"heads ({d.heads}) must be a multiple of kv_heads ({d.kv_heads})")
    if d.vocab < 512:
        raise ValueError("vocab must be at least 512 (256 byte tokens, specials and some merges)")


def hf_config(arch: str, d: Dims, *, bos_id: int, eos_id: int) -> dict[str, Any]:
    """config.json of the Hugging Face checkpoint, as the original model repositories write it."""
    common: dict[str, Any] = {
        "model_type": arch,
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "num_experts_per_tok": d.top_k,
        "vocab_size": d.vocab,
        "max_position_embeddings": d.max_pos,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
    }
    return common | _ARCH_FIELDS[arch](d)


def _qwen3_moe(d: Dims) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "head_dim": d.head_dim,
        "intermediate_size": 3 * d.hidden,  # dense MLP size, unused: every layer is sparse
        "moe_intermediate_size": d.expert_inter,
        "num_experts": d.experts,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "max_window_layers": d.layers,
        "sliding_window": None,
        "use_sliding_window": False,
    }


def _mixtral(d: Dims) -> dict[str, Any]:
    return {
        "architectures": ["MixtralForCausalLM"],
        "head_dim": d.head_dim,
        "intermediate_size": d.expert_inter,
        "num_local_experts": d.experts,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.02,
        "router_jitter_noise": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
    }


def _qwen2_moe(d: Dims) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2MoeForCausalLM"],
        "intermediate_size": 4 * d.expert_inter,  # dense MLP size, unused: every layer is sparse
        "moe_intermediate_size": d.expert_inter,
        "shared_expert_intermediate_size": d.shared_inter,
        "num_experts": d.experts,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "max_window_layers": d.layers,
        "sliding_window": None,
        "use_sliding_window": False,
    }


def _olmoe(d: Dims) -> dict[str, Any]:
    return {
        "architectures": ["OlmoeForCausalLM"],
        "attention_bias": False,
        "clip_qkv": None,
        "intermediate_size": d.expert_inter,
        "num_experts": d.experts,
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.01,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
    }


_ARCH_FIELDS = {"qwen3_moe": _qwen3_moe, "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "olmoe": _olmoe}
