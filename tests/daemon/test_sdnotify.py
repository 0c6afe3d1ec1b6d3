"""sd_notify: the datagram protocol on real unix sockets (a path and Linux's abstract namespace), and a real
`moed serve` process on the tiny model telling a fake service manager READY=1, WATCHDOG=1 and STOPPING=1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from daemon_harness import Conn, short_dir, spawn_daemon
from moed.daemon.sdnotify import Notifier

needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets on this platform")
needs_abstract = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                    reason="the abstract socket namespace is Linux only")


class Manager:
    """The service manager's end: a unix datagram socket that collects what the daemon sends."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[str] = []

    def wait_for(self, assignment: str, timeout: float = 60.0) -> None:
        self.wait_until(lambda: assignment in self.lines(), assignment, timeout)

    def wait_until(self, done, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} never came; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def lines(self) -> list[str]:
        return [line for m in self.messages for line in m.split("\n")]

    def close(self) -> None:
        self.sock.close()


def test_no_socket_means_disabled():
    n = Notifier.from_env({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.send("READY=1") is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval_s == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": "1"}, pid=2).watchdog_interval_s is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "soon"}).watchdog_interval_s is None
    assert Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s is None  # no socket, no watchdog


@needs_unix
def test_send_to_a_socket_path(tmp_path):
    folder = short_dir()
    m = Manager(f"{folder}/notify")
    try:
        assert Notifier(m.address).send("READY=1", "STATUS=serving")
        m.wait_for("STATUS=serving", timeout=5)
        assert m.messages == ["READY=1\nSTATUS=serving"]  # one datagram, newline-separated
    finally:
        m.close()
        shutil.rmtree(folder, ignore_errors=True)


@needs_abstract
def test_send_to_the_abstract_namespace():
    m = Manager(f"@moed-test-{uuid.uuid4().hex}")
    try:
        assert Notifier(m.address).send("WATCHDOG=1")
        m.wait_for("WATCHDOG=1", timeout=5)
    finally:
        m.close()


def test_a_vanished_manager_is_not_an_error(tmp_path):
    assert Notifier(str(tmp_path / "gone")).send("READY=1") is False


@needs_abstract
@pytest.mark.slow
def test_moed_serve_notifies_ready_watchdog_and_stopping(model_dir):
    store = model_dir("qwen3_moe", "store-mlx")
    folder = short_dir()
    m = Manager(f"@moed-test-{uuid.uuid4().hex}")
    proc = spawn_daemon(store, folder, env={"NOTIFY_SOCKET": m.address, "WATCHDOG_USEC": "600000"})
    try:
        m.wait_for("READY=1", timeout=120)
        ready_at = m.lines().index("READY=1")
        assert "WATCHDOG=1" not in m.lines()[:ready_at]  # systemd arms the watchdog only after start-up
        c = Conn(f"ipc://{folder}/d.sock")
        try:
            assert c.result("health")["state"] == "ready"  # READY=1 means the daemon serves
        finally:
            c.close()
        for _ in range(3):  # beats keep coming while the loop answers (interval 0.3 s)
            n = m.lines().count("WATCHDOG=1")
            m.wait_until(lambda: m.lines().count("WATCHDOG=1") > n, "another WATCHDOG=1", timeout=10)
        proc.send_signal(signal.SIGTERM)
        m.wait_for("STOPPING=1", timeout=60)
        assert proc.wait(60) == 0
        assert m.lines().count("READY=1") == 1 and m.lines().count("STOPPING=1") == 1
        assert "msg=stopped" in Path(folder, "err.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        m.close()
        shutil.rmtree(folder, ignore_errors=True)


class FakeDaemon:
    """A ROUTER socket that answers `health` with a settable state, or not at all (a hung socket loop)."""

    def __init__(self, endpoint: str):
        import zmq

        from moed.clients import protocol as P

        self.state, self.answering, self._stop = "loading", True, threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.bind(endpoint)

        def loop() -> None:
            while not self._stop.is_set():
                if self._sock.poll(20):
                    client, frame = self._sock.recv_multipart()
                    req = P.unpack(frame)
                    if self.answering:
                        reply = P.ok(req["id"], 0, {"ok": self.state == "ready", "state": self.state})
                        self._sock.send_multipart([client, P.pack(reply)])
            self._sock.close(linger=0)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@needs_abstract
def test_reporter_pings_only_while_the_loop_answers():
    from moed.daemon.liveness import ServiceReporter

    folder = short_dir()
    endpoint = f"ipc://{folder}/fake.sock"
    fake, m = FakeDaemon(endpoint), Manager(f"@moed-test-{uuid.uuid4().hex}")
    reporter = ServiceReporter(Notifier(m.address, watchdog_usec=200_000), endpoint, probe_every_s=0.02)
    try:
        reporter.start()
        with pytest.raises(TimeoutError):  # loading: neither READY nor watchdog beats
            m.wait_until(lambda: bool(m.messages), "anything", timeout=0.5)
        fake.state = "ready"
        m.wait_for("READY=1", timeout=10)
        m.wait_until(lambda: m.lines().count("WATCHDOG=1") >= 3, "three beats", timeout=10)
        fake.answering = False  # a hung loop: the beats stop
        time.sleep(0.3)
        beats = m.lines().count("WATCHDOG=1")
        with pytest.raises(TimeoutError):
            m.wait_until(lambda: m.lines().count("WATCHDOG=1") > beats, "a beat", timeout=1.0)
        fake.answering, fake.state = True, "draining"  # draining: STOPPING=1, beats again while it answers
        m.wait_for("STOPPING=1", timeout=10)
        m.wait_until(lambda: m.lines().count("WATCHDOG=1") > beats, "a beat while draining", timeout=10)
        reporter.stop()
        assert m.lines().count("READY=1") == 1 and m.lines().count("STOPPING=1") == 1
    finally:
        reporter.stop()
        fake.close()
        m.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_reporter_starts_no_thread_without_a_manager():
    from moed.daemon.liveness import ServiceReporter

    reporter = ServiceReporter(Notifier(None), "ipc:///nonexistent/x.sock")
    reporter.start()
    assert "moed-sdnotify" not in [t.name for t in threading.enumerate()]
    reporter.stop()
