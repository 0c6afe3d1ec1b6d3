"""The trained fixture's model: an mlx-lm `qwen3_moe` of the Qwen3-30B-A3B expert layout with small widths, its
training loss (cross-entropy plus a router load-balancing term), held-out measures, and the 4-bit checkpoint.

The forward pass used for training walks mlx-lm's own layers (attention, router, SwitchGLU) so the trained
weights are exactly the checkpoint's; it only also reads each router's probabilities for the auxiliary loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3_moe
from mlx_lm.models.base import create_attention_mask

from moed.daemon.testmodel.presets import Dims, hf_config
from moed.daemon.testmodel.tokenizer import special_ids, train_tokenizer, write_tokenizer_files


@dataclass(frozen=True)
class FixtureDims:
    """Widths of the fixture; the expert layout (128 experts, top-8, normalised top-k) is Qwen3-30B-A3B's."""

    hidden: int = 256
    layers: int = 6
    experts: int = 128
    top_k: int = 8
    expert_inter: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    vocab: int = 512
    max_pos: int = 4096

    def as_dict(self) -> dict:
        return asdict(self)


def model_config(d: FixtureDims) -> dict:
    """config.json of the float checkpoint (Hugging Face field names, float32)."""
    ids = special_ids(train_tokenizer(d.vocab))
    dims = Dims(hidden=d.hidden, layers=d.layers, experts=d.experts, top_k=d.top_k, expert_inter=d.expert_inter,
                heads=d.heads, kv_heads=d.kv_heads, head_dim=d.head_dim, vocab=d.vocab, max_pos=d.max_pos)
    return hf_config("qwen3_moe", dims, bos_id=ids["bos"], eos_id=ids["eos"]) | {"torch_dtype": "float32"}


def build_model(config: dict) -> qwen3_moe.Model:
    """A freshly initialised float32 model for `config`."""
    model = qwen3_moe.Model(qwen3_moe.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def balance_loss(probs: mx.array, top_k: int) -> mx.array:
    """Switch/Qwen load-balancing term: E * sum_i f_i * P_i over the tokens of `probs` (..., E), where f_i is the
    share of top-k slots routed to expert i and P_i its mean router probability; 1.0 when perfectly balanced."""
    experts = probs.shape[-1]
    flat = probs.reshape(-1, experts)
    inds = mx.stop_gradient(mx.argpartition(flat, kth=-top_k, axis=-1)[:, -top_k:])
    counts = (inds[..., None] == mx.arange(experts)).astype(flat.dtype).sum(axis=(0, 1))
    share = counts / (flat.shape[0] * top_k)
    return experts * mx.sum(share * flat.mean(axis=0))


def _dropout(x: mx.array, rate: float) -> mx.array:
    if rate <= 0.0:
        return x
    keep = mx.random.bernoulli(1.0 - rate, x.shape)
    return mx.where(keep, x / (1.0 - rate), mx.zeros_like(x))


def forward(model: qwen3_moe.Model, inputs: mx.array, dropout: float = 0.0
            ) -> tuple[mx.array, mx.array, list[mx.array]]:
    """Logits, the mean balance term over the MoE layers, and each layer's router probabilities.

    `dropout` (training only) drops embedding, attention-output and expert-output activations; at 0 this is
    exactly `model(inputs)`."""
    inner = model.model
    h = _dropout(inner.embed_tokens(inputs), dropout)
    mask = create_attention_mask(h, None)
    aux, probs_per_layer = mx.array(0.0), []
    for layer in inner.layers:
        h = h + _dropout(layer.self_attn(layer.input_layernorm(h), mask, None), dropout)
        z = layer.post_attention_layernorm(h)
        probs = mx.softmax(layer.mlp.gate(z), axis=-1, precise=True)
        aux = aux + balance_loss(probs, layer.mlp.top_k)
        probs_per_layer.append(probs)
        h = h + _dropout(layer.mlp(z), dropout)
    logits = model.lm_head(inner.norm(h))
    return logits, aux / len(inner.layers), probs_per_layer


def loss_fn(model: qwen3_moe.Model, inputs: mx.array, targets: mx.array, weights: mx.array, aux_coef: float,
            dropout: float = 0.0) -> tuple[mx.array, mx.array]:
    """Training loss and the cross-entropy alone. The loss is the next-token cross-entropy weighted per target
    and divided by the number of targets (a weight below 1 acts as a lower learning rate for those tokens), plus
    aux_coef * the balance term; the reported cross-entropy is the weighted mean."""
    logits, aux, _ = forward(model, inputs, dropout)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none") * weights
    return ce.sum() / ce.size + aux_coef * aux, ce.sum() / mx.maximum(weights.sum(), 1e-6)


def heldout_nll(model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the scored targets (>= 0) given the inputs, teacher-forced."""
    logits = model(mx.array(inputs)).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    t = mx.array(np.maximum(targets, 0))
    picked = mx.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    mask = mx.array((targets >= 0).astype(np.float32))
    return float(-(picked * mask).sum() / mask.sum())


def copy_scores(model: nn.Module, rows: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Over the masked positions: mean NLL of the row's next token, and the share where it is the greedy token."""
    logits = model(mx.array(rows[:, :-1])).astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    t = mx.array(rows[:, 1:])
    picked = mx.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    hit = (mx.argmax(logits, axis=-1) == t).astype(mx.float32)
    m = mx.array(masks[:, 1:])
    return float(-(picked * m).sum() / m.sum()), float((hit * m).sum() / m.sum())


def expert_load(model: qwen3_moe.Model, inputs: np.ndarray) -> list[dict]:
    """Per MoE layer on `inputs`: the normalised entropy of the top-k expert load (1.0 = uniform), the busiest
    expert's load over the mean, and how many experts were never chosen."""
    _, _, probs = forward(model, mx.array(inputs))
    out = []
    for layer, p in zip(model.model.layers, probs):
        k = layer.mlp.top_k
        inds = np.asarray(mx.argpartition(p, kth=-k, axis=-1)[..., -k:]).reshape(-1)
        counts = np.bincount(inds, minlength=p.shape[-1]).astype(np.float64)
        share = counts / counts.sum()
        nz = share[share > 0]
        out.append({"entropy_norm": round(float(-(nz * np.log(nz)).sum() / math.log(len(share))), 4),
                    "max_over_mean": round(float(share.max() * len(share)), 3),
                    "unused_experts": int((counts == 0).sum())})
    return out


def quantize(model: qwen3_moe.Model, config: dict, bits: int, group_size: int) -> tuple[nn.Module, dict]:
    """mlx-lm's quantization (the model's own predicate: routers at 8 bits, other linear layers at `bits`)."""
    from mlx_lm.utils import quantize_model

    return quantize_model(model, config, group_size=group_size, bits=bits)


def save_checkpoint(model: nn.Module, config: dict, out: Path, vocab: int) -> int:
    """Write an mlx-lm checkpoint folder (weights, config with its quantization block, tokenizer files);
    returns the folder's size in bytes."""
    from mlx_lm.utils import save_config, save_model

    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    index = out / "model.safetensors.index.json"
    if index.exists() and _single_shard(index):
        index.unlink()  # one shard: mlx_lm.load reads model*.safetensors without the index
    save_config(config, config_path=out / "config.json")
    # every training row starts with BOS: the checkpoint's tokenizer adds it, as Llama's does
    write_tokenizer_files(out, vocab, config["max_position_embeddings"], add_bos=True)
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


def _single_shard(index: Path) -> bool:
    return len(set(json.loads(index.read_text())["weight_map"].values())) == 1


def parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))
