"""Missing, truncated and corrupt stores fail with errors that name what is wrong."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import pytest

from moed.daemon.cli import main as moed_main
from moed.daemon.config import engine_config
from moed.daemon.engine.model import load_engine
from moed.daemon.store.format import MANIFEST, StoreError, read_manifest


@pytest.fixture
def store_copy(model_dir, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(model_dir("qwen3_moe", "store-mlx"), dst)
    return dst


def test_corrupt_expert_names_layer_and_expert(store_copy):
    m = read_manifest(store_copy)
    layer = m.layers[1]
    path = store_copy / layer.file
    data = bytearray(path.read_bytes())
    expert = 3
    data[expert * m.layout.record_bytes + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with load_engine(engine_config(store_copy, cache_budget="100%", read_mode="buffered")) as eng:
        with pytest.raises(StoreError, match=rf"layer {layer.index}\b.*expert {expert}\b"):
            # a long prompt routes to every expert of every layer
            eng.model(mx.array(list(range(200)))[None])


def test_missing_manifest_is_named(store_copy):
    (store_copy / MANIFEST).unlink()
    with pytest.raises(StoreError, match="manifest.json is missing"):
        load_engine(engine_config(store_copy))


def test_truncated_layer_file_is_named(store_copy):
    m = read_manifest(store_copy)
    path = store_copy / m.layers[0].file
    path.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(StoreError, match=r"layer-000\.bin has \d+ bytes, expected"):
        load_engine(engine_config(store_copy))


def test_manifest_naming_a_module_the_model_lacks(store_copy):
    doc = json.loads((store_copy / MANIFEST).read_text())
    doc["layers"][0]["module"] = "model.layers.0.mlp.nonexistent"
    (store_copy / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="nonexistent is not a SwitchGLU"):
        load_engine(engine_config(store_copy))


def test_generate_cli_reports_a_bad_store(tmp_path, capsys):
    assert moed_main(["generate", str(tmp_path), "hello"]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_generate_cli_streams_and_prints_stats(model_dir, capsys):
    store = model_dir("qwen3_moe", "store-mlx")
    assert moed_main(["generate", str(store), "Four score", "--max-tokens", "8", "--cache-budget", "25%",
                      "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = out["stats"]
    assert s["generation_tokens"] == 8 and s["cache_misses"] > 0 and s["bytes_read"] > 0 and s["peak_rss_bytes"] > 0


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_corrupt_expert_is_never_served_even_when_prefetched(store_copy, depth):
    m = read_manifest(store_copy)
    path = store_copy / m.layers[1].file
    data = bytearray(path.read_bytes())
    for e in range(m.layers[1].num_experts):  # every record of layer 1 is corrupt
        data[e * m.layout.record_bytes + 7] ^= 0x5A
    path.write_bytes(bytes(data))
    for _ in range(6):  # prefetch timing varies from run to run
        with load_engine(engine_config(store_copy, read_mode="buffered", prefetch_depth=depth)) as eng:
            with pytest.raises(StoreError, match=rf"layer {m.layers[1].index}\b.*checksum mismatch"):
                mx.eval(eng.model(mx.array([[5, 6, 7, 8]])))
