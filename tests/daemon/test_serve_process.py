"""`moed serve` as a process: the endpoint lock (exit 3), SIGTERM (drain, save, clean up, exit 0), and a client
killed or frozen mid-stream (detected, its request cancelled as client_gone, the daemon keeps serving)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_harness import Conn, check_sequence, short_dir, spawn_daemon, tokens_of, wait_ready

pytestmark = pytest.mark.slow

CLIENT = """
import sys, zmq
from moed.clients import protocol as P
s = zmq.Context.instance().socket(zmq.DEALER)
s.connect(sys.argv[1])
s.send(P.pack(P.request("doomed", "generate", {"prompt": "A very long tale", "max_tokens": 3000})))
chunks = 0
while chunks < 3:
    chunks += P.parse_reply(s.recv())["type"] == "chunk"
print("streaming", flush=True)
input()  # wait here until killed
"""


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


@pytest.fixture(scope="module")
def served(store):
    folder = short_dir()
    proc = spawn_daemon(store, folder, env={"MOED_HEARTBEAT_S": "0.2"})
    endpoint = f"ipc://{folder}/d.sock"
    try:
        wait_ready(endpoint)
        yield proc, folder, endpoint
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def log_text(folder: str, name: str = "err.log") -> str:
    return Path(folder, name).read_text()


def test_second_daemon_on_the_same_endpoint_exits_3(served, store):
    proc, folder, endpoint = served
    second = spawn_daemon(store, folder, endpoint=endpoint, log="second.log")
    assert second.wait(60) == 3
    assert f"another moed daemon (pid {proc.pid})" in log_text(folder, "second.log")
    c = Conn(endpoint)  # the first one still owns its socket
    try:
        assert c.result("health")["ok"]
    finally:
        c.close()


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_vanished_client_is_detected_and_its_request_cancelled(served, how):
    """killed: SIGKILL closes its socket. frozen: SIGSTOP keeps the socket open, but it misses its heartbeats."""
    proc, folder, endpoint = served
    c = Conn(endpoint)
    try:
        gone_before = c.result("status")["finished"].get("client_gone", 0)
        client = subprocess.Popen([sys.executable, "-c", CLIENT, endpoint], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "streaming"
            client.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            deadline = time.monotonic() + 15
            while (status := c.result("status"))["finished"].get("client_gone", 0) <= gone_before \
                    or status["active"]:
                assert time.monotonic() < deadline, f"the vanished client's request was not cancelled: {status}"
                time.sleep(0.05)
        finally:
            client.kill()
            client.wait(10)
        replies = c.call("generate", {"prompt": "Still here", "max_tokens": 6})  # and the daemon serves on
        assert check_sequence(replies)["status"] == "ok" and len(tokens_of(replies)) >= 1
    finally:
        c.close()
    text = log_text(folder)
    assert "msg=\"client gone\"" in text and "id=doomed" in text and "done_reason=client_gone" in text


def test_sigterm_drains_saves_and_exits_0(store):
    folder = short_dir()
    proc = spawn_daemon(store, folder, env={"MOED_DRAIN_TIMEOUT_S": "0.3"})
    endpoint = f"ipc://{folder}/d.sock"
    try:
        wait_ready(endpoint)
        c = Conn(endpoint)
        c.send("long", "generate", {"prompt": "Endless", "max_tokens": 3000})
        while not any(m["type"] == "chunk" for m in c.inbox["long"]):
            c.recv()
        proc.send_signal(signal.SIGTERM)
        final = check_sequence(c.wait("long"))
        c.close()
        assert final["status"] == "ok" and final["result"]["done_reason"] == "shutdown"
        assert proc.wait(30) == 0
        assert not Path(folder, "d.sock").exists() and not Path(folder, "d.sock.lock").exists()
        assert Path(folder, "last-run.json").exists()
        text = log_text(folder)
        assert "signal SIGTERM" in text and "msg=stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("args,exit_code,words", [
    (["--cache-budget", "25"], 2, ["did you mean 25%?"]),
    (["--idle-cache-budget", "7"], 2, ["idle_cache_budget", "did you mean 7%?"]),
    (["--cache-budget", "lots"], 2, ["cache_budget", "expected e.g."]),
])
def test_a_bad_budget_is_refused_before_anything_is_bound(store, args, exit_code, words):
    folder = short_dir()
    try:
        proc = spawn_daemon(store, folder, *args)
        assert proc.wait(60) == exit_code
        err = log_text(folder)
        assert all(w in err for w in words) and "Traceback" not in err and len(err) < 400, err
        assert not Path(folder, "d.sock").exists() and not Path(folder, "d.sock.lock").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_budget_above_the_store_is_clamped_with_a_warning(store):
    folder = short_dir()
    proc = spawn_daemon(store, folder, "--cache-budget", "2GB")
    endpoint = f"ipc://{folder}/d.sock"
    try:
        wait_ready(endpoint)
        c = Conn(endpoint)
        try:
            cache = c.result("status")["cache"]
        finally:
            c.close()
        from moed.daemon.store.format import read_manifest

        assert cache["budget_bytes"] == read_manifest(store).total_expert_bytes  # 100 %, not 2 GB
        assert "clamped to 100 %" in log_text(folder)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
