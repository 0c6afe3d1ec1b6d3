"""Shared fixtures: tiny deterministic checkpoints and their stores, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Builds (once) and returns checkpoint/store folders: model_dir(arch, kind) with kind in
    'mlx' (4-bit mlx-lm layout), 'hf' (bf16 per-expert), 'hf-ref' (mlx_lm.convert of 'hf', 4-bit),
    'store-mlx' (moed convert of 'mlx'), 'store-hf' (moed convert of 'hf')."""
    from moed.daemon.store.convert import convert
    from moed.daemon.testmodel import make_test_model

    base = tmp_path_factory.mktemp("models")
    built: dict[tuple[str, str], Path] = {}

    def get(arch: str, kind: str) -> Path:
        key = (arch, kind)
        if key in built:
            return built[key]
        path = base / f"{arch}-{kind}"
        if kind in ("mlx", "hf"):
            make_test_model(path, arch=arch, size="tiny", layout=kind, bits=4)
        elif kind == "hf-ref":
            from mlx_lm import convert as mlx_convert

            mlx_convert(hf_path=str(get(arch, "hf")), mlx_path=str(path), quantize=True, q_bits=4, q_group_size=64)
        elif kind.startswith("store-"):
            convert(get(arch, kind.split("-", 1)[1]), path, bits=4, group_size=64)
        else:
            raise KeyError(kind)
        built[key] = path
        return path

    return get


TRAINED_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "trained-moe"


@pytest.fixture(scope="session")
def trained_checkpoint() -> Path:
    """The committed trained MoE fixture (an mlx-lm 4-bit qwen3_moe checkpoint); skips when it is absent."""
    if not (TRAINED_FIXTURE / "config.json").is_file() or not any(TRAINED_FIXTURE.glob("*.safetensors")):
        pytest.skip(f"the trained fixture is missing from {TRAINED_FIXTURE} (make it: python -m bench.train_fixture)")
    return TRAINED_FIXTURE


@pytest.fixture(scope="session")
def trained_store(trained_checkpoint: Path, tmp_path_factory) -> Path:
    """The trained fixture converted into a moed store (its own 4-bit quantization kept), once per session."""
    from moed.daemon.store.convert import convert

    path = tmp_path_factory.mktemp("trained") / "store"
    convert(trained_checkpoint, path, bits=None)
    return path
