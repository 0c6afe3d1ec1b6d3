"""Cache budgets: the forms people write, clamping to the store, "did you mean N%?", and no MLX needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from moed.daemon.budget import BudgetError, clamp, parse, parse_size, resolve

TOTAL, ONE = 1_000_000, 1000  # a store of 1000 experts of 1000 bytes


@pytest.mark.parametrize("spec,want", [("25%", 250_000), ("0.5", 500_000), (".5", 500_000), ("1kB", 1000),
                                       ("2KiB", 2048), ("3000", 3000), ("0.5 MB", 500_000), ("100%", TOTAL)])
def test_forms(spec, want):
    assert resolve(spec, TOTAL, ONE).bytes == want and resolve(spec, TOTAL, ONE).warning is None


@pytest.mark.parametrize("spec", ["lots", "-5%", "0", "0%", "1.5XB", "1e3", "", "%", "GB"])
def test_bad_syntax_is_refused_without_a_store(spec):
    with pytest.raises(BudgetError, match="cache budget"):
        parse(spec)


@pytest.mark.parametrize("spec", ["2GB", "200%", "1.5", "5000000"])
def test_above_the_store_is_clamped_to_100_percent_with_a_warning(spec):
    b = resolve(spec, TOTAL, ONE)
    assert b.bytes == TOTAL and "clamped to 100 %" in b.warning and spec in b.warning


def test_the_issue_case_names_the_share():
    b = resolve("2GB", 10_616_832, 165_888)  # 2 GB on an 11 MB store
    assert b.bytes == 10_616_832 and "18838 % of the experts" in b.warning


@pytest.mark.parametrize("spec,hint", [("25", "did you mean 25%?"), ("100", "did you mean 100%?"),
                                       ("500", "give a unit")])
def test_a_bare_number_below_one_expert_asks_what_was_meant(spec, hint):
    with pytest.raises(BudgetError, match="less than one expert") as e:
        resolve(spec, TOTAL, ONE)
    assert hint in str(e.value)


def test_a_size_or_percent_below_one_expert_is_raised_to_one_with_a_warning():
    for spec in ("1KB", "0.01%"):
        b = resolve(spec, TOTAL, 2000)
        assert b.bytes == 2000 and "raised to one expert" in b.warning


def test_clamp_and_parse_size():
    assert clamp(10, TOTAL, ONE) == ONE and clamp(10 * TOTAL, TOTAL, ONE) == TOTAL and clamp(5000, TOTAL, ONE) == 5000
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1536MiB") == 1536 << 20
    with pytest.raises(BudgetError):
        parse_size("25%")


def test_budget_and_config_import_without_mlx():
    code = """
import sys
class NoMLX:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            raise ImportError("mlx is blocked in this test: " + name)
sys.meta_path.insert(0, NoMLX())
from moed.daemon import budget, budget_policy, limits
from moed.daemon.config import load_config, DaemonConfig
assert budget.resolve("25%", 1000, 10).bytes == 250
DaemonConfig().replace(cache_budget="2GB", idle_cache_budget="5%")
assert not any(m.split(".")[0] in ("mlx", "mlx_lm") for m in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_generate_refuses_or_clamps_at_once(model_dir, capsys, caplog):
    from moed.daemon.cli import main

    store = str(model_dir("qwen3_moe", "store-mlx"))
    assert main(["generate", store, "hi", "--cache-budget", "25"]) == 2
    assert "did you mean 25%?" in capsys.readouterr().err
    assert main(["generate", store, "hi", "--max-tokens", "2", "--cache-budget", "200%", "--policy", "lru",
                 "--json"]) == 0
    assert any("clamped to 100 %" in r.getMessage() for r in caplog.records)
