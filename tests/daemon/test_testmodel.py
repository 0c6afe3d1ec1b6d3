"""Tests of moed.daemon.testmodel: deterministic random MoE checkpoints that mlx-lm loads and runs.

The central check: the mlx layout is byte-identical to `mlx_lm.convert` of the hf layout (weights,
index and config), for every architecture, quantized and bf16, single-file and sharded.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from moed.daemon.testmodel import ARCHES, SIZES, corpus_text, make_test_model, resolve_dims
from moed.daemon.testmodel import build as build_mod
from moed.daemon.testmodel.presets import hf_config
from moed.daemon.testmodel.structure import mlx_layout
from moed.daemon.testmodel.tokenizer import CHAT_TEMPLATE, IM_END, IM_START, train_tokenizer

REQUIRED_ARCHES = ("qwen3_moe", "mixtral", "qwen2_moe")
# Files mlx_lm.convert writes whose bytes must match ours (the tokenizer files it re-saves through
# the installed transformers, in that version's own format; README.md is its model card).
SAME_AS_CONVERT = ("config.json", "model.safetensors.index.json", "generation_config.json", "tokenizer.json")


def _convert(hf: Path, dst: Path, bits: int) -> Path:
    import mlx_lm

    if bits:
        mlx_lm.convert(str(hf), str(dst), quantize=True, q_bits=bits, q_group_size=64)
    else:
        mlx_lm.convert(str(hf), str(dst))
    return dst


def _assert_same_as_convert(ours: Path, theirs: Path) -> None:
    weights = sorted(p.name for p in theirs.glob("model*.safetensors"))
    assert weights == sorted(p.name for p in ours.glob("model*.safetensors"))
    for name in (*weights, *SAME_AS_CONVERT):
        assert filecmp.cmp(ours / name, theirs / name, shallow=False), f"{name} differs from mlx_lm.convert"


def _tree_digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_presets_cover_required_arches_and_sizes():
    assert set(REQUIRED_ARCHES) <= set(ARCHES)
    assert SIZES == ("tiny", "small", "bench")
    for arch in ARCHES:
        d = resolve_dims(arch, "bench")
        assert d.hidden % 64 == 0 and d.expert_inter % 64 == 0
        # mlx-lm's own (lazy, never evaluated) layout of the 4-bit bench model: >= 4 GB of experts.
        layout = mlx_layout(hf_config(arch, d, bos_id=0, eos_id=2), bits=4, group_size=64)
        expert_bytes = sum(t.nbytes for t in layout.tensors if ".switch_mlp." in t.name)
        assert expert_bytes >= 4e9, arch
    assert resolve_dims("mixtral", "tiny", layers=2, experts=4).layers == 2
    with pytest.raises(ValueError):
        resolve_dims("qwen3_moe", "tiny", top_k=9)
    with pytest.raises(ValueError):
        resolve_dims("nope", "tiny")


@pytest.mark.parametrize("bits", [4, 0])
@pytest.mark.parametrize("arch", ARCHES)
def test_mlx_layout_is_bit_identical_to_mlx_lm_convert(tmp_path, arch, bits):
    hf = make_test_model(tmp_path / "hf", arch=arch, layout="hf", seed=3)
    ours = make_test_model(tmp_path / "mlx", arch=arch, layout="mlx", bits=bits, seed=3)
    _assert_same_as_convert(ours, _convert(hf, tmp_path / "converted", bits))
    config = json.loads((ours / "config.json").read_text())
    if bits:
        assert config["quantization"]["bits"] == bits and config["quantization_config"] == config["quantization"]
    else:
        assert "quantization" not in config


def test_sharded_layouts_match_mlx_lm_with_the_same_shard_size(tmp_path, monkeypatch):
    import mlx_lm.utils

    max_bytes = 200_000

    def make_shards(weights, max_file_size_gb=None):  # mlx-lm's rule, with a byte limit
        shards, size = [], 0
        for k, v in weights.items():
            if not shards or size + v.nbytes > max_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += v.nbytes
        return shards

    monkeypatch.setattr(mlx_lm.utils, "make_shards", make_shards)
    hf = make_test_model(tmp_path / "hf", layout="hf", shard_gb=max_bytes / (1 << 30))
    hf_files = sorted(p.name for p in hf.glob("model*.safetensors"))
    assert len(hf_files) > 2 and hf_files[0] == f"model-00001-of-{len(hf_files):05d}.safetensors"
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(hf_files)
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in index["weight_map"]
    ours = make_test_model(tmp_path / "mlx", layout="mlx", shard_gb=max_bytes / (1 << 30))
    assert len(list(ours.glob("model-*-of-*.safetensors"))) > 1
    _assert_same_as_convert(ours, _convert(hf, tmp_path / "converted", 4))


def test_builds_are_deterministic_and_seeded(tmp_path):
    a = make_test_model(tmp_path / "a", arch="qwen2_moe")
    b = make_test_model(tmp_path / "b", arch="qwen2_moe")
    c = make_test_model(tmp_path / "c", arch="qwen2_moe", seed=1)
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a)["model.safetensors"] != _tree_digest(c)["model.safetensors"]
    assert _tree_digest(a)["tokenizer.json"] == _tree_digest(c)["tokenizer.json"]


@pytest.mark.parametrize("arch", ARCHES)
def test_loads_and_generates_with_finite_varied_logits(tmp_path, arch):
    import mlx_lm
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, tok = mlx_lm.load(str(make_test_model(tmp_path / "m", arch=arch)))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Four score and seven"}],
                                     add_generation_prompt=True)
    text = mlx_lm.generate(model, tok, prompt=prompt, max_tokens=4, verbose=False)
    assert isinstance(text, str)
    tokens = []
    for (token, logprobs), _ in zip(generate_step(mx.array(prompt), model, sampler=make_sampler(0.0)),
                                    range(72)):
        assert mx.all(mx.isfinite(logprobs)).item()
        tokens.append(int(token))
    assert len(set(tokens[:8])) >= 4, tokens


def test_hf_layout_has_per_expert_bf16_tensors_and_loads(tmp_path):
    import mlx_lm
    from mlx.utils import tree_map

    for arch, expert in [("qwen3_moe", "mlp.experts.5.gate_proj"), ("mixtral", "block_sparse_moe.experts.5.w1"),
                         ("qwen2_moe", "mlp.experts.5.up_proj")]:
        hf = make_test_model(tmp_path / arch, arch=arch, layout="hf")
        config = json.loads((hf / "config.json").read_text())
        assert config["torch_dtype"] == "bfloat16" and config["model_type"] == arch
        weights = mx.load(str(hf / "model.safetensors"))
        assert weights[f"model.layers.3.{expert}.weight"].dtype == mx.bfloat16
        assert all(v.dtype == mx.bfloat16 for v in weights.values())
        model, _ = mlx_lm.load(str(hf))
        # MLX's CPU gather_mm is float32-only, so run the bf16 checkpoint in float32 here.
        model.update(tree_map(lambda v: v.astype(mx.float32), model.parameters()))
        logits = model(mx.array([[0, 5, 6, 7]]))
        assert logits.shape == (1, 4, config["vocab_size"]) and mx.all(mx.isfinite(logits)).item()


def test_overrides_reach_the_config(tmp_path):
    import mlx_lm

    path = make_test_model(tmp_path / "m", arch="mixtral", layers=2, experts=4)
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["num_local_experts"] == 4
    model, _ = mlx_lm.load(str(path))
    assert len(model.layers) == 2


def test_tokenizer_round_trip_and_chat_template(tmp_path):
    import mlx_lm

    path = make_test_model(tmp_path / "m")
    _, tok = mlx_lm.load(str(path))
    config = json.loads((path / "config.json").read_text())
    assert len(tok.get_vocab()) == config["vocab_size"]
    text = "We hold these truths to be self-evident, that all men are created equal.\n\nCall me Ishmael."
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token == IM_END and tok.eos_token_id == 2
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True)
    assert tok.decode(ids) == f"{IM_START}user\nHi there{IM_END}\n{IM_START}assistant\n"
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["chat_template"] == CHAT_TEMPLATE
    assert (path / "special_tokens_map.json").exists()


def test_tokenizer_training_is_deterministic_across_processes():
    code = ("import hashlib; from moed.daemon.testmodel.tokenizer import train_tokenizer; "
            "print(hashlib.sha256(train_tokenizer(1024).to_str().encode()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == hashlib.sha256(train_tokenizer(1024).to_str().encode()).hexdigest()


def test_corpus_text():
    text = corpus_text()
    assert len(text) > 40_000
    assert "We hold these truths to be self-evident" in text and "Call me Ishmael" in text


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_leaves_no_directory(tmp_path, monkeypatch, error):
    real = build_mod.tensor_value
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise error("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(build_mod, "tensor_value", failing)
    with pytest.raises(error):
        make_test_model(tmp_path / "m", layout="hf")
    assert list(tmp_path.iterdir()) == []


def test_progress_goes_to_stderr(tmp_path, capsys):
    make_test_model(tmp_path / "m", progress=True)
    captured = capsys.readouterr()
    assert "layer 4/4" in captured.err and captured.out == ""


def test_existing_directory_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileExistsError):
        make_test_model(tmp_path / "m")


def test_command(tmp_path, capsys):
    from moed.daemon.commands import make_test_model as command

    parser = argparse.ArgumentParser(prog="moed")
    command.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "m"
    args = parser.parse_args(["make-test-model", str(out), "--arch", "mixtral", "--layout", "mlx",
                              "--bits", "4", "--group-size", "64", "--seed", "2", "--layers", "2"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "moed_testmodel.json").read_text())["dims"]["layers"] == 2
    assert args.func(args) == 2  # exists now


@pytest.mark.parametrize("arch", REQUIRED_ARCHES)
def test_float32_mlx_layout_matches_mlx_lm_convert_with_dtype(tmp_path, arch):
    import mlx.core as mx
    import mlx_lm

    hf = make_test_model(tmp_path / "hf", arch=arch, layout="hf", seed=5)
    ours = make_test_model(tmp_path / "mlx", arch=arch, layout="mlx", bits=4, seed=5, dtype="float32")
    mlx_lm.convert(str(hf), str(tmp_path / "converted"), quantize=True, q_bits=4, q_group_size=64, dtype="float32")
    a, b = mx.load(str(ours / "model.safetensors")), mx.load(str(tmp_path / "converted" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item(), k
    assert any(v.dtype == mx.float32 for v in a.values())
