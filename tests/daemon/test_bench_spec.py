"""`moed bench --speculation`: the workloads, the alternated plan, the summary table, and one run per mode."""

from __future__ import annotations

import pytest

from moed.daemon.bench.plan import spec_configs
from moed.daemon.bench.spec_report import pass_cost_lines, profile_table, spec_table, summarise_spec
from moed.daemon.bench.workloads import SEPARATOR, prompts
from moed.daemon.testmodel.split import heldout_passages, train_passages


class _Tok:
    """A stand-in tokenizer: one id per character (the workloads only encode)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


class _BosTok(_Tok):
    """A tokenizer that puts BOS (id 0) before every sequence, as the trained fixture's does."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([0] if add_special_tokens else []) + super().encode(text)


def test_prompts_start_with_one_bos_where_the_tokenizer_adds_it_and_hold_none_inside():
    for name in ("quote", "free"):
        for p in prompts(name, _BosTok(), count=2, max_tokens=16):
            assert p.ids[0] == 0 and 0 not in p.ids[1:]
        assert all(0 not in p.ids for p in prompts(name, _Tok(), count=2, max_tokens=16))


def test_a_quote_prompt_holds_a_heldout_passage_then_its_start_whose_quoted_rest_is_max_tokens_long():
    tok = _Tok()
    ps = prompts("quote", tok, count=2, max_tokens=40)
    held = heldout_passages()
    assert [p.workload for p in ps] == ["quote", "quote"] and all(p.max_tokens == 40 for p in ps)
    for p in ps:
        passage = tok.encode(held[int(p.source[len("heldout["):-1])])
        span, sep = list(p.ids[:48]), tok.encode(SEPARATOR)
        assert span == passage[:48]  # the quoted span: 8 tokens of start + the 40 to be quoted
        assert list(p.ids[48:48 + len(sep)]) == sep and list(p.ids[48 + len(sep):]) == passage[:8]


def test_quote_train_reads_training_passages_and_free_prompts_are_heldout_starts():
    tok = _Tok()
    qt = prompts("quote-train", tok, count=1, max_tokens=16)[0]
    assert qt.workload == "quote-train" and qt.source.startswith("train[")
    assert list(qt.ids[:24]) == tok.encode(train_passages()[int(qt.source[6:-1])])[:24]
    free = prompts("free", tok, count=3, max_tokens=16)
    assert len({p.source for p in free}) == 3
    for p in free:
        assert p.source.startswith("heldout[") and len(p.ids) == 48
        assert list(p.ids) == tok.encode(heldout_passages()[int(p.source[8:-1])])[:48]


def test_asking_for_more_passages_than_the_corpus_holds_or_an_unknown_workload_says_so():
    with pytest.raises(ValueError, match="passages hold"):
        prompts("quote", _Tok(), count=1, max_tokens=10**6)
    with pytest.raises(ValueError, match="unknown workload 'chat'"):
        prompts("chat", _Tok())


def test_the_plan_runs_the_reference_once_then_alternates_modes_round_by_round_per_budget():
    cfgs = spec_configs("S", "CK", ("100", "25"), ("off", "lookup"), {"max_tokens": 8}, 3)
    assert cfgs[0] == {"kind": "spec-ref", "model": "CK", "max_tokens": 8}
    order = [(c["budget"], c["speculation"]) for c in cfgs[1:]]
    assert order == [("100%", "off"), ("100%", "lookup"), ("100%", "lookup"), ("100%", "off"), ("100%", "off"),
                     ("100%", "lookup"), ("25%", "off"), ("25%", "lookup"), ("25%", "lookup"), ("25%", "off"),
                     ("25%", "off"), ("25%", "lookup")]
    assert all(c["store"] == "S" and c["max_tokens"] == 8 for c in cfgs[1:])
    assert spec_configs("S", None, ("25",), ("off",), {}, 1)[0]["kind"] == "spec"


def _rec(mode: str, tps: float, tokens: list[int], bytes_per_token: float, passes: float = 1.0) -> dict:
    w = {"decode_tps": tps, "tokens_per_pass": passes, "draft_tokens": 10 if mode != "off" else 0,
         "accepted_tokens": 6 if mode != "off" else 0, "acceptance": 0.6 if mode != "off" else None,
         "decode_bytes_per_token": bytes_per_token, "decode_hit_rate": 0.9, "runs": [{"tokens": tokens}],
         "ms_per_token": 1000 / tps, "syncs_per_token": 6 / passes, "misses_per_token": 3.0,
         "prefetches_per_token": 9.0,
         "phases_ms_per_token": {"routing read back (with the prediction)": 50 / tps, "acquire: waiting for reads": 5.0,
                                 "distinct experts": 1.0}}
    return {"config": {"kind": "spec", "budget": "25%", "speculation": mode}, "workloads": {"quote": w}}


def test_the_summary_pairs_each_run_with_the_same_round_without_speculation():
    recs = [_rec("off", 10, [1, 2], 4e6), _rec("lookup", 30, [1, 2], 2e6, 2.5),
            _rec("lookup", 16, [1, 2], 2e6, 2.5), _rec("off", 8, [1, 2], 4e6),
            _rec("off", 5, [1, 2], 4e6), _rec("lookup", 15, [1, 2], 2e6, 2.5)]
    ref = {"config": {"kind": "spec-ref"}, "workloads": {"quote": {"decode_tps": 12.0, "runs": [{"tokens": [1, 3]}]}}}
    rows = summarise_spec([ref, *recs])
    off, look = rows
    assert (off["mode"], look["mode"]) == ("off", "lookup")
    assert look["vs_off"] == pytest.approx(3.0)  # pairs 30/10, 16/8, 15/5: median 3.0 (unpaired medians: 16/8)
    assert look["decode_tps"] == 16 and look["bytes_vs_off"] == pytest.approx(0.5)
    assert look["same_as_off"] is True and look["same_as_mlx_lm"] is False
    text = spec_table(rows)
    assert "| 25% | quote | lookup | 16.00 | 3.00x | 2.50 | 6 / 10 (60%) | 2 | 0.50x | 90.0% | yes | **no** |" in text
    assert "mlx-lm (whole checkpoint in RAM, no speculation) decode tok/s: quote 12.00." in text
    prof = profile_table(rows)  # medians over the three lookup runs (16 tok/s is the middle one)
    assert "| 25% | quote | lookup | 62.50 | 9.12 | 3.12 | 5.00 | 2.40 | 3.00 | 9.00 |" in prof


def test_tokens_unlike_those_without_speculation_show_and_a_failed_mode_is_a_row():
    recs = [_rec("off", 10, [1, 2], 4e6), _rec("lookup", 20, [1, 9], 2e6),
            {"config": {"kind": "spec", "budget": "25%", "speculation": "draft"}, "error": "exit 1: boom"}]
    rows = summarise_spec(recs)
    look = next(r for r in rows if r["mode"] == "lookup")
    assert look["same_as_off"] is False and "same_as_mlx_lm" not in look
    assert "ERROR: exit 1: boom" in spec_table(rows)


def test_pass_costs_are_summarised_per_budget_against_one_row():
    recs = [{"config": {"budget": "25%"}, "pass_ms_by_rows": {"1": 10.0, "3": 25.0}},
            {"config": {"budget": "25%"}, "pass_ms_by_rows": {"1": 12.0, "3": 27.0}},
            {"config": {"budget": "25%"}, "pass_ms_by_rows": {"1": 11.0, "3": 22.0}}]
    assert pass_cost_lines(recs) == ("One forward pass at 25% (median; a verify pass of K drafts has K + 1 rows): "
                                     "1 rows 11.0 ms (1.00x), 3 rows 25.0 ms (2.27x).")


def test_a_config_becomes_the_engines_speculation_settings_and_off_is_the_plain_path():
    from moed.daemon.bench.speculation import _speculation
    from moed.daemon.speculation import SpeculationConfig

    assert _speculation({"speculation": "off", "max_draft": 6}) is None
    assert _speculation({"speculation": "lookup", "max_draft": 6, "adaptive": False}) == SpeculationConfig(
        mode="lookup", max_draft=6, adaptive=False)
    assert _speculation({"speculation": "draft", "draft_model": "D"}) == SpeculationConfig(mode="draft",
                                                                                           draft_model="D")
    with pytest.raises(ValueError, match="draft model"):
        _speculation({"speculation": "draft"})


@pytest.fixture(scope="module")
def small(model_dir):
    return model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")


@pytest.mark.parametrize("mode", ["off", "lookup"])
def test_one_spec_run_generates_exactly_max_tokens_per_prompt_and_counts_its_reads(small, mode):
    from moed.daemon.bench.speculation import run_spec, run_spec_ref

    ckpt, store = small
    cfg = {"store": str(store), "budget": "25%", "speculation": mode, "workloads": ["quote", "free"],
           "max_tokens": 12, "prompts": 1, "read_mode": "buffered", "pass_rows": [1, 3]}
    r = run_spec(cfg)
    assert set(r["pass_ms_by_rows"]) == {"1", "3"} and all(v > 0 for v in r["pass_ms_by_rows"].values())
    ref = run_spec_ref({"model": str(ckpt), "workloads": ["quote", "free"], "max_tokens": 12, "prompts": 1})
    for w in ("quote", "free"):
        fig, run = r["workloads"][w], r["workloads"][w]["runs"][0]
        assert len(run["tokens"]) == 12 and fig["decode_tokens"] == 11  # eos ignored: a fixed count
        assert run["tokens"] == ref["workloads"][w]["runs"][0]["tokens"]  # greedy: mlx-lm's own tokens
        assert fig["decode_tps"] > 0 and fig["decode_bytes_per_token"] > 0 and 0 < fig["decode_hit_rate"] < 1
        # each pass emits its accepted drafts and one token more
        assert fig["tokens_per_pass"] == pytest.approx(1 + fig["accepted_tokens"] / run["verify_passes"])
        assert run["speculation"] == mode
        if mode == "off":
            assert fig["tokens_per_pass"] == 1 and fig["draft_tokens"] == 0


def test_on_the_trained_fixture_quoting_is_drafted_accepted_and_exact_at_25_percent(trained_checkpoint,
                                                                                      trained_store):
    from moed.daemon.bench.speculation import run_spec, run_spec_ref

    common = {"workloads": ["quote"], "max_tokens": 32, "prompts": 2}
    # a fixed K (adaptive K's choices depend on measured times): this tests the bench's counts, not the policy
    r = run_spec({"store": str(trained_store), "budget": "25%", "speculation": "lookup", "read_mode": "buffered",
                  "max_draft": 4, "adaptive": False, **common})
    ref = run_spec_ref({"model": str(trained_checkpoint), **common})
    fig = r["workloads"]["quote"]
    assert [x["tokens"] for x in fig["runs"]] == [x["tokens"] for x in ref["workloads"]["quote"]["runs"]]
    assert fig["accepted_tokens"] > 0 and fig["tokens_per_pass"] > 1  # the fixture quotes its prompt
    assert fig["syncs_per_token"] < 6  # fewer synchronised layer calls than one per layer per token


@pytest.mark.parametrize("argv, says", [
    (["--speculation", "maybe"], "'maybe' is not one of off, lookup, draft"),
    (["--speculation", "lookup", "--workloads", "quote,nope"], "give some of quote, quote-train, free"),
    (["--speculation", "off,draft"], "needs a draft model"),
    (["--speculation", "lookup", "--num-draft", "0"], "give 1 to 32"),
])
def test_bench_refuses_a_bad_speculation_matrix_before_running_anything(tmp_path, capsys, argv, says):
    from moed.daemon.cli import main

    # the store is not even looked at: the settings are checked first, so nothing runs (no subprocess, no rows)
    assert main(["bench", str(tmp_path / "no-store"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moed bench: ") and says in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--speculation", "off,lookup"], ["--budgets", "100"], ["--clients", "1"]])
def test_bench_refuses_a_path_that_is_not_a_store_before_running_anything(tmp_path, capsys, argv):
    from moed.daemon.cli import main

    assert main(["bench", str(tmp_path / "no-store"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moed bench: ") and "does not exist" in err and "Traceback" not in err
