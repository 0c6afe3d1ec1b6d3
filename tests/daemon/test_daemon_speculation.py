"""Speculative decoding in the daemon (the solo lane, daemon/solo_lane.py) changes no token and breaks no promise.

A greedy quote-heavy request with speculation equals the same request without it and mlx-lm's own tokens, with
drafts accepted; a speculating request joined by three others gets its solo tokens (so do they) and speculates
again once alone; seeded sampling is the same with and without; cancel frees the lane's row; stop strings and
max_tokens land on the exact token even where a pass accepts several; a failing expert ends only the lane's
request. On the tiny random model (its greedy text falls into loops that prompt lookup predicts) and, where it is
there, the trained fixture (it quotes). K follows a fixed script here (verification passes of 4 and 2 drafts
between pipelined plain runs): adaptive K follows measured pass times, which would make how many drafts are checked,
and so whether any is accepted, depend on the machine's load.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mlx_lm import load as mlx_load
from mlx_lm.generate import stream_generate

from daemon_harness import Conn, InProcess, check_sequence, text_of, tokens_of
from moed.clients import protocol as P
from moed.daemon.testmodel import corpus_text
from moed.daemon.testmodel.split import heldout_passages



K_SCRIPT = (4, 4, 0, 0, 0, 2, 0, 4)  # each request's decisions, repeated: passes of K drafts and plain runs


@pytest.fixture(autouse=True)
def scripted_k(monkeypatch):
    """Each request's adaptive K decides by K_SCRIPT instead (see the module docstring)."""
    from moed.daemon.engine.adaptive import AdaptiveK

    def choose(self, kind=None) -> int:
        self._script_at = getattr(self, "_script_at", -1) + 1
        return K_SCRIPT[self._script_at % len(K_SCRIPT)]

    monkeypatch.setattr(AdaptiveK, "choose", choose)


def tiny_quote() -> str:
    """A corpus passage said twice: the tiny random model's greedy continuation loops, which lookup predicts."""
    text = corpus_text()[500:700]
    return text + " " + text


def trained_quote(chars: int = 500) -> str:
    """A held-out passage, a paragraph break and its first words again: the trained model continues by quoting."""
    passage = next(p for p in heldout_passages() if len(p) >= chars)[:chars].rsplit(" ", 1)[0]
    return passage + "\n\n" + " ".join(passage.split()[:6])


@pytest.fixture(scope="module")
def tiny(model_dir):
    """(checkpoint, store) of the tiny random qwen3_moe."""
    return model_dir("qwen3_moe", "mlx"), model_dir("qwen3_moe", "store-mlx")


def mlx_tokens(checkpoint: Path, prompt: str, n: int) -> list[int]:
    model, tokenizer = mlx_load(str(checkpoint))
    return [r.token for r in stream_generate(model, tokenizer, tokenizer.encode(prompt), max_tokens=n)]


def generate(conn: Conn, **params) -> tuple[list[int], dict]:
    replies = conn.call("generate", params, timeout=120)
    final = check_sequence(replies)
    assert final["status"] == "ok", final
    return tokens_of(replies), final["result"]


def wait_speculating(conn: Conn, timeout: float = 60.0) -> dict:
    """Poll ps until a request shows speculating; returns its row."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in conn.result("ps")["requests"] if r["speculating"]]
        if rows:
            return rows[0]
        time.sleep(0.01)
    raise AssertionError("no request entered the solo lane")


# -- exactness -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["100%", "25%"])
def test_greedy_quote_equals_without_speculation_and_mlx_lm_with_drafts_accepted(tiny, budget):
    checkpoint, store = tiny
    prompt, n = tiny_quote(), 120
    reference = mlx_tokens(checkpoint, prompt, n)
    with InProcess(store, cache_budget=budget) as d:
        c = Conn(d.endpoint)
        try:
            plain, off = generate(c, prompt=prompt, max_tokens=n, speculate=False)
            spec, on = generate(c, prompt=prompt, max_tokens=n)
            status = c.result("status")["speculation"]
        finally:
            c.close()
    assert spec == plain == reference
    assert off["draft_tokens"] == off["accepted_tokens"] == 0 and off["verify_passes"] == off["generated_tokens"]
    assert on["accepted_tokens"] > 0 and on["draft_tokens"] >= on["accepted_tokens"]
    if on["done_reason"] == "length":  # each pass emits its accepted drafts + 1 (an end token is not counted)
        assert on["verify_passes"] == on["generated_tokens"] - on["accepted_tokens"]
    assert on["bytes_read"] >= 0 and on["cache_hits"] + on["cache_misses"] > 0
    assert status["mode"] == "lookup" and status["entered"] == 1 and status["accepted"] == on["accepted_tokens"]


def test_trained_fixture_quotes_with_speculation_exactly(trained_checkpoint, trained_store):
    prompt, n = trained_quote(), 64
    reference = mlx_tokens(trained_checkpoint, prompt, n)
    with InProcess(trained_store, cache_budget="25%") as d:
        c = Conn(d.endpoint)
        try:
            plain, _ = generate(c, prompt=prompt, max_tokens=n, speculate=False)
            spec, on = generate(c, prompt=prompt, max_tokens=n)
        finally:
            c.close()
    assert spec == plain == reference
    assert on["accepted_tokens"] > 0 and on["verify_passes"] < on["generated_tokens"], on


def test_seeded_sampling_is_the_same_with_and_without_speculation(tiny):
    _, store = tiny
    params = {"prompt": tiny_quote(), "max_tokens": 64, "temperature": 0.8, "top_p": 0.95, "seed": 4321}
    with InProcess(store) as d:
        c = Conn(d.endpoint)
        try:
            plain, _ = generate(c, **params, speculate=False)
            spec, on = generate(c, **params)
            entered = c.result("status")["speculation"]["entered"]
            other, _ = generate(c, **{**params, "seed": 7})
        finally:
            c.close()
    assert spec == plain and on["seed"] == 4321
    assert entered == 1  # the speculating run decoded in the lane (the other one never entered it)
    assert other != spec  # the seed matters: the test can tell draws apart


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7, "seed": 5}], ids=["greedy", "seeded"])
def test_a_speculating_request_joined_by_three_others_then_alone_again(tiny, sampling):
    _, store = tiny
    text = corpus_text()
    long = {"prompt": tiny_quote(), "max_tokens": 400, **sampling}
    others = [{"prompt": text[2000:2100], "max_tokens": 12},
              {"prompt": text[3000:3040], "max_tokens": 9, "temperature": 0.9, "seed": 11},
              {"prompt": text[4000:4200], "max_tokens": 15}]
    with InProcess(store, max_batch=4, context_limit=1024) as d:
        c = Conn(d.endpoint)
        try:
            alone = [generate(c, **p, speculate=False)[0] for p in [long, *others]]
            entered = c.result("status")["speculation"]["entered"]
            c.send("long", "generate", long)
            row = wait_speculating(c)
            assert row["state"] == "decoding"
            got: dict[int, list[dict]] = {}

            def client(i: int) -> None:
                conn = Conn(d.endpoint)
                try:
                    got[i] = conn.call("generate", others[i], timeout=120)
                finally:
                    conn.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            replies = c.wait("long", timeout=120)
            status = c.result("status")
        finally:
            c.close()
    final = check_sequence(replies)["result"]
    assert tokens_of(replies) == alone[0]
    for i in range(3):
        assert check_sequence(got[i])["status"] == "ok"
        assert tokens_of(got[i]) == alone[i + 1], f"request {i} differs beside a speculating one"
    # the long request entered the lane, went back to the batch for the others, and entered it again alone
    assert status["speculation"]["entered"] - entered >= 2
    assert final["verify_passes"] <= final["generated_tokens"] and status["active"] == 0


# -- ends: cancel, stop strings, max_tokens ----------------------------------------------------------------------
def test_cancel_mid_speculation_frees_the_row(tiny):
    _, store = tiny
    with InProcess(store, max_batch=1, context_limit=4096) as d:
        c = Conn(d.endpoint)
        try:
            reference, _ = generate(c, prompt="A steady stream", max_tokens=20, speculate=False)
            c.send("long", "generate", {"prompt": tiny_quote(), "max_tokens": 3000})
            wait_speculating(c)
            c.send("next", "generate", {"prompt": "A steady stream", "max_tokens": 20})
            while not any(m["type"] == "progress" and m["state"] == "queued" for m in c.inbox["next"]):
                c.recv()
            assert wait_speculating(c)["state"] == "decoding"  # one waiting for the ceiling does not stop it
            assert c.result("cancel", {"target": "long"}) == {"cancelled": True}
            final = check_sequence(c.wait("long"))
            assert final["status"] == "ok" and final["result"]["done_reason"] == "cancelled"
            assert 0 < final["result"]["generated_tokens"] < 3000
            assert tokens_of(c.wait("next")) == reference  # the one slot was freed for it
            status = c.result("status")
            assert status["active"] == 0 and status["requests"] == []
        finally:
            c.close()


def test_max_tokens_and_stop_strings_land_exactly(tiny):
    _, store = tiny
    prompt = tiny_quote()
    with InProcess(store) as d:
        c = Conn(d.endpoint)
        try:
            replies = c.call("generate", {"prompt": prompt, "max_tokens": 80, "speculate": False})
            reference, whole = tokens_of(replies), text_of(replies)
            accepted = 0
            for n in range(2, 80, 7):  # pass boundaries fall all over: a pass may accept several at the end
                toks, result = generate(c, prompt=prompt, max_tokens=n)
                assert toks == reference[:n] and result["generated_tokens"] == n and result["done_reason"] == "length"
                accepted += result["accepted_tokens"]
            assert accepted > 0
            stop = whole[len(whole) // 2:len(whole) // 2 + 6]
            cut = whole.index(stop)
            streamed = c.call("generate", {"prompt": prompt, "max_tokens": 80, "stop": [stop]})
            final = check_sequence(streamed)["result"]
            assert text_of(streamed) == whole[:cut] and final["done_reason"] == "stop"
            off = c.call("generate", {"prompt": prompt, "max_tokens": 80, "stop": [stop], "speculate": False})
            assert tokens_of(streamed) == tokens_of(off)
            assert check_sequence(off)["result"]["generated_tokens"] == final["generated_tokens"]
        finally:
            c.close()


# -- settings and the protocol ---------------------------------------------------------------------------------
def test_the_daemon_setting_bounds_the_request_param(tiny):
    _, store = tiny
    params = {"prompt": tiny_quote(), "max_tokens": 48}
    with InProcess(store, speculate="off") as d:
        c = Conn(d.endpoint)
        try:
            _, asked = generate(c, **params, speculate=True)
            assert asked["draft_tokens"] == 0 and asked["verify_passes"] == asked["generated_tokens"]
            assert c.result("status")["speculation"] == {"mode": "off", "passes": 0, "drafted": 0, "accepted": 0,
                                                         "tokens": 0, "entered": 0}
            c.sock.send(P.pack(P.request("v2", "generate", {**params, "speculate": True}, v=2)))
            err = check_sequence(c.wait("v2"))["error"]
            assert err["code"] == "invalid_params" and "version 3" in err["message"]
        finally:
            c.close()


def test_a_failing_expert_ends_only_the_lane_request(tiny):
    """Every read of one MoE layer fails once the request decodes alone in the lane (a budget of a few experts
    keeps reading): it ends with store_error naming the layer, the lane's row is freed, the daemon serves on."""
    from moed.daemon.engine.model import load_engine
    from moed.daemon.store.faults import Fault, Faults
    from moed.daemon.store.format import read_manifest

    _, store = tiny
    engines = []

    def loader(ec):
        engines.append(load_engine(ec))
        return engines[0]

    m = read_manifest(store)
    with InProcess(store, loader=loader, cache_budget=str(4 * m.expert_bytes)) as d:
        c = Conn(d.endpoint)
        try:
            c.send("doomed", "generate", {"prompt": tiny_quote(), "max_tokens": 2000})
            wait_speculating(c)
            engines[0].reader.faults = Faults([Fault("eio", 1, None)])
            err = check_sequence(c.wait("doomed"))["error"]
            assert err["code"] == "store_error" and err["layer"] == m.layers[1].index
            status = c.result("status")
            assert status["active"] == 0 and status["state"] == "degraded"
            engines[0].reader.faults = None
            assert c.result("clear_quarantine")["cleared"] >= 1
            toks, result = generate(c, prompt="Once", max_tokens=8)
            assert len(toks) == result["generated_tokens"] > 0
        finally:
            c.close()


def test_moectl_generate_speculate_flags(tiny, capsys):
    import json

    from moed.clients.cli import main as moectl

    _, store = tiny
    with InProcess(store) as d:
        base = ["--endpoint", d.endpoint, "generate", tiny_quote(), "--max-tokens", "120"]
        assert moectl(base + ["--no-speculate", "--json"]) == 0
        off = json.loads(capsys.readouterr().out)
        assert off["draft_tokens"] == 0 and off["verify_passes"] == off["generated_tokens"]
        assert moectl(base + ["--speculate", "--json"]) == 0
        on = json.loads(capsys.readouterr().out)
        assert on["text"] == off["text"] and on["accepted_tokens"] > 0
        assert moectl(base) == 0
        out, err = capsys.readouterr()
        assert out.rstrip("\n") == on["text"] and "drafts accepted" in err  # how many varies: K adapts to timing


def test_draft_model_speculation_and_its_settings(tiny):
    from moed.daemon.config import ConfigError

    checkpoint, store = tiny
    prompt = tiny_quote()
    with InProcess(store, speculate="draft", draft_model=str(checkpoint)) as d:  # the model drafts for itself
        c = Conn(d.endpoint)
        try:
            plain, _ = generate(c, prompt=prompt, max_tokens=48, speculate=False)
            spec, on = generate(c, prompt=prompt, max_tokens=48)
            assert c.result("status")["speculation"]["mode"] == "draft"
        finally:
            c.close()
    assert spec == plain and on["accepted_tokens"] > 0
    with pytest.raises(ConfigError, match="no `draft_model`"):
        InProcess(store, speculate="draft")
    with pytest.raises(ConfigError, match="used only with speculate = draft"):
        InProcess(store, draft_model=str(checkpoint))
