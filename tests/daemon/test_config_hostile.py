"""Hostile config values: out-of-range numbers, non-finite floats, special files and deep nesting are refused with
one line naming the key, and `moed serve --check` exits 2 on each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moed.daemon.cli import main
from moed.daemon.config import ConfigError, describe, load_config

NO_FILE = Path("/nonexistent/moed.toml")
ROOT = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, text: str, capsys) -> tuple[int, str]:
    p = tmp_path / "moed.toml"
    p.write_text(text)
    code = main(["serve", "--config", str(p), "--check"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ("max_batch = 100000000000000000000000", "max_batch"),
    ("[scheduler]\ndrain_timeout_s = inf", "drain_timeout_s"),
    ("[scheduler]\nkeep_alive_s = 1e400", "keep_alive_s"),
    ("[scheduler]\nkeep_alive_s = nan", "keep_alive_s"),
    ("[engine]\nread_threads = 100000", "read_threads"),
    ("[server]\nheartbeat_s = 1e300", "heartbeat_s"),
    ('[log]\nlog_file = "/proc/1/mem"', "log_file"),
    ('[log]\nlog_file = "/dev/null"', "log_file"),
    ('[server]\nstate_dir = "/proc/self"', "state_dir"),
])
def test_out_of_range_and_special_values_exit_2(tmp_path, capsys, text, words):
    code, err = check(tmp_path, text, capsys)
    assert code == 2
    assert words in err and "Traceback" not in err


def test_a_fifo_is_no_log_file(tmp_path, capsys):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    code, err = check(tmp_path, f'[log]\nlog_file = "{fifo}"', capsys)
    assert code == 2 and "not a regular file" in err


def test_a_file_is_no_state_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ConfigError, match="state_dir.*not a folder"):
        load_config(env={"MOED_STATE_DIR": str(f)}, default_path=NO_FILE)


@pytest.mark.parametrize("text", ["x = " + "[" * 100000 + "]" * 100000, "x = " + "{a = " * 5000 + "1" + "}" * 5000])
def test_deep_nesting_is_one_line_and_exit_2(tmp_path, capsys, text):
    code, err = check(tmp_path, text, capsys)
    assert code == 2 and "nested" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_limits_hold_at_their_bounds():
    ok = load_config(env={"MOED_MAX_BATCH": "4096", "MOED_KEEP_ALIVE_S": "-1", "MOED_DRAIN_TIMEOUT_S": "3600"},
                     default_path=NO_FILE)
    assert ok.scheduler.max_batch == 4096 and ok.scheduler.keep_alive_s == -1
    with pytest.raises(ConfigError, match="max_batch.*<= 4096"):
        load_config(env={"MOED_MAX_BATCH": "4097"}, default_path=NO_FILE)


def test_every_range_is_documented():
    doc = (ROOT / "docs" / "daemon.md").read_text()
    for row in describe():
        line = next(ln for ln in doc.splitlines() if ln.startswith(f"| `{row['key']}` |"))
        if row["range"] != "any":
            assert line.rstrip().endswith(f"| {row['range']} |"), row["key"]
