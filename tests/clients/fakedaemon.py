"""FakeDaemon: a scripted stand-in for moed in client tests (no MLX): a ROUTER socket served by a thread.

Each request is decoded with protocol.parse_request (so the client's frames are held to the protocol too) and
handed to the handler registered for its type, as a FakeRequest that can send progress, chunks, finals or raw
frames, now or later (`later(delay, fn)`: timers run on the daemon's thread, between polls). Default handlers
answer hello/status/health/shutdown/governor_*, stream a short generate, list generate requests in flight with
`ps` (daemon-wide id: their order of arrival), and cancel requests made slow with `slow_generate` (by `target`
from their own connection, or by `job` from any). `requests` records every request received, in order.

Test modules import the `fake` fixture (fake_daemon) from here: a conftest.py in tests/clients would shadow the
root one for `from conftest import ...` in the other test folders.
"""

from __future__ import annotations

import heapq
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from moed.clients import protocol

Handler = Callable[["FakeRequest"], object]  # return value ignored (scripts may be tuples of calls)


def gen_result(done_reason: str = "stop", generated: int = 2, **extra: Any) -> dict[str, Any]:
    """A generate `result` with every field the protocol requires."""
    return {"done_reason": done_reason, "prompt_tokens": 3, "generated_tokens": generated, "queue_ns": 1000,
            "prefill_ns": 2_000_000, "decode_ns": 4_000_000, "total_ns": 7_001_000, "cache_hits": 30,
            "cache_misses": 10, "bytes_read": 123456, **extra}


STATUS = {"state": "ready", "model_type": "qwen3_moe", "store": "/models/tiny.moe", "active": 1, "queued": 0,
          "max_batch": 4, "queue_limit": 64, "cache": {"hits": 3, "misses": 1, "budget_bytes": 1 << 20},
          "uptime_s": 12.5, "version": "0.1.0"}


class FakeRequest:
    """One request as the fake daemon sees it; replies get seq 0, 1, 2, ... automatically."""

    def __init__(self, daemon: FakeDaemon, identity: bytes, parsed: dict[str, Any]) -> None:
        self.daemon, self.identity = daemon, identity
        self.id: str = parsed["id"]
        self.v: int = parsed["v"]
        self.job = ""  # the daemon-wide id of a generate request
        self.started = time.monotonic()
        self.type: str = parsed["type"]
        self.params: dict[str, Any] = parsed["params"]
        self.seq = 0
        self.cancelled = False

    def send(self, msg: dict[str, Any]) -> None:
        """Send a reply map as is (its seq is the caller's business)."""
        self.send_frames([protocol.pack(msg)])

    def send_frames(self, frames: list[bytes]) -> None:
        self.daemon.sock.send_multipart([self.identity, *frames])

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    def progress(self, state: str, position: int = 0) -> None:
        self.send(protocol.progress(self.id, self._next_seq(), state, position, v=self.v))

    def chunk(self, text: str, tokens: list[int] | None = None) -> None:
        self.send(protocol.chunk(self.id, self._next_seq(), text, tokens or [1], v=self.v))

    def ok(self, result: dict[str, Any]) -> None:
        self.daemon.active.pop((self.identity, self.id), None)
        self.send(protocol.ok(self.id, self._next_seq(), result, v=self.v))

    def error(self, code: str, message: str, **extra: Any) -> None:
        self.daemon.active.pop((self.identity, self.id), None)
        self.send(protocol.error(self.id, self._next_seq(), code, message, v=self.v, **extra))

    def later(self, delay: float, fn: Callable[[], object]) -> None:
        self.daemon.later(delay, fn)


def default_generate(req: FakeRequest) -> None:
    req.progress("queued", 0)
    req.progress("prefilling")
    if req.params["stream"]:
        req.chunk("Hello", [9])
        req.chunk(" world", [10])
        req.ok(gen_result())
    else:
        req.ok(gen_result(text="Hello world"))


def slow_generate(n: int = 1000, interval: float = 0.01) -> Handler:
    """A generate handler that sends one chunk per interval until n chunks, or until cancelled."""

    def handler(req: FakeRequest) -> None:
        count = itertools.count()

        def tick() -> None:
            i = next(count)
            if req.cancelled or i == n:
                req.ok(gen_result("cancelled" if req.cancelled else "length", generated=i))
                return
            req.chunk(f"t{i} ", [i])
            req.later(interval, tick)

        req.later(0.0, tick)

    return handler


def default_cancel(req: FakeRequest) -> None:
    if req.params.get("job") is not None:
        target = next((r for r in req.daemon.active.values() if r.job == req.params["job"]), None)
    else:
        target = req.daemon.active.get((req.identity, req.params["target"]))
    if target is None:
        req.error("not_found", f"no request {req.params['target'] or req.params['job']!r} in flight")
        return
    target.cancelled = True
    req.ok({"cancelled": True})


def default_ps(req: FakeRequest) -> None:
    now = time.monotonic()
    req.ok({"requests": [{"id": r.job, "client": "fake-client", "state": "decoding", "prompt_tokens": 3,
                          "generated_tokens": r.seq, "age_s": round(now - r.started, 3)}
                         for r in req.daemon.active.values()]})


def default_hello(req: FakeRequest) -> None:
    req.ok({"version": protocol.negotiate(req.params["versions"]), "server": "fake/0", "model_type": "qwen3_moe",
            "limits": dict(protocol.LIMITS)})


class FakeDaemon:
    """Use as a context manager: `with FakeDaemon() as d:`; clients connect to `d.endpoint`."""

    def __init__(self, endpoint: str | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix="moed-t-")  # short: ipc paths are limited to ~104 bytes
        self.endpoint = endpoint or f"ipc://{self._dir}/moed.sock"
        self.requests: list[dict[str, Any]] = []
        self.active: dict[tuple[bytes, str], FakeRequest] = {}
        self.handlers: dict[str, Handler] = {
            "hello": default_hello,
            "status": lambda r: r.ok(dict(STATUS)),
            "health": lambda r: r.ok({"ok": True, "state": "ready"}),
            "shutdown": lambda r: r.ok({}),
            "governor_get": lambda r: r.error("not_available", "no governor in this daemon"),
            "governor_set": lambda r: r.error("not_available", "no governor in this daemon"),
            "generate": default_generate,
            "cancel": default_cancel,
            "ps": default_ps,
        }
        self._jobs = itertools.count(1)
        self._timers: list[tuple[float, int, Callable[[], object]]] = []
        self._tick = itertools.count()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-moed")
        self.sock: zmq.Socket[bytes]

    def on(self, type_: str, handler: Handler) -> None:
        self.handlers[type_] = handler

    def later(self, delay: float, fn: Callable[[], object]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._tick), fn))

    def types(self) -> list[str]:
        """The types of the requests received so far."""
        return [r["type"] for r in self.requests]

    def __enter__(self) -> FakeDaemon:
        self._thread.start()
        assert self._ready.wait(5), "fake daemon did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _serve(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                wait = min([0.02] + [max(0.0, t - time.monotonic()) for t, _, _ in self._timers[:1]])
                if self.sock.poll(int(wait * 1000)):
                    identity, *frames = self.sock.recv_multipart()
                    self._handle(identity, frames)
                while self._timers and self._timers[0][0] <= time.monotonic():
                    heapq.heappop(self._timers)[2]()
        finally:
            self.sock.close(linger=0)

    def _handle(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            parsed = protocol.parse_request(frames[-1])
        except protocol.ProtocolError as e:
            self.sock.send_multipart([identity, protocol.pack(protocol.error(e.request_id, 0, e.code, e.message))])
            return
        self.requests.append(parsed)
        req = FakeRequest(self, identity, parsed)
        if req.type == "generate":
            req.job = str(next(self._jobs))
            self.active[(identity, req.id)] = req
        self.handlers[req.type](req)


# -- test helpers ----------------------------------------------------------------------------------------------------
def arun(coro: Any, timeout: float = 20.0) -> Any:
    """Run a coroutine to completion (with a safety deadline, so a hung test fails instead of stalling)."""
    import asyncio

    async def guarded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until predicate() is true; fail the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(name="fake")
def fake_daemon() -> Iterator[FakeDaemon]:
    """A fresh fake daemon for one test."""
    with FakeDaemon() as daemon:
        yield daemon
