"""`moed inspect`: a table a person reads, JSON for scripts, exit codes for bad stores and failed checksums."""

from __future__ import annotations

import json

from moed.daemon.cli import main as moed_main
from moed.daemon.store.format import read_manifest


def test_table_json_and_verify(model_dir, capsys, tmp_path):
    store = model_dir("qwen3_moe", "store-mlx")
    assert moed_main(["inspect", str(store), "--verify"]) == 0
    out = capsys.readouterr().out
    rows = {line[:14].strip(): line[14:] for line in out.splitlines() if line[:14].strip()}
    assert rows["model"] == "qwen3_moe" and rows["quantization"].startswith("4-bit affine, group size 64")
    assert rows["verify"] == "every checksum matches" and "{" not in out and "'" not in out  # no Python reprs
    assert moed_main(["inspect", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["moe_layers"] == len(read_manifest(store).layers)


def test_a_flipped_byte_fails_verify(model_dir, capsys, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(model_dir("qwen3_moe", "store-mlx"), store)
    m = read_manifest(store)
    path = store / m.layers[1].file
    data = bytearray(path.read_bytes())
    data[m.layout.record_bytes * 3 + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert moed_main(["inspect", str(store), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "1 errors" in out and "expert 3" in out


def test_not_a_store_is_a_usage_error(tmp_path, capsys):
    assert moed_main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_silly_values_are_refused_before_anything_loads(model_dir, capsys, tmp_path):
    store = str(model_dir("qwen3_moe", "store-mlx"))
    for argv, says in ((["--max-tokens", "-3"], "`max_tokens`"), (["--temp", "-1"], "`temperature`"),
                       (["--top-k", "-2"], "`top_k`")):
        assert moed_main(["generate", store, "hi", *argv]) == 2
        assert says in capsys.readouterr().err
    assert moed_main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    assert "is not a folder" in capsys.readouterr().err
