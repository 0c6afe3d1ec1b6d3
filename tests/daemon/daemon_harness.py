"""Test helpers for the daemon: run one in-process (a thread) or as a subprocess, and talk to it over raw DEALER
sockets with moed.clients.protocol (so the tests hold the daemon to the wire format, not to a client library)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import zmq

from moed.clients import protocol as P
from moed.daemon.config import load_config

NO_FILE = Path("/nonexistent/moed.toml")


def short_dir() -> str:
    """A private folder with a short path: ipc socket paths must fit in 103 bytes."""
    return tempfile.mkdtemp(prefix="moed-t-", dir="/tmp")


def make_config(store: Path | str, folder: str, **overrides: Any):
    # the governor is off unless a test turns it on (with a sensor trace): the machine's own sensors would make
    # the cache budget depend on whatever else this machine is doing
    flags = {"store": str(store), "endpoint": f"ipc://{folder}/d.sock", "read_mode": "buffered",
             "state_dir": folder, "governor": "off", **overrides}
    return load_config(env={}, default_path=NO_FILE).replace(**flags)


class Conn:
    """One DEALER connection. `call` collects every reply of one request up to its final."""

    def __init__(self, endpoint: str, **sockopts: int):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        for opt, value in sockopts.items():
            self.sock.setsockopt(getattr(zmq, opt), value)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.inbox: dict[str, list[dict]] = defaultdict(list)
        self._n = 0

    def close(self) -> None:
        self.sock.close(linger=0)

    def send(self, rid: str, type_: str, params: dict | None = None) -> None:
        self.sock.send(P.pack(P.request(rid, type_, params)))

    def send_raw(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 10.0) -> dict:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the daemon")
        msg = P.parse_reply(self.sock.recv())
        self.inbox[msg["id"]].append(msg)
        return msg

    def wait(self, rid: str, timeout: float = 30.0) -> list[dict]:
        """All replies to `rid` through its final (replies to other ids are kept in the inbox)."""
        deadline = time.monotonic() + timeout
        while not (self.inbox[rid] and self.inbox[rid][-1]["type"] == "final"):
            self.recv(max(0.01, deadline - time.monotonic()))
        return self.inbox.pop(rid)

    def call(self, type_: str, params: dict | None = None, rid: str | None = None, timeout: float = 30.0) -> list[dict]:
        self._n += 1
        rid = rid or f"{type_}-{self._n}"
        self.send(rid, type_, params)
        return self.wait(rid, timeout)

    def result(self, type_: str, params: dict | None = None) -> dict:
        final = self.call(type_, params)[-1]
        assert final["status"] == "ok", final
        return final["result"]


def tokens_of(replies: list[dict]) -> list[int]:
    return [t for m in replies if m["type"] == "chunk" for t in m["tokens"]]


def text_of(replies: list[dict]) -> str:
    return "".join(m["text"] for m in replies if m["type"] == "chunk")


def check_sequence(replies: list[dict]) -> dict:
    """seq is 0, 1, 2, ...; exactly one final, last; progress only before the first chunk. Returns the final."""
    assert [m["seq"] for m in replies] == list(range(len(replies))), [m["seq"] for m in replies]
    assert [m["type"] for m in replies].count("final") == 1 and replies[-1]["type"] == "final"
    kinds = [m["type"] for m in replies]
    if "chunk" in kinds:
        assert "progress" not in kinds[kinds.index("chunk"):]
    return replies[-1]


def wait_ready(endpoint: str, timeout: float = 60.0) -> None:
    c = Conn(endpoint)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if c.call("health", timeout=1.0)[-1]["result"]["ok"]:
                    return
            except TimeoutError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the daemon did not become ready")
    finally:
        c.close()


class InProcess:
    """A Daemon serving on a thread: `with InProcess(store, max_batch=2) as d: Conn(d.endpoint)`."""

    def __init__(self, store: Path | str, loader: Any = None, wait: bool = True,
                 governor_policy: dict[str, Any] | None = None, **overrides: Any):
        import dataclasses

        from moed.daemon.serving import Daemon

        self.dir = short_dir()
        self.config = dataclasses.replace(make_config(store, self.dir, **overrides),
                                          governor_policy=governor_policy or {})
        self.endpoint = self.config.server.endpoint
        self.daemon = Daemon(self.config, loader=loader)
        self.exit_code: int | None = None
        self._wait = wait
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.exit_code = self.daemon.serve()

    def __enter__(self) -> InProcess:
        self._thread.start()
        assert self.daemon.wait_started(30)
        if self._wait:
            wait_ready(self.endpoint)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        self.daemon.shutdown("test over")
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the daemon did not stop"
        return self.exit_code

    def __exit__(self, *exc: object) -> None:
        try:
            if self._thread.is_alive():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def spawn_daemon(store: Path | str, folder: str, *args: str, endpoint: str | None = None,
                 env: dict[str, str] | None = None, log: str = "err.log") -> subprocess.Popen:
    """`python -m moed.daemon.cli serve STORE --endpoint ipc://FOLDER/d.sock ...`, stderr to FOLDER/<log>."""
    Path(folder, "none.toml").write_text("")
    full_env = {**os.environ, "MOED_STATE_DIR": folder, "MOED_READ_MODE": "buffered", "PYTHONUNBUFFERED": "1",
                "MOED_CONFIG": str(Path(folder) / "none.toml"), **(env or {})}
    with open(Path(folder) / log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "moed.daemon.cli", "serve", str(store),
                                 "--endpoint", endpoint or f"ipc://{folder}/d.sock", *args],
                                env=full_env, stderr=err, stdout=subprocess.DEVNULL)
