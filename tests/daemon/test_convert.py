"""`moed convert`: stores from every source kind equal what mlx_lm.convert writes, bit for bit; failures are clean.

Sources are tiny make_test_model checkpoints (qwen3_moe, mixtral, qwen2_moe) in three kinds: an mlx-lm 4-bit
checkpoint (copied byte for byte), an mlx-lm bf16 checkpoint and a Hugging Face bf16 checkpoint (both quantized
here, and compared with mlx_lm.convert(quantize=True) of the same source).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.convert import convert as mlx_convert

import moed.daemon.store.convert as conv
from moed.daemon.commands import convert as convert_cmd
from moed.daemon.store.convert import convert
from moed.daemon.store.format import StoreError, crc32, read_manifest
from moed.daemon.store.safetensors_raw import SafetensorsFile, SafetensorsWriter
from moed.daemon.testmodel import make_test_model

ARCHES = ("qwen3_moe", "mixtral", "qwen2_moe")
KINDS = {"mlx-quantized": ("mlx", 4), "mlx-float": ("mlx", 0), "hf": ("hf", 0)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        (arch, kind): make_test_model(root / f"{arch}-{kind}", arch, "tiny", layout, bits)
        for arch in ARCHES
        for kind, (layout, bits) in KINDS.items()
    }


def mlx_reference(src: Path, out: Path, bits: int) -> Path:
    """What mlx_lm.convert writes for `src` (the source itself when it is already quantized)."""
    if json.loads((src / "config.json").read_text()).get("quantization"):
        return src
    with contextlib.redirect_stdout(io.StringIO()):
        mlx_convert(str(src), str(out), quantize=bits > 0, q_bits=bits or None, q_group_size=64)
    return out


def raw(a: mx.array) -> bytes:
    return np.asarray(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a).tobytes()


def load_all(folder: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for f in sorted(folder.glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    return weights


def assert_store_equals(store: Path, ref: Path) -> None:
    """Dense tensors, expert records, checksums and config.json all equal mlx-lm's output."""
    m = read_manifest(store)
    want, got = load_all(ref), load_all(store)
    experts = tuple(layer.module + "." for layer in m.layers)
    dense = {k: v for k, v in want.items() if not k.startswith(experts)}
    assert sorted(got) == sorted(dense)
    for k, v in dense.items():
        assert (got[k].dtype, got[k].shape) == (v.dtype, v.shape), k
        assert raw(got[k]) == raw(v), k
    assert [layer.index for layer in m.layers] == sorted(layer.index for layer in m.layers)
    for layer in m.layers:
        data = (store / layer.file).read_bytes()
        stacked_names = {k for k in want if k.startswith(layer.module + ".")}
        assert {f"{layer.module}.{t.name}" for t in m.layout.tensors} == stacked_names
        for e in range(layer.num_experts):
            record = data[e * m.layout.record_bytes : (e + 1) * m.layout.record_bytes]
            assert crc32(record[: m.layout.payload_bytes]) == layer.checksums[e]
            for name, arr in m.layout.unpack(record).items():
                stacked = want[f"{layer.module}.{name}"]
                assert str(stacked.dtype).endswith(m.layout.tensor(name).dtype)
                assert arr.tobytes() == raw(stacked[e]), (layer.module, e, name)
    assert json.loads((store / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    assert m.config == json.loads((store / "config.json").read_text())
    assert (store / "tokenizer.json").is_file() and not list(store.parent.glob("*.partial-*"))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("arch", ARCHES)
def test_store_equals_mlx_lm_convert(sources, tmp_path: Path, arch: str, kind: str) -> None:
    src = sources[arch, kind]
    m = convert(src, tmp_path / "store", bits=4, group_size=64)
    assert m.quantization == {"bits": 4, "group_size": 64, "mode": "affine"}
    assert m.layers[0].module.endswith(".switch_mlp") and m.model_type == arch
    assert [t.name for t in m.layout.tensors][:3] == ["gate_proj.weight", "gate_proj.scales", "gate_proj.biases"]
    assert_store_equals(tmp_path / "store", mlx_reference(src, tmp_path / "ref", 4))


@pytest.mark.parametrize("bits", [0, 8])
def test_other_bits_equal_mlx_lm(sources, tmp_path: Path, bits: int) -> None:
    src = sources["qwen2_moe", "hf"]
    m = convert(src, tmp_path / "store", bits=bits)
    assert m.quantization == ({"bits": 8, "group_size": 64, "mode": "affine"} if bits else None)
    assert_store_equals(tmp_path / "store", mlx_reference(src, tmp_path / "ref", bits))


def test_float32_source_is_cast_like_mlx_lm(sources, tmp_path: Path) -> None:
    src = copy_source(sources["mixtral", "hf"], tmp_path / "src")
    weights = {k: v.astype(mx.float32) for k, v in mx.load(str(src / "model.safetensors")).items()}
    mx.save_safetensors(str(src / "model.safetensors"), weights, metadata={"format": "pt"})
    convert(src, tmp_path / "store", bits=4)
    assert_store_equals(tmp_path / "store", mlx_reference(src, tmp_path / "ref", 4))


def test_dense_shards(sources, tmp_path: Path, monkeypatch) -> None:
    real = conv.make_shards
    monkeypatch.setattr(conv, "make_shards", lambda weights, _gb: real(weights, 0))  # one tensor per shard
    src = sources["qwen3_moe", "hf"]
    m = convert(src, tmp_path / "store")
    assert len(m.dense_files) > 50 and m.dense_files[0].endswith(f"-of-{len(m.dense_files):05d}.safetensors")
    index = json.loads((tmp_path / "store" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(m.dense_files)
    assert_store_equals(tmp_path / "store", mlx_reference(src, tmp_path / "ref", 4))


def test_refuses_to_replace_its_source(sources, tmp_path: Path) -> None:
    src = copy_source(sources["qwen3_moe", "mlx-quantized"], tmp_path / "src")
    with pytest.raises(StoreError, match="would replace the source"):
        convert(src, src, bits=None, force=True)
    assert (src / "config.json").is_file()


def test_keep_quantization_and_refuse_requantizing(sources, tmp_path: Path) -> None:
    src = sources["qwen3_moe", "mlx-quantized"]
    assert convert(src, tmp_path / "a", bits=None).quantization["bits"] == 4
    with pytest.raises(StoreError, match="re-quantizing"):
        convert(src, tmp_path / "b", bits=8)
    with pytest.raises(StoreError, match="re-quantizing"):
        convert(src, tmp_path / "c", bits=4, group_size=32)
    assert convert(sources["qwen3_moe", "mlx-float"], tmp_path / "d", bits=None).quantization is None


def copy_source(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(src: Path, edit) -> None:  # noqa: ANN001 (a function of the weights dict)
    f = next(src.glob("model*.safetensors"))
    weights = dict(mx.load(str(f)))
    edit(weights)
    mx.save_safetensors(str(f), weights)


@pytest.mark.parametrize("kind", ["hf", "mlx-quantized"])
def test_missing_dense_tensor(sources, tmp_path: Path, kind: str) -> None:
    src = copy_source(sources["qwen3_moe", kind], tmp_path / "src")
    rewrite(src, lambda w: w.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(StoreError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight is missing"):
        convert(src, tmp_path / "store", bits=None)
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob("*.partial-*"))


def test_missing_expert_tensor(sources, tmp_path: Path) -> None:
    src = copy_source(sources["mixtral", "hf"], tmp_path / "src")
    rewrite(src, lambda w: w.pop("model.layers.2.block_sparse_moe.experts.5.w3.weight"))
    with pytest.raises(StoreError, match=r"model\.layers\.2\.block_sparse_moe\.experts\.5\.w3\.weight is missing"):
        convert(src, tmp_path / "store")


@pytest.mark.parametrize("key", ["model.norm.weight", "model.layers.0.mlp.experts.3.down_proj.weight"])
def test_shape_mismatch(sources, tmp_path: Path, key: str) -> None:
    src = copy_source(sources["qwen3_moe", "hf"], tmp_path / "src")
    rewrite(src, lambda w: w.__setitem__(key, mx.zeros((3, 5), dtype=mx.bfloat16)))
    with pytest.raises(StoreError, match=rf"{key.replace('.', '[.]')} in .*model.safetensors has shape \[3, 5\]"):
        convert(src, tmp_path / "store")


def test_stacked_expert_shape_mismatch(sources, tmp_path: Path) -> None:
    src = copy_source(sources["qwen2_moe", "mlx-float"], tmp_path / "src")
    key = "model.layers.3.mlp.switch_mlp.up_proj.weight"
    rewrite(src, lambda w: w.__setitem__(key, w[key][:, :-1]))
    with pytest.raises(StoreError, match=rf"{key.replace('.', '[.]')} in .* has shape"):
        convert(src, tmp_path / "store")


def test_unknown_model_type(sources, tmp_path: Path) -> None:
    src = copy_source(sources["qwen3_moe", "hf"], tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"model_type": "no_such_moe"}))
    with pytest.raises(StoreError, match="model_type 'no_such_moe' is not supported"):
        convert(src, tmp_path / "store")


def test_model_without_moe_layers(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128,
              "num_attention_heads": 4, "rms_norm_eps": 1e-5, "vocab_size": 64, "num_key_value_heads": 4}
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(tmp_path / "src" / "model.safetensors"), {"x": mx.zeros((1,))})
    with pytest.raises(StoreError, match="no SwitchGLU"):
        convert(tmp_path / "src", tmp_path / "store")


def test_corrupt_safetensors_header(sources, tmp_path: Path) -> None:
    src = copy_source(sources["qwen3_moe", "hf"], tmp_path / "src")
    f = src / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.seek(9)
        fh.write(b"\xff\x00garbage")
    with pytest.raises(StoreError, match=r"model\.safetensors: corrupt safetensors header"):
        convert(src, tmp_path / "store")


def test_existing_dst_needs_force(sources, tmp_path: Path) -> None:
    dst = tmp_path / "store"
    dst.mkdir()
    (dst / "old").write_text("x")
    with pytest.raises(StoreError, match="already exists"):
        convert(sources["qwen3_moe", "mlx-quantized"], dst, bits=None)
    convert(sources["qwen3_moe", "mlx-quantized"], dst, bits=None, force=True)
    assert not (dst / "old").exists() and read_manifest(dst).layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_conversion_leaves_nothing(sources, tmp_path: Path, monkeypatch, exc) -> None:
    real, calls = conv._make_record, []

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 13:  # in the middle of the second layer
            raise exc("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(conv, "_make_record", flaky)
    with pytest.raises(exc):
        convert(sources["mixtral", "hf"], tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_partial_folder_never_loads(sources, tmp_path: Path, monkeypatch) -> None:
    real, seen = conv._commit, []

    def check_then_commit(partial: Path, dst: Path, manifest) -> None:  # noqa: ANN001
        assert partial.name.startswith("store.partial-") and (partial / "experts" / "layer-003.bin").is_file()
        with pytest.raises(StoreError, match="unfinished output of a conversion"):
            read_manifest(partial)
        seen.append(partial)
        real(partial, dst, manifest)

    monkeypatch.setattr(conv, "_commit", check_then_commit)
    convert(sources["qwen3_moe", "hf"], tmp_path / "store")
    assert seen and not seen[0].exists() and read_manifest(tmp_path / "store")


def test_safetensors_raw_slices_and_writer(tmp_path: Path) -> None:
    a = mx.random.normal((4, 3, 5)).astype(mx.bfloat16)
    mx.save_safetensors(str(tmp_path / "a.safetensors"), {"a": a, "b": mx.arange(7, dtype=mx.uint32)})
    with SafetensorsFile(tmp_path / "a.safetensors") as f:
        assert f.info("a").mlx_dtype == "bfloat16" and f.read("a", 2).tobytes() == raw(a[2])
        assert f.read("b").tolist() == list(range(7))
        w = SafetensorsWriter(tmp_path / "b.safetensors", [("x", "bfloat16", (4, 3, 5)), ("y", "uint32", (7,))], {})
        w.write("x", f.read("a"))
        w.write("y", f.read("b"))
        w.close()
    back = mx.load(str(tmp_path / "b.safetensors"))
    assert raw(back["x"]) == raw(a) and back["y"].tolist() == list(range(7))


def test_cli(sources, tmp_path: Path, capsys) -> None:
    sub = argparse.ArgumentParser().add_subparsers()
    convert_cmd.register(sub)
    parser = sub.choices["convert"]
    args = parser.parse_args([str(sources["qwen2_moe", "mlx-quantized"]), str(tmp_path / "s")])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "layer 4/4" in err and "MB/s" in err and "4-bit" in err
    args = parser.parse_args([str(sources["qwen2_moe", "hf"]), str(tmp_path / "s"), "--quiet"])
    assert args.func(args) == 1 and "already exists" in capsys.readouterr().err
    args = parser.parse_args([str(sources["qwen2_moe", "hf"]), str(tmp_path / "s"), "--force", "--quiet", "--bits=0"])
    assert args.func(args) == 0 and capsys.readouterr().err == ""
    assert read_manifest(tmp_path / "s").quantization is None


# Linux: VmHWM of this process's own address space (ru_maxrss would carry over the forking parent's peak).
PEAK_RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from moed.daemon.store.convert import convert
convert(sys.argv[1], sys.argv[2], bits=4)
status = Path("/proc/self/status")
if status.exists():
    print(next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmHWM")))
else:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))
"""


@pytest.mark.slow
def test_memory_is_bounded_by_tensors_not_model(tmp_path: Path) -> None:
    """The whole converter process (Python, mlx, mlx-lm included) peaks far below a 770 MB bf16 checkpoint."""
    import subprocess
    import sys

    src = make_test_model(tmp_path / "src", "qwen3_moe", "tiny", "hf", 0, hidden=512, experts=64, expert_inter=512,
                          layers=8, progress=False)
    size = sum(f.stat().st_size for f in src.glob("model*.safetensors"))
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(src), str(tmp_path / "store")],
                         capture_output=True, text=True, check=True)
    peak = int(out.stdout.split()[-1])
    assert size > 750e6 and peak < 250e6, f"peak RSS {peak / 1e6:.0f} MB converting {size / 1e6:.0f} MB"


def test_dtype_casts_a_bf16_source_like_mlx_lm(sources, tmp_path: Path) -> None:
    src = sources["qwen3_moe", "hf"]  # bf16
    convert(src, tmp_path / "store", bits=4, dtype="float32")
    with contextlib.redirect_stdout(io.StringIO()):
        mlx_convert(str(src), str(tmp_path / "ref"), quantize=True, q_bits=4, q_group_size=64, dtype="float32")
    ref_config = json.loads((tmp_path / "ref" / "config.json").read_text())  # mlx-lm casts, keeps the old name
    (tmp_path / "ref" / "config.json").write_text(json.dumps({**ref_config, "torch_dtype": "float32"}))
    assert_store_equals(tmp_path / "store", tmp_path / "ref")
    assert json.loads((tmp_path / "store" / "config.json").read_text())["torch_dtype"] == "float32"
    with pytest.raises(StoreError, match="already quantized"):
        convert(sources["qwen3_moe", "mlx-quantized"], tmp_path / "q", bits=None, dtype="float32")


def test_stale_partials_of_dead_conversions_are_removed(sources, tmp_path: Path) -> None:
    dead, alive = tmp_path / "store.partial-999999999", tmp_path / f"store.partial-{os.getppid()}"
    other = tmp_path / "other.partial-999999999"
    for d in (dead, alive, other):
        d.mkdir()
    assert conv.stale_partials(tmp_path / "store") == [dead]
    convert(sources["qwen3_moe", "mlx-quantized"], tmp_path / "store", bits=None)
    assert not dead.exists() and alive.exists() and other.exists()


@pytest.mark.parametrize("err, says", [(errno.ENOSPC, "no space left"), (errno.EACCES, "cannot write")])
def test_disk_full_or_unwritable_is_one_line(sources, tmp_path: Path, monkeypatch, capsys, err, says) -> None:
    def fail(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(err, os.strerror(err), str(tmp_path / "s" / "experts" / "layer-000.bin"))

    monkeypatch.setattr(conv, "_write_experts", fail)
    sub = argparse.ArgumentParser().add_subparsers()
    convert_cmd.register(sub)
    args = sub.choices["convert"].parse_args([str(sources["qwen2_moe", "hf"]), str(tmp_path / "s"), "--quiet"])
    assert args.func(args) == 1
    out = capsys.readouterr().err.strip()
    assert says in out and "\n" not in out and "Traceback" not in out
    assert list(tmp_path.iterdir()) == []  # the partial folder went too


def test_not_a_store_says_what_the_folder_is(sources, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cases = {tmp_path / "nope": "does not exist", Path("Qwen/Qwen3-30B-A3B"): "Hugging Face model id",
             sources["qwen3_moe", "hf"]: "moed convert", tmp_path / "store.partial-12": "unfinished output",
             tmp_path / "empty": "manifest.json is missing"}
    (tmp_path / "store.partial-12").mkdir()
    (tmp_path / "empty").mkdir()
    for path, says in cases.items():
        with pytest.raises(StoreError, match=says):
            read_manifest(path)
    with pytest.raises(StoreError, match="is a model checkpoint, not a moed store: convert it"):
        read_manifest(sources["qwen3_moe", "hf"])
