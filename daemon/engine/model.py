"""Load a packed expert store as an mlx-lm model whose SwitchGLU layers stream from an ExpertCache.

mlx-lm builds the model (its class for the checkpoint's `model_type`, its sanitize, its quantization of the dense
layers) from the store's config.json and dense safetensors, lazily. Before anything is evaluated, every SwitchGLU
named in the manifest is swapped for a StreamingSwitchGLU, so the expert weights mlx-lm would have created are
never materialised; then the dense weights are evaluated (resident) and the tokenizer is loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import SwitchGLU
from mlx_lm.utils import load_model, load_tokenizer

from .. import budget
from ..config import EngineConfig
from ..store.format import Manifest, StoreError, read_manifest
from ..store.reader import ExpertReader
from .cache import WARM, ExpertCache
from .draft_rows import DraftRows
from .experts import StreamingSwitchGLU
from .prefetch import Prefetcher, find_router
from .probe import Probe
from .slot_policy import HALF_LIFE_TOKENS
from .warm import load_usage, save_usage, warm_cache

log = logging.getLogger(__name__)
# LFU ageing: a use's weight halves every DECAY_TOKENS tokens (x MoE layers acquire calls); see slot_policy.py
DECAY_TOKENS = HALF_LIFE_TOKENS


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
    draft_rows: DraftRows | None = None  # verification passes tell the cache their drafts through it

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

    def set_prefetch_depth(self, depth: int) -> None:
        """Predict and prefetch this many MoE layers ahead from the next layer call on (0 = off); call on the
        MLX thread, between steps.

        Raises:
            ValueError: a negative depth.
        """
        self.prefetcher.set_depth(depth)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# MLX's CUDA backend keeps cuDNN attention plans in an LRU keyed on exact shapes (a multi-row bf16/fp16 attention
# call: a verification pass or a prompt, at each new key length) and by default raises "Cache thrashing is
# happening" once it has missed twice its capacity, after which every such call fails: a daemon would stop serving
# after a few hundred verification passes or prompt lengths. The cache keeps evicting without the check; the misses
# still cost their plan builds (adaptive K measures that, docs/speculation.md). No effect on Metal or the CPU.
BACKEND_ENV_DEFAULTS = {"MLX_ENABLE_CACHE_THRASHING_CHECK": "0"}


def long_lived_backend_env() -> None:
    """Set BACKEND_ENV_DEFAULTS where the environment does not set them (a user's own setting wins). Before the
    first model call: MLX reads them when it first builds the caches they govern."""
    for key, value in BACKEND_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def load_engine(config: EngineConfig, *, verify: bool = True, preload: bool = True, upload: str = "auto",
                unsynced: bool = True, probe: Probe | None = None) -> Engine:
    """Load a store for streaming generation, as the engine config says.

    Args:
        config: the store, cache budget (see moed.daemon.budget; a budget above the store's experts is clamped to
            100 % and one below a single expert raised to one expert, with a logged warning), read mode and
            threads, cache policy and prefetch depth. Build one with config.engine_config(store, **keys).
        verify: check each expert's CRC-32 on its first read.
        preload: at a budget that holds every expert, start reading them all in the background (Engine.preload).
        upload, unsynced, probe: passed to ExpertCache (the upload path, serving wholly resident layers without a
            host sync, instrumentation); benchmarks set them, the daemon keeps the defaults.

    Raises:
        StoreError: the store is missing, incomplete or does not match its model.
        BudgetError: a cache budget that cannot be used (a ValueError).
        ValueError: an unknown upload path.
    """
    long_lived_backend_env()
    root = Path(config.store)
    manifest = read_manifest(root)
    cache_budget = budget.resolve(config.cache_budget, manifest.total_expert_bytes, manifest.expert_bytes)
    if cache_budget.warning:
        log.warning("%s", cache_budget.warning)
    model, _ = load_model(root, lazy=True, strict=False)
    reader = ExpertReader(root, manifest, mode=config.read_mode, threads=config.read_threads, verify=verify)
    try:
        cache = ExpertCache(manifest.layout, reader, cache_budget.bytes, policy=config.cache_policy,
                            half_life=DECAY_TOKENS * len(manifest.layers), upload=upload, unsynced=unsynced,
                            probe=probe)
        draft_rows = DraftRows(cache)
        prefetcher = _swap_expert_layers(model, manifest, cache, config.prefetch_depth, draft_rows)
        dense = model.parameters()
        mx.eval(dense)
        dense_bytes = sum(a.nbytes for _, a in tree_flatten(dense))
        tokenizer = load_tokenizer(root)
    except BaseException:
        reader.close()
        raise
    engine = Engine(model, tokenizer, manifest, cache, reader, prefetcher, dense_bytes, draft_rows)
    if preload:
        engine.preload()
    return engine


def _swap_expert_layers(model: nn.Module, manifest: Manifest, cache: ExpertCache, depth: int,
                        draft_rows: DraftRows) -> Prefetcher:
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
                                                 num_experts=layer.num_experts, draft_rows=draft_rows))
    left = [p for p, m in model.named_modules() if isinstance(m, SwitchGLU)]
    if left:
        raise StoreError(f"the store has no experts for SwitchGLU modules {left[:3]}{'...' if len(left) > 3 else ''}")
    return prefetcher
