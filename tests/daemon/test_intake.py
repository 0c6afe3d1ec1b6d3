"""Prompts are tokenized off the model thread, in arrival order, after a size check that needs no tokenizing."""

from __future__ import annotations

import threading

import pytest

from daemon_harness import Conn, InProcess, check_sequence, tokens_of
from moed.clients.protocol import MAX_PROMPT_CHARS


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


def test_a_prompt_stuck_in_the_tokenizer_does_not_pause_other_streams(store, monkeypatch):
    import moed.daemon.jobs as jobs

    real, release, threads = jobs.encode_request, threading.Event(), []

    def encode(tokenizer, params):
        threads.append(threading.current_thread().name)
        if params.get("prompt") == "BLOCK":
            release.wait(60)
        return real(tokenizer, params)

    monkeypatch.setattr(jobs, "encode_request", encode)
    with InProcess(store, max_batch=4) as d:
        slow, fast = Conn(d.endpoint), Conn(d.endpoint)
        try:
            fast.send("run", "generate", {"prompt": "Once upon a time", "max_tokens": 30})
            first = fast.recv()
            while first["type"] != "chunk":
                first = fast.recv()
            slow.send("slow", "generate", {"prompt": "BLOCK", "max_tokens": 2})  # the tokenizer is stuck on it
            final = check_sequence(fast.wait("run", timeout=60))  # and the running stream still finishes
            assert final["status"] == "ok" and final["result"]["generated_tokens"] == 30
            release.set()
            assert check_sequence(slow.wait("slow"))["status"] == "ok"
        finally:
            release.set()
            slow.close()
            fast.close()
    assert threads and all(name.startswith("moed-tokenizer") for name in threads)


def test_a_prompt_too_long_for_the_context_is_refused_before_tokenizing(store, monkeypatch):
    import moed.daemon.jobs as jobs

    calls = []
    real = jobs.encode_request
    monkeypatch.setattr(jobs, "encode_request", lambda tok, params: calls.append(1) or real(tok, params))
    with InProcess(store, context_limit=512) as d:
        c = Conn(d.endpoint)
        try:
            final = check_sequence(c.call("generate", {"prompt": "x" * MAX_PROMPT_CHARS, "max_tokens": 4}))
            assert final["error"]["code"] == "context_overflow" and final["error"]["context_limit"] == 512
            assert calls == []
            assert tokens_of(c.call("generate", {"prompt": "Once", "max_tokens": 2}))  # and the daemon serves on
        finally:
            c.close()


def test_cancel_of_a_request_still_being_tokenized_ends_it(store, monkeypatch):
    import moed.daemon.jobs as jobs

    real, release = jobs.encode_request, threading.Event()

    def encode(tokenizer, params):
        release.wait(60)
        return real(tokenizer, params)

    monkeypatch.setattr(jobs, "encode_request", encode)
    with InProcess(store) as d:
        c = Conn(d.endpoint)
        try:
            c.send("g", "generate", {"prompt": "Once", "max_tokens": 50})
            assert c.result("cancel", {"target": "g"})["cancelled"] is True
            release.set()
            final = check_sequence(c.wait("g"))
            assert final["status"] == "ok" and final["result"]["done_reason"] == "cancelled"
            assert final["result"]["generated_tokens"] == 0
        finally:
            release.set()
            c.close()
