"""The daemon's config: file < environment < flags, strict validation naming the key, and the documented table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moed.daemon.cli import main
from moed.daemon.config import (KEYS, ConfigError, DaemonConfig, as_toml, check_with_store, describe, engine_config,
                                load_config)

NO_FILE = Path("/nonexistent/moed.toml")
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "moed.toml"
    p.write_text(text)
    return p


def test_defaults_without_file_env_or_flags():
    cfg = load_config(env={}, default_path=NO_FILE)
    assert cfg == DaemonConfig()
    assert cfg.scheduler.max_batch == 8 and cfg.engine.cache_budget == "100%" and cfg.server.endpoint == ""


def test_layers_file_then_env_then_flags(tmp_path):
    f = write(tmp_path, '[scheduler]\nmax_batch = 4\nqueue_limit = 9\n\n'
                        '[engine]\nstore = "/s"\nread_threads = 2\ncache_budget = "25%"\n')
    cfg = load_config(f, env={"MOED_QUEUE_LIMIT": "7", "MOED_READ_THREADS": "3", "MOED_KEEP_ALIVE_S": "2.5"},
                      flags={"read_threads": 5, "max_batch": None})
    assert cfg.scheduler.max_batch == 4  # file (the flag was not given)
    assert cfg.scheduler.queue_limit == 7  # env over file
    assert cfg.engine.read_threads == 5  # flag over env over file
    assert cfg.scheduler.keep_alive_s == 2.5 and cfg.engine.cache_budget == "25%" and cfg.engine.store == "/s"


def test_top_level_keys_and_moed_config_variable(tmp_path):
    f = write(tmp_path, 'store = "/x"\nmax_batch = 2\nprogress_interval_s = 1\n')
    cfg = load_config(env={"MOED_CONFIG": str(f)})
    assert cfg.engine.store == "/x" and cfg.scheduler.max_batch == 2
    assert isinstance(cfg.scheduler.progress_interval_s, float)


@pytest.mark.parametrize("text, words", [
    ("[scheduler]\nmax_batchh = 3\n", ["scheduler.max_batchh"]),
    ("[engine]\nmax_batch = 3\n", ["engine.max_batch"]),
    ("[sched]\nmax_batch = 3\n", ["[sched]"]),
    ("bogus = 1\n", ["bogus"]),
    ("[scheduler]\nmax_batch = \"eight\"\n", ["scheduler.max_batch", "integer", "eight"]),
    ("[scheduler]\nmax_batch = true\n", ["scheduler.max_batch", "integer"]),
    ("[scheduler]\nmax_batch = 0\n", ["scheduler.max_batch", ">= 1"]),
    ("[engine]\nread_mode = \"fast\"\n", ["engine.read_mode", "direct, buffered"]),
    ("[engine]\ncache_budget = \"lots\"\n", ["engine.cache_budget"]),
    ("[server]\nendpoint = \"tcp://0.0.0.0:7878\"\n", ["loopback", "0.0.0.0"]),
    ("[server]\nendpoint = \"udp://x\"\n", ["ipc:// or tcp://"]),
    ("[server]\nendpoint = \"ipc:///" + "d" * 120 + "/s\"\n", ["103 bytes"]),
    ("[log]\nlog_level = \"loud\"\n", ["log.log_level"]),
    ("[scheduler\n", ["moed.toml"]),
])
def test_bad_files_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    for w in words:
        assert w in str(e.value)


def test_bad_environment_and_missing_file_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="MOED_MAX_BATCH.*integer"):
        load_config(env={"MOED_MAX_BATCH": "many"}, default_path=NO_FILE)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    cfg = load_config(env={"MOED_ENDPOINT": "tcp://127.0.0.1:7878"}, default_path=NO_FILE)
    assert cfg.server.endpoint == "tcp://127.0.0.1:7878"


def test_replace_validates_too():
    cfg = DaemonConfig().replace(max_batch=3, endpoint="tcp://[::1]:9000")
    assert cfg.scheduler.max_batch == 3
    with pytest.raises(ConfigError, match="unknown key"):
        DaemonConfig().replace(batch=3)


def test_serve_check_prints_config_and_errors_exit_2(tmp_path, capsys, model_dir, monkeypatch):
    monkeypatch.setenv("MOED_CONFIG", str(write(tmp_path, "[scheduler]\nmax_batch = 3\n")))
    store = model_dir("qwen3_moe", "store-mlx")
    assert main(["serve", str(store), "--check", "--queue-limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "max_batch = 3" in out and "queue_limit = 5" in out and str(store) in out
    assert main(["serve", str(store), "--check", "--max-batch", "0"]) == 2
    assert "max_batch" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nostore"), "--check"]) == 2
    assert "store" in capsys.readouterr().err
    assert main(["serve", "--check"]) == 2
    assert "no store" in capsys.readouterr().err


def test_budgets_are_checked_against_the_store_before_serving(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("MOED_CONFIG", "")
    store = str(model_dir("qwen3_moe", "store-mlx"))
    assert main(["serve", store, "--check", "--cache-budget", "25"]) == 2
    err = capsys.readouterr().err
    assert "engine.cache_budget" in err and "did you mean 25%?" in err
    assert main(["serve", store, "--check", "--idle-cache-budget", "10"]) == 2
    assert "scheduler.idle_cache_budget" in capsys.readouterr().err
    assert main(["serve", store, "--check", "--cache-budget", "2GB"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "clamped to 100 %" in captured.err and 'cache_budget = "2GB"' in captured.out
    warnings = check_with_store(DaemonConfig().replace(store=store, cache_budget="200%"))
    assert len(warnings) == 1 and "200%" in warnings[0]


def test_serve_checks_the_store_without_mlx(model_dir):
    store = str(model_dir("qwen3_moe", "store-mlx"))
    code = f"""
import sys
class NoMLX:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            raise ImportError("mlx is blocked in this test: " + name)
sys.meta_path.insert(0, NoMLX())
import argparse
from moed.daemon.commands import serve
parser = argparse.ArgumentParser()
serve.register(parser.add_subparsers())
args = parser.parse_args(["serve", {store!r}, "--check", "--cache-budget", "25"])
sys.exit(args.func(args))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "MOED_CONFIG": ""})
    assert out.returncode == 2 and "did you mean 25%?" in out.stderr, out.stderr


def test_engine_config_takes_engine_keys_only(tmp_path):
    ec = engine_config(tmp_path, cache_budget="25%", read_mode="buffered")
    assert ec.store == str(tmp_path) and ec.cache_budget == "25%" and ec.read_threads == 4
    with pytest.raises(ConfigError, match="not \\[engine\\] keys: max_batch"):
        engine_config(tmp_path, max_batch=2)
    with pytest.raises(ConfigError, match="read_mode"):
        engine_config(tmp_path, read_mode="sideways")


def test_every_key_is_documented():
    doc = (ROOT / "docs" / "daemon.md").read_text()
    for row in describe():
        assert f"`{row['key']}`" in doc and f"`{row['env']}`" in doc, row["key"]
    assert len(describe()) == len(KEYS)
    assert "[scheduler]" in as_toml(DaemonConfig())
