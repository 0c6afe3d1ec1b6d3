"""moectl: each command against the fake daemon, its output, and its exit codes."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fakedaemon import FakeDaemon, FakeRequest, gen_result, slow_generate
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients.cli import main
from moed.clients.sync import Client


def run(fake: FakeDaemon, *argv: str) -> int:
    return main(["--endpoint", fake.endpoint, *argv])


def test_status(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    assert run(fake, "status") == 0
    out = capsys.readouterr().out
    rows = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in out.splitlines()}
    assert rows["state"] == "ready" and rows["model"] == "qwen3_moe"
    assert rows["requests"].startswith("1 running of 4 batch slots")
    assert "expert lookups" in rows["hit rate"] and "=" not in out  # a table, not a key=value dump
    assert run(fake, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["queue_limit"] == 64


def test_health_exit_code_follows_ok(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    assert run(fake, "health") == 0 and capsys.readouterr().out == "ready\n"
    fake.on("health", lambda r: r.ok({"ok": False, "state": "loading"}))
    assert run(fake, "health", "--json") == 1
    assert json.loads(capsys.readouterr().out) == {"ok": False, "state": "loading"}


def test_generate_streams_text_to_stdout_and_stats_to_stderr(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    argv = ["generate", "Once upon", "--max-tokens", "7", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "40",
            "--min-p", "0.05", "--seed", "11", "--stop", "\n\n", "--stop", "END"]
    assert run(fake, *argv) == 0
    out, err = capsys.readouterr()
    assert out == "Hello world\n"
    assert "[stop] 3 prompt + 2 generated tokens" in err and "500.0 tok/s" in err and "cache 75%" in err
    params = fake.requests[-1]["params"]
    assert params | {"stop": None} == {
        "prompt": "Once upon", "messages": None, "max_tokens": 7, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
        "min_p": 0.05, "seed": 11, "stop": None, "stream": True, "speculate": None}
    assert params["stop"] == ["\n\n", "END"]


def test_generate_sends_only_the_options_given(fake: FakeDaemon):
    assert run(fake, "generate", "hi") == 0
    assert fake.requests[-1]["params"]["max_tokens"] == 256  # the daemon's default, not the CLI's


def test_generate_no_stream_and_json(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    fake.on("generate", lambda r: (r.chunk("a"), r.chunk("b\n"), r.ok(gen_result())))
    assert run(fake, "generate", "hi", "--no-stream") == 0
    assert capsys.readouterr().out == "ab\n"
    assert run(fake, "generate", "hi", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == "ab\n" and result["done_reason"] == "stop" and result["bytes_read"] == 123456
    assert result["request_id"] == fake.requests[-1]["id"]


def test_chat_from_arguments(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    assert run(fake, "chat", "--system", "be brief", "hi there", "assistant: hello", "user:and now?") == 0
    assert capsys.readouterr().out == "Hello world\n"
    assert fake.requests[-1]["params"]["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and now?"}]


def test_chat_repl_keeps_history_until_reset(fake: FakeDaemon, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("first\nsecond\n\n/reset\nthird\n"))
    assert run(fake, "chat", "--system", "S") == 0
    assert capsys.readouterr().out == "Hello world\n" * 3
    histories = [[m["content"] for m in r["params"]["messages"]] for r in fake.requests if r["type"] == "generate"]
    assert histories == [["S", "first"], ["S", "first", "Hello world", "second"], ["S", "third"]]


def test_chat_repl_survives_a_failed_turn(fake: FakeDaemon, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch):
    turns = iter(["busy", "ok"])

    def handler(req: FakeRequest) -> None:
        if next(turns) == "busy":
            req.error("busy", "full", position=2)
        else:
            req.chunk("fine")
            req.ok(gen_result())

    fake.on("generate", handler)
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n/exit\nnever\n"))
    assert run(fake, "chat") == 4  # the last error's code
    out, err = capsys.readouterr()
    assert out == "fine\n" and "busy: full" in err
    assert [len(r["params"]["messages"]) for r in fake.requests if r["type"] == "generate"] == [1, 1]


def test_cancel_and_shutdown(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    assert run(fake, "cancel", "some-id") == 1
    assert "not_found" in capsys.readouterr().err
    assert fake.requests[-1]["params"] == {"target": None, "job": "some-id"}
    fake.on("cancel", lambda r: r.ok({"cancelled": False}))
    assert run(fake, "cancel", "x") == 0 and "not running" in capsys.readouterr().out
    assert run(fake, "shutdown") == 0 and "shutting down" in capsys.readouterr().out
    assert fake.types()[-1] == "shutdown"


@pytest.mark.parametrize("script, code", [
    pytest.param(lambda r: r.error("busy", "full", position=9), 4, id="busy"),
    pytest.param(lambda r: r.error("context_overflow", "too long"), 1, id="request-error"),
    pytest.param(lambda r: r.progress("queued", 0), 5, id="timeout"),
    pytest.param(lambda r: r.chunk(5), 1, id="protocol-violation"),  # chunk text must be a string
])
def test_exit_codes(fake: FakeDaemon, capsys: pytest.CaptureFixture[str], script: Any, code: int):
    fake.on("generate", script)
    timeout = "0.3" if code == 5 else "10"  # short only where the timeout is the point
    assert run(fake, "--timeout", timeout, "generate", "hi") == code
    assert capsys.readouterr().err.startswith("moectl: ")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_usage_and_unavailable(tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    assert main(["frobnicate"]) == 2
    monkeypatch.setattr("sys.stdin", FakeTty(""))
    assert main(["--endpoint", f"ipc://{tmp_path}/none.sock", "generate"]) == 2  # no prompt at a terminal
    assert "no prompt" in capsys.readouterr().err
    assert main(["generate", "x", "--max-tokens", "many"]) == 2
    assert main(["--help"]) == 0
    assert main(["--endpoint", f"ipc://{tmp_path}/none.sock", "status"]) == 3
    assert "does not exist" in capsys.readouterr().err


def test_endpoint_from_environment_and_options_after_the_command(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("MOED_ENDPOINT", fake.endpoint)
    assert main(["health"]) == 0
    monkeypatch.setenv("MOED_ENDPOINT", "ipc:///nonexistent/moed.sock")
    assert main(["health", "--endpoint", fake.endpoint, "--timeout", "10"]) == 0
    assert capsys.readouterr().out == "ready\nready\n"


def test_ps_lists_requests_of_other_connections_and_cancel_stops_them(fake: FakeDaemon,
                                                                        capsys: pytest.CaptureFixture[str]):
    assert run(fake, "ps") == 0 and capsys.readouterr().out == "no requests in flight\n"
    fake.on("generate", slow_generate(interval=0.02))
    with Client(fake.endpoint, timeout=10, name="other") as other:
        stream = other.generate("hi")
        events = iter(stream)
        next(events)  # the request is running
        assert run(fake, "ps") == 0
        header, row = capsys.readouterr().out.splitlines()
        assert header.split() == ["ID", "CLIENT", "STATE", "PROMPT", "GENERATED", "AGE"]
        assert row.split()[:4] == ["1", "fake-client", "decoding", "3"]
        assert run(fake, "ps", "--json") == 0
        (listed,) = json.loads(capsys.readouterr().out)
        assert set(listed) == {"id", "client", "state", "prompt_tokens", "generated_tokens", "age_s"}
        assert run(fake, "cancel", listed["id"]) == 0 and capsys.readouterr().out == "cancelled\n"
        assert fake.requests[-1]["params"] == {"target": None, "job": "1"}
        for _ in events:
            pass
        assert stream.result is not None and stream.result.done_reason == "cancelled"


def test_ps_and_cancel_by_id_need_a_version_2_daemon(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    fake.on("hello", lambda r: r.ok({"version": 1, "server": "old/1", "model_type": "m", "limits": {}}))
    assert run(fake, "ps") == 1 and "needs protocol version 2" in capsys.readouterr().err
    assert run(fake, "cancel", "3") == 1 and "upgrade" in capsys.readouterr().err
    assert fake.types() == ["hello", "hello"]  # nothing the old daemon would refuse was sent
