"""The daemon end to end, in-process on a tiny qwen3_moe store, over raw DEALER sockets.

Batching exactness (8 concurrent greedy requests of different lengths, joining at different steps, get exactly
the tokens they get alone), seeded sampling reproducible in a batch, stop strings, cancel, control requests,
errors with their documented codes, and every reply sequence well formed (seq 0..n, one final, last).
"""

from __future__ import annotations

import gc
import json
import logging
import random
import threading
import time
from pathlib import Path

import pytest

from daemon_harness import Conn, InProcess, check_sequence, text_of, tokens_of
from moed.clients import protocol as P
from moed.daemon.testmodel import corpus_text


def prompts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n (prompt, max_tokens) pairs of different lengths, from the bundled corpus."""
    rng, text = random.Random(seed), corpus_text()
    out = []
    for _ in range(n):
        start, chars = rng.randrange(0, 20000), rng.randrange(8, 300)
        out.append((text[start:start + chars].strip() or "Once", rng.randrange(4, 40)))
    return out


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


@pytest.fixture(scope="module")
def engine_tokens(store):
    """Greedy tokens of moed's in-process generate (the engine's reference), computed before any daemon runs."""
    from moed.daemon.engine.generate import generate
    from moed.daemon.config import engine_config
    from moed.daemon.engine.model import load_engine

    prompt, n = prompts(1, seed=7)[0]
    eng = load_engine(engine_config(store, read_mode="buffered"))
    try:
        toks = [t for _, t in generate(eng, prompt, max_tokens=n)]
    finally:
        eng.close()
        del eng
        gc.collect()
    return prompt, n, toks


@pytest.fixture(scope="module")
def daemon(store, engine_tokens):
    with InProcess(store, max_batch=8, context_limit=512) as d:
        yield d


@pytest.fixture
def conn(daemon):
    c = Conn(daemon.endpoint)
    yield c
    c.close()


def generate(conn: Conn, prompt: str, max_tokens: int, **params) -> list[dict]:
    replies = conn.call("generate", {"prompt": prompt, "max_tokens": max_tokens, **params})
    final = check_sequence(replies)
    assert final["status"] == "ok", final
    return replies


def test_hello_status_health(conn):
    hello = conn.result("hello", {"versions": [1], "client": "test"})
    assert set(P.RESULT_FIELDS["hello"]) <= set(hello)
    assert hello["version"] == 1 and hello["model_type"] == "qwen3_moe"
    assert hello["limits"]["max_message_bytes"] == P.MAX_MESSAGE_BYTES and hello["limits"]["context_length"] == 512
    status = conn.result("status")
    assert set(P.RESULT_FIELDS["status"]) <= set(status)
    assert status["state"] == "ready" and status["max_batch"] == 8 and status["cache"]["budget_bytes"] > 0
    assert conn.result("health") == {"ok": True, "state": "ready"}
    final = conn.call("hello", {"versions": [7]})[-1]
    assert final["error"]["code"] == "unsupported_version" and final["error"]["versions"] == list(P.SUPPORTED_VERSIONS)


def test_generate_streams_then_one_final_with_stats(conn, engine_tokens):
    prompt, n, reference = engine_tokens
    replies = generate(conn, prompt, n)
    result = replies[-1]["result"]
    assert set(P.RESULT_FIELDS["generate"]) <= set(result)
    assert tokens_of(replies) == reference  # the daemon alone == the engine's in-process generate
    assert result["generated_tokens"] == len(reference) and result["done_reason"] in ("length", "stop")
    assert result["total_ns"] >= result["queue_ns"] + result["prefill_ns"] + result["decode_ns"] > 0
    assert result["cache_hits"] + result["cache_misses"] > 0
    assert replies[0]["type"] == "progress"
    whole = conn.call("generate", {"prompt": prompt, "max_tokens": n, "stream": False})
    assert [m["type"] for m in whole if m["type"] != "progress"] == ["final"]
    assert whole[-1]["result"]["text"] == text_of(replies)


def test_eight_concurrent_greedy_requests_equal_alone(daemon, conn):
    eight_concurrent_equal_alone(daemon.endpoint, conn)


def test_batched_exactness_holds_under_eviction(store):
    """At a budget below one step's experts the batch runs in waves and evicts: rows are still independent."""
    with InProcess(store, cache_budget="20%") as d:
        c = Conn(d.endpoint)
        try:
            eight_concurrent_equal_alone(d.endpoint, c, seed=2)
            assert c.result("status")["cache"]["evictions"] > 0
        finally:
            c.close()


def eight_concurrent_equal_alone(endpoint: str, conn: Conn, seed: int = 1) -> None:
    work = prompts(8, seed=seed)
    alone = [tokens_of(generate(conn, p, n)) for p, n in work]
    got: dict[int, list[dict]] = {}

    def client(i: int) -> None:
        time.sleep(0.015 * i)  # staggered: requests join a batch that is already decoding
        c = Conn(endpoint)
        try:
            got[i] = c.call("generate", {"prompt": work[i][0], "max_tokens": work[i][1]})
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    most = 0
    while any(t.is_alive() for t in threads):  # watch the batch fill up
        most = max(most, conn.result("status")["active"])
        time.sleep(0.005)
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(8))
    assert most >= 4, f"the requests were not batched (at most {most} at once)"
    for i in range(8):
        assert check_sequence(got[i])["result"]["done_reason"] in ("length", "stop")
        assert tokens_of(got[i]) == alone[i], f"request {i} differs when batched"
    assert conn.result("status")["active"] == 0


def test_seeded_sampling_is_reproducible_in_a_batch(daemon, conn):
    params = {"prompt": "The sea was calm and", "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 1234}
    alone = tokens_of(conn.call("generate", params))
    others = [Conn(daemon.endpoint) for _ in range(3)]
    try:
        for i, c in enumerate(others):
            c.send(f"o{i}", "generate", {"prompt": f"Other prompt number {i}", "max_tokens": 30, "temperature": 0.7})
        batched = conn.call("generate", params)
        for i, c in enumerate(others):
            c.wait(f"o{i}")
    finally:
        for c in others:
            c.close()
    assert tokens_of(batched) == alone
    assert batched[-1]["result"]["seed"] == 1234
    other_seed = tokens_of(conn.call("generate", {**params, "seed": 99}))
    assert other_seed != alone


def test_stop_string_ends_before_it_and_is_not_emitted(conn):
    base = text_of(generate(conn, "It was the best of times", 40))
    stop = base[12:16]
    assert stop.strip(), "pick a stop string with text in it"
    replies = generate(conn, "It was the best of times", 40, stop=[stop, "zzzzzz"])
    assert replies[-1]["result"]["done_reason"] == "stop"
    assert text_of(replies) == base[:base.index(stop)]
    whole = conn.call("generate", {"prompt": "It was the best of times", "max_tokens": 40, "stop": [stop],
                                   "stream": False})
    assert whole[-1]["result"]["text"] == base[:base.index(stop)]


def test_chat_messages_use_the_template(conn):
    replies = conn.call("generate", {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5})
    assert check_sequence(replies)["status"] == "ok"
    assert replies[-1]["result"]["prompt_tokens"] > 3  # the template added its markers


def test_cancel_frees_the_slot_and_leaves_others_alone(store):
    with InProcess(store, max_batch=2) as d:
        a, b, c = Conn(d.endpoint), Conn(d.endpoint), Conn(d.endpoint)
        try:
            reference = tokens_of(a.call("generate", {"prompt": "A steady stream", "max_tokens": 48}))
            a.send("keep", "generate", {"prompt": "A steady stream", "max_tokens": 48})
            b.send("long", "generate", {"prompt": "A long story", "max_tokens": 2000})
            while len([m for m in b.inbox["long"] if m["type"] == "chunk"]) < 3:
                b.recv()
            c.send("wait", "generate", {"prompt": "Waiting in line", "max_tokens": 4})
            while not any(m["type"] == "progress" and m["state"] == "queued" for m in c.inbox["wait"]):
                c.recv()
            assert c.result("status")["queued"] == 1
            # another connection cannot cancel b's request: ids are per connection
            assert a.call("cancel", {"target": "long"})[-1]["error"]["code"] == "not_found"
            assert b.result("cancel", {"target": "long"}) == {"cancelled": True}
            final = check_sequence(b.wait("long"))
            assert final["status"] == "ok" and final["result"]["done_reason"] == "cancelled"
            assert 3 <= final["result"]["generated_tokens"] < 2000
            waited = c.wait("wait")  # the freed slot admits the queued request
            assert check_sequence(waited)["result"]["done_reason"] in ("length", "stop")
            assert "prefilling" in [m.get("state") for m in waited]
            kept = a.wait("keep")
            assert tokens_of(kept) == reference
            assert b.result("cancel", {"target": "long"}) == {"cancelled": False}  # finished already
            assert b.call("cancel", {"target": "never"})[-1]["error"]["code"] == "not_found"
            assert a.result("status")["finished"]["cancelled"] == 1
        finally:
            for x in (a, b, c):
                x.close()


def test_queue_limit_answers_busy_with_position(store):
    with InProcess(store, max_batch=1, queue_limit=1) as d:
        c = Conn(d.endpoint)
        try:
            c.send("run", "generate", {"prompt": "one", "max_tokens": 2000})
            c.recv()
            c.send("queued", "generate", {"prompt": "two", "max_tokens": 2})
            while not any(m.get("state") == "queued" for m in c.inbox["queued"]):
                c.recv()
            busy = c.call("generate", {"prompt": "three", "max_tokens": 2})
            assert check_sequence(busy)["error"]["code"] == "busy" and busy[-1]["error"]["position"] == 1
            dup = c.call("generate", {"prompt": "again", "max_tokens": 2}, rid="run")
            assert dup[-1]["error"]["code"] == "duplicate_id"
            assert c.result("cancel", {"target": "run"}) == {"cancelled": True}
            assert c.wait("run")[-1]["result"]["done_reason"] == "cancelled"
            assert c.wait("queued")[-1]["status"] == "ok"
        finally:
            c.close()


def test_errors_are_answered_and_the_daemon_keeps_serving(conn):
    long_prompt = corpus_text()[:4000]
    over = conn.call("generate", {"prompt": long_prompt, "max_tokens": 8})[-1]["error"]
    assert over["code"] == "context_overflow" and over["context_limit"] == 512 and over["prompt_tokens"] > 504
    assert conn.call("generate", {"prompt": "x", "max_tokens": 600})[-1]["error"]["code"] == "context_overflow"
    assert conn.call("governor_get")[-1]["error"]["code"] == "not_available"
    assert conn.call("governor_set", {"max_batch": 2})[-1]["error"]["code"] == "not_available"
    assert conn.call("generate", {"prompt": "x", "top_k": "3"})[-1]["error"]["code"] == "invalid_params"
    conn.send_raw(b"", P.pack(P.request("two-frames", "status")))  # a REQ-style delimiter: two frames
    assert conn.recv()["error"]["code"] == "malformed"
    conn.send_raw(b"\xc1")
    bad = conn.recv()
    assert bad["error"]["code"] == "malformed" and bad["id"] == "" and bad["seq"] == 0
    conn.send_raw(P.pack(P.request("big", "generate", {"prompt": "x" * (P.MAX_MESSAGE_BYTES + 10)})))
    assert conn.recv()["error"]["code"] == "too_large"
    assert generate(conn, "still serving", 3)[-1]["result"]["generated_tokens"] >= 1


def test_keep_alive_shrinks_when_idle_and_a_request_restores(store, caplog):
    caplog.set_level(logging.INFO, logger="moed.daemon.scheduler")
    with InProcess(store, keep_alive_s=0.3, idle_cache_budget="25%", cache_budget="100%") as d:
        c = Conn(d.endpoint)
        try:
            full = c.result("status")["cache"]["budget_bytes"]
            deadline = time.monotonic() + 10
            while c.result("status")["cache"]["budget_bytes"] == full:  # idle: shrinks after keep_alive_s
                assert time.monotonic() < deadline, "the cache did not shrink when idle"
                time.sleep(0.05)
            assert c.result("status")["cache"]["budget_bytes"] < full
            generate(c, "wake up", 3)  # a request restores the budget before it is admitted
            resized = [r.fields for r in caplog.records if r.getMessage() == "cache resized"]
            assert [f["reason"] for f in resized][:2] == ["idle", "restore"]
            assert resized[1]["budget_bytes"] == full
        finally:
            c.close()


def test_batch_ceiling_and_cache_budget_change_at_run_time(store):
    with InProcess(store, keep_alive_s=-1) as d:
        c = Conn(d.endpoint)
        try:
            full = c.result("status")["cache"]["budget_bytes"]
            d.daemon.controls.set_max_batch(3)
            d.daemon.controls.set_cache_budget(full // 2)
            deadline = time.monotonic() + 5
            while (s := c.result("status"))["cache"]["budget_bytes"] != full // 2 or s["max_batch"] != 3:
                assert time.monotonic() < deadline, s
                time.sleep(0.02)
            assert generate(c, "still fine", 3)[-1]["result"]["generated_tokens"] >= 1
        finally:
            c.close()


def test_loading_state_then_ready(store):
    from moed.daemon.engine.model import load_engine

    gate = threading.Event()

    def slow_loader(*args, **kwargs):
        gate.wait(10)
        return load_engine(*args, **kwargs)

    with InProcess(store, loader=slow_loader, wait=False) as d:
        c = Conn(d.endpoint)
        try:
            assert c.result("health") == {"ok": False, "state": "loading"}
            assert c.result("status")["state"] == "loading"
            assert c.call("generate", {"prompt": "early"})[-1]["error"]["code"] == "loading"
            gate.set()
            deadline = time.monotonic() + 10
            while not c.result("health")["ok"]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert generate(c, "now", 2)[-1]["result"]["generated_tokens"] >= 1
        finally:
            c.close()


def test_load_failure_exits_with_1(store, tmp_path):
    def broken_loader(*args, **kwargs):
        raise OSError("disk on fire")

    with InProcess(store, loader=broken_loader, wait=False) as d:
        d._thread.join(10)
        assert d.exit_code == 1


def test_shutdown_request_drains_and_cleans_up(store):
    with InProcess(store, drain_timeout_s=0.3) as d:
        c = Conn(d.endpoint)
        try:
            c.send("long", "generate", {"prompt": "Never ending", "max_tokens": 3000})
            c.recv()
            assert c.result("shutdown") == {}
            refused = c.call("generate", {"prompt": "late", "max_tokens": 2})[-1]
            assert refused["error"]["code"] == "shutting_down"
            assert c.result("health")["state"] == "draining"
            final = check_sequence(c.wait("long"))
            assert final["result"]["done_reason"] == "shutdown"
            d._thread.join(10)
            assert d.exit_code == 0
            from pathlib import Path

            assert not Path(d.dir, "d.sock").exists() and not Path(d.dir, "d.sock.lock").exists()
            assert Path(d.dir, "last-run.json").exists()
        finally:
            c.close()


def test_slow_client_is_failed_without_stalling_others(store, monkeypatch):
    import zmq

    from moed.daemon.serving import Daemon

    configure = Daemon._configure

    def small_buffers(self, sock):  # so a client that does not read fills its pipe quickly
        configure(self, sock)
        sock.setsockopt(zmq.SNDBUF, 2048)

    monkeypatch.setattr(Daemon, "_configure", small_buffers)
    with InProcess(store, send_hwm=2, slow_client_s=0.5, max_batch=4) as d:
        slow = Conn(d.endpoint, RCVHWM=2, RCVBUF=2048)
        fast = Conn(d.endpoint)
        try:
            slow.send("slow", "generate", {"prompt": "Flood", "max_tokens": 3000})
            time.sleep(0.3)
            replies = fast.call("generate", {"prompt": "Meanwhile", "max_tokens": 20})  # not held up
            assert check_sequence(replies)["status"] == "ok"
            deadline = time.monotonic() + 30
            while fast.result("status")["finished"].get("slow_client", 0) == 0:
                assert time.monotonic() < deadline, "the slow client was never failed"
                time.sleep(0.1)
            got = slow.wait("slow")
            final = check_sequence(got)
            assert final["status"] == "error" and final["error"]["code"] == "slow_client"
        finally:
            slow.close()
            fast.close()


def test_store_error_fails_the_batch_not_the_daemon(store, tmp_path):
    import shutil

    from moed.daemon.store.format import read_manifest

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    m = read_manifest(copy)
    path = copy / m.layers[1].file
    data = bytearray(path.read_bytes())
    for expert in range(m.layers[1].num_experts):  # every expert of one layer fails its checksum
        data[expert * m.layout.record_bytes + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    # prefetch off: a failed prefetch read can currently be served as if it had succeeded (an engine issue)
    with InProcess(copy, prefetch_depth=0) as d:
        c = Conn(d.endpoint)
        try:
            final = check_sequence(c.call("generate", {"prompt": "Anything at all", "max_tokens": 4}))
            assert final["error"]["code"] == "store_error" and "layer" in final["error"]["message"]
            assert c.result("health")["ok"]  # still serving
            again = check_sequence(c.call("generate", {"prompt": "Again", "max_tokens": 4}))
            assert again["error"]["code"] == "store_error"
            assert c.result("status")["finished"]["store_error"] == 2
        finally:
            c.close()


def test_tcp_on_loopback(store, monkeypatch, tmp_path):
    import socket

    from daemon_harness import short_dir

    runtime = short_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)  # the tcp lock file lives in the runtime folder
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from moed.clients import keys

    keys.make_server_key(tmp_path)
    key = keys.load_client_key(keys.make_client_key("t", folder=tmp_path))  # tcp needs CURVE (test_access.py)
    with InProcess(store, endpoint=f"tcp://127.0.0.1:{port}", wait=False,
                   curve_server_key=str(tmp_path / "server.key"),
                   curve_allowed_clients=str(tmp_path / "allowed_clients")) as d:
        c = Conn(d.endpoint, CURVE_SERVERKEY=key.server, CURVE_PUBLICKEY=key.public, CURVE_SECRETKEY=key.secret)
        try:
            assert c.result("hello", {"versions": [1]})["version"] == 1
            from pathlib import Path

            assert Path(runtime, "moed", f"tcp-127.0.0.1-{port}.lock").exists()
        finally:
            c.close()


def _saved_usage(state: Path) -> list:
    files = list(state.glob("usage-*.json"))
    return json.loads(files[0].read_text())["usage"] if files else []


def test_usage_statistics_are_saved_periodically_while_serving(store):
    with InProcess(store, keep_alive_s=-1, save_interval_s=0.2) as d:
        c = Conn(d.endpoint)
        try:
            generate(c, "We hold these truths", 4)
            state = Path(d.config.server.state_dir)
            deadline = time.monotonic() + 20
            # written by the scheduler between steps, before any shutdown; a save may come before the first
            # routing is counted (at a full budget the counts arrive with the deferred flush), so wait for one
            # that holds counts, serving meanwhile
            while not _saved_usage(state):
                assert time.monotonic() < deadline, "no usage file with counts while serving"
                time.sleep(0.05)
                generate(c, "again", 1)
        finally:
            c.close()
