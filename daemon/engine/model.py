"""Load a packed expert store as an mlx-lm model whose SwitchGLU layers stream from an ExpertCache.

mlx-lm builds the model (its class for the checkpoint's `model_type`, its sanitize, its quantization of the dense
layers) from the store's config.json and dense safetensors, lazily. Before anything is evaluated, every SwitchGLU
named in the manifest is swapped for a StreamingSwitchGLU, so the expert weights mlx-lm would have created are
never materialised; then the dense weights are evaluated (resident) and the tokenizer is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import SwitchGLU
from mlx_lm.utils import load_model, load_tokenizer

from ..store.format import Manifest, StoreError, read_manifest
from ..store.reader import ExpertReader
from .cache import WARM, ExpertCache
from .experts import StreamingSwitchGLU
from .prefetch import Prefetcher, find_router
from .probe import Probe
from .warm import load_usage, save_usage, warm_cache

# LFU ageing: a use's weight halves every DECAY_TOKENS tokens (x MoE layers acquire calls)
DECAY_TOKENS = 16


@dataclass
class Engine:
    """A loaded store: the model, its tokenizer, and the expert machinery behind it."""

    model: nn.Module
    tokenizer: object
    manifest: Manifest
    cache: ExpertCache
    reader: ExpertReader
    prefetcher: Prefetcher
    dense_bytes: int

    def save_state(self, path: str | os.PathLike[str]) -> None:
        """Save the expert usage statistics (atomically) so a restart can warm the cache; see warm.py."""
        save_usage(path, self.manifest, self.cache.usage())

    def warm_start(self, path: str | os.PathLike[str]) -> int:
        """Start background reads of the most used experts of a previous run, up to the budget; returns how
        many were started. Never blocks on I/O: readiness is not delayed."""
        return warm_cache(self.cache, load_usage(path, self.manifest))

    def preload(self) -> int:
        """If the budget holds every expert, start background reads of all of them (warm priority, layer by layer)
        and return how many; else 0. Never blocks: a fully resident layer runs without host synchronisation
        (see ExpertCache.lookup), so filling the cache early pays off at once."""
        total = sum(layer.num_experts for layer in self.manifest.layers)
        if self.cache.capacity < total:
            return 0
        return sum(self.cache.prefetch(pos, range(layer.num_experts), priority=WARM)
                   for pos, layer in enumerate(self.manifest.layers))

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_budget(spec: str | int | float | None, total_expert_bytes: int) -> int:
    """A cache budget in bytes from '25%', '0.25', '1.5GB', '512MiB', a byte count, or None (= 100 %).

    Raises:
        ValueError: the spec is not one of those forms, or is not positive.
    """
    if spec is None:
        return total_expert_bytes
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
        budget = value * total_expert_bytes if 0 < value <= 1 and isinstance(spec, float) else value
    else:
        s = str(spec).strip().upper().replace(" ", "")
        units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}
        try:
            if s.endswith("%"):
                budget = float(s[:-1]) / 100 * total_expert_bytes
            elif (unit := next((u for u in units if s.endswith(u)), None)) is not None:
                budget = float(s[: -len(unit)]) * units[unit]
            elif "." in s:
                budget = float(s) * total_expert_bytes
            else:
                budget = float(s)
        except ValueError:
            raise ValueError(f"cache budget {spec!r}: expected e.g. '25%', '0.25', '2GB', '512MiB' or bytes") from None
    if budget <= 0:
        raise ValueError(f"cache budget {spec!r} must be positive")
    return int(budget)


def load_engine(
    store: str | os.PathLike[str],
    *,
    budget: str | int | float | None = None,
    read_mode: str = "direct",
    read_threads: int = 4,
    verify: bool = True,
    policy: str = "lfu",
    prefetch_depth: int = 1,
    preload: bool = True,
    upload: str = "auto",
    unsynced: bool = True,
    probe: Probe | None = None,
) -> Engine:
    """Load a store for streaming generation.

    Args:
        store: the store folder (made by `moed convert`).
        budget: expert cache budget (see parse_budget); at least one expert.
        read_mode: "direct" (O_DIRECT / F_NOCACHE) or "buffered" (page cache).
        read_threads: reader threads.
        verify: check each expert's CRC-32 on its first read.
        policy: cache eviction policy, "lfu" (frequency with ageing) or "lru".
        prefetch_depth: how many MoE layers ahead to predict and prefetch (0 = off).
        preload: at a budget that holds every expert, start reading them all in the background (Engine.preload).
        upload, unsynced, probe: passed to ExpertCache (the upload path, serving wholly resident layers without a
            host sync, instrumentation); benchmarks set them, the daemon keeps the defaults.

    Raises:
        StoreError: the store is missing, incomplete or does not match its model.
        ValueError: a bad budget or upload path.
    """
    root = Path(store)
    manifest = read_manifest(root)
    budget_bytes = parse_budget(budget, manifest.total_expert_bytes)
    model, _ = load_model(root, lazy=True, strict=False)
    reader = ExpertReader(root, manifest, mode=read_mode, threads=read_threads, verify=verify)
    try:
        cache = ExpertCache(manifest.layout, reader, budget_bytes, policy=policy,
                            half_life=DECAY_TOKENS * len(manifest.layers), upload=upload, unsynced=unsynced,
                            probe=probe)
        prefetcher = _swap_expert_layers(model, manifest, cache, prefetch_depth)
        dense = model.parameters()
        mx.eval(dense)
        dense_bytes = sum(a.nbytes for _, a in tree_flatten(dense))
        tokenizer = load_tokenizer(root)
    except BaseException:
        reader.close()
        raise
    engine = Engine(model, tokenizer, manifest, cache, reader, prefetcher, dense_bytes)
    if preload:
        engine.preload()
    return engine


def _swap_expert_layers(model: nn.Module, manifest: Manifest, cache: ExpertCache, depth: int) -> Prefetcher:
    modules = dict(model.named_modules())
    parents = [modules.get(layer.module.rpartition(".")[0], model) for layer in manifest.layers]
    prefetcher = Prefetcher(cache, [find_router(p, manifest.config) for p in parents], depth)
    for pos, layer in enumerate(manifest.layers):
        original = modules.get(layer.module)
        if not isinstance(original, SwitchGLU):
            raise StoreError(
                f"store layer {layer.index}: module {layer.module} is not a SwitchGLU in mlx-lm's "
                f"{manifest.model_type} model (found {type(original).__name__})"
            )
        parent_path, _, name = layer.module.rpartition(".")
        parent = modules[parent_path] if parent_path else model
        setattr(parent, name, StreamingSwitchGLU(pos, original, cache, manifest.quantization, prefetcher,
                                                 num_experts=layer.num_experts))
    left = [p for p, m in model.named_modules() if isinstance(m, SwitchGLU)]
    if left:
        raise StoreError(f"the store has no experts for SwitchGLU modules {left[:3]}{'...' if len(left) > 3 else ''}")
    return prefetcher
