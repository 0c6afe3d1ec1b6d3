"""The socket loop: one ROUTER socket, decode and validate, answer control requests at once, route the rest.

It runs on one thread (the main thread under `moed serve`) and never computes: each frame is checked with
protocol.parse_request; errors, hello, status, health, cancel, ps, shutdown and governor_* are answered right away from
state the scheduler publishes; a generate request is handed to the scheduler (which may refuse it: loading,
shutting_down, busy). Control requests (shutdown, governor_set, clear_quarantine, cancel by job) are answered
`forbidden` unless the connection is trusted: every ipc connection, on tcp an admin CURVE key (access.py).
Replies from the scheduler arrive on a queue, with a byte on a socketpair to wake the poll, and go out through the
Outbox (seq numbers, slow clients, dead clients; see delivery.py).

Shutdown (a shutdown request, a signal, or the scheduler dying): the scheduler drains, the loop keeps answering
(generate gets shutting_down) until the scheduler has stopped and every final went out or `flush_s` passed.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

import zmq

from moed.clients import protocol

from .delivery import Outbox
from .jobs import JobError, Key
from .logs import event
from .scheduler import Scheduler

if TYPE_CHECKING:
    from .access import Access
    from .governing import Governing

log = logging.getLogger(__name__)
# ZeroMQ drops the connection of a peer whose frame exceeds MAXMSGSIZE; the daemon takes frames up to this size so
# that one somewhat over protocol.MAX_MESSAGE_BYTES gets a `too_large` error instead of a silent disconnect.
SOCKET_MAX_FRAME = 4 * protocol.MAX_MESSAGE_BYTES
RECV_BATCH = 256  # frames handled per poll wake-up before replies get a turn
FLUSH_S = 2.0  # after the scheduler stopped, how long finals may take to leave
MAX_NAMES = 4096  # client names (from hello) remembered, newest connections first


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("moed")
    except PackageNotFoundError:
        return "unknown"


# requests that change the daemon for everyone: only trusted connections (access.py) may send them
CONTROL = ("shutdown", "governor_set", "clear_quarantine")


def _is_control(req: dict[str, Any]) -> bool:
    """A control request: CONTROL, or a cancel of any connection's request by daemon-wide id."""
    return req["type"] in CONTROL or (req["type"] == "cancel" and req["params"].get("job") is not None)


def _user_id(frame: zmq.Frame) -> str:
    """The User-Id the ZAP handler gave the message's connection ("" when none)."""
    try:
        return str(frame.get("User-Id") or "")
    except zmq.ZMQError:
        return ""


class Server:
    def __init__(self, sock: zmq.Socket, scheduler_factory: Callable[..., Scheduler], *, slow_bytes: int,
                 slow_s: float, drain_timeout_s: float, governor: Governing | None = None,
                 access: Access | None = None):
        """access: who may send control requests (access.py); None = every connection (ipc)."""
        self._sock = sock
        self._access = access if access is not None and access.curve else None
        self._governor = governor
        self._replies: queue.SimpleQueue[tuple[Key, str, dict[str, Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.scheduler = scheduler_factory(emit=self._post, on_exit=self._poke)
        self.controls = self.scheduler.controls
        self._outbox = Outbox(sock, on_gone=lambda k: self.controls.cancel(k, "client_gone"),
                              on_slow=lambda k: self.controls.cancel(k, "slow_client"),
                              slow_bytes=slow_bytes, slow_s=slow_s)
        self._drain_timeout_s = drain_timeout_s
        self._stop_reason: str | None = None
        self._stop_lock = threading.Lock()
        self._draining = False
        self._stopped_at: float | None = None
        self._started = time.monotonic()
        self._version = version()
        self._names: OrderedDict[bytes, str] = OrderedDict()  # connection -> the name it gave in hello
        self._v = protocol.HELLO_VERSION  # the version of the request being handled: its replies carry it
        self._handlers: dict[str, Callable[[bytes, dict[str, Any]], None]] = {
            "hello": self._hello, "generate": self._generate, "cancel": self._cancel, "status": self._status,
            "health": self._health, "shutdown": self._shutdown, "governor_get": self._governor_get,
            "governor_set": self._governor_set, "ps": self._ps, "clear_quarantine": self._clear_quarantine,
        }

    # -- other threads ----------------------------------------------------------------------------------------
    def _post(self, key: Key, kind: str, body: dict[str, Any]) -> None:
        """The scheduler's emit: queue a reply and wake the loop."""
        self._replies.put((key, kind, body))
        self._poke()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"!")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing): either way the loop will look

    def request_shutdown(self, reason: str, immediate: bool = False) -> None:
        """Begin a graceful shutdown (thread- and signal-safe). immediate: end running requests now."""
        with self._stop_lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        if immediate:
            self.controls.begin_drain(0.0)
        self._poke()

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until shut down; returns the exit code (0 clean, 1 the scheduler failed)."""
        self.scheduler.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        try:
            while not self._finished():
                timeout = 20 if self._outbox.busy() else 500
                ready = dict(poller.poll(timeout))
                if self._sock in ready:
                    self._receive()
                if self._wake_r.fileno() in ready:
                    self._drain_wake()
                self._deliver()
                self._outbox.retry()
                self._check_stop()
        finally:
            self.scheduler.join(5.0)
            self._wake_r.close()
            self._wake_w.close()
        return 1 if self.scheduler.fatal else 0

    def _receive(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                if self._access is None:
                    frames = self._sock.recv_multipart(flags=zmq.NOBLOCK)
                    admin, user = True, ""
                else:  # CURVE: the ZAP handler named the key on each message (User-Id)
                    parts = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    frames = [p.bytes for p in parts]
                    user = _user_id(parts[-1])
                    admin = self._access.is_admin(user)
            except zmq.Again:
                return
            self._handle(frames[0], frames[1:], admin=admin, user=user)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _deliver(self) -> None:
        while True:
            try:
                key, kind, body = self._replies.get_nowait()
            except queue.Empty:
                return
            self._outbox.post(key, kind, body)

    def _check_stop(self) -> None:
        if self._stop_reason is None and self._scheduler_stopped():
            self._stop_reason = f"the model thread stopped: {self.scheduler.fatal or 'no reason given'}"
        if self._stop_reason is not None and not self._draining:
            self._draining = True
            event(log, logging.INFO, "shutting down", reason=self._stop_reason)
            self.controls.begin_drain(self._drain_timeout_s)
        if self._draining and self._stopped_at is None and self._scheduler_stopped():
            self._stopped_at = time.monotonic()

    def _scheduler_stopped(self) -> bool:
        # "stopped" is set just before the thread's last wake-up: waiting for the thread to end would cost a poll
        return self.scheduler.state == "stopped" or not self.scheduler.is_alive()

    def _finished(self) -> bool:
        if self._stopped_at is None:
            return False
        self._deliver()
        if not self._outbox.busy():
            return True
        return time.monotonic() - self._stopped_at > FLUSH_S

    # -- requests ---------------------------------------------------------------------------------------------
    def _handle(self, client: bytes, body: list[bytes], *, admin: bool = True, user: str = "") -> None:
        """One request frame. admin: the connection may send control requests (CONTROL); user: its key's name."""
        if len(body) != 1:
            self._error(client, None, "malformed", f"a request is one frame, got {len(body)} frames after the "
                        f"identity (use a DEALER socket without an empty delimiter)")
            return
        try:
            req = protocol.parse_request(body[0])
        except protocol.ProtocolError as e:
            self._error(client, e.request_id, e.code, e.message, **e.extra)
            return
        self._v = req["v"]
        try:
            if not admin and _is_control(req):
                self._forbidden(client, req, user)
                return
            self._handlers[req["type"]](client, req)
        except Exception as e:  # noqa: BLE001 - a handler bug answers one request, it never stops the daemon
            log.exception("handler failed")
            self._error(client, req["id"], "internal", f"{req['type']} failed: {type(e).__name__}: {e}")
        finally:
            self._v = protocol.HELLO_VERSION

    def _forbidden(self, client: bytes, req: dict[str, Any], user: str) -> None:
        what = "cancel by job" if req["type"] == "cancel" else req["type"]
        event(log, logging.WARNING, "forbidden", type=what, client=client.hex(), key=user)
        self._error(client, req["id"], "forbidden", f"{what} is a control request: only the daemon's own user (ipc) "
                    f"or a CURVE key with the admin role (`moed keys client NAME --admin`) may send it; key "
                    f"{user!r} is not admin")

    def _reply(self, client: bytes, rid: str, result: dict[str, Any]) -> None:
        self._outbox.send_once(client, rid, "ok", result, self._v)

    def _error(self, client: bytes, rid: str | None, code: str, message: str, **extra: Any) -> None:
        log.debug("refused %s from %s: %s %s", rid, client.hex(), code, message)
        self._outbox.send_once(client, rid, "error", {"code": code, "message": message, **extra}, self._v)

    def _hello(self, client: bytes, req: dict[str, Any]) -> None:
        try:
            v = protocol.negotiate(req["params"]["versions"])
        except protocol.ProtocolError as e:
            self._error(client, req["id"], e.code, e.message, **e.extra)
            return
        snap = self.controls.snapshot()
        limits = {**protocol.LIMITS, "context_length": snap["context_limit"]}
        event(log, logging.DEBUG, "hello", client=client.hex(), name=req["params"]["client"])
        self._names[client] = req["params"]["client"]
        self._names.move_to_end(client)
        while len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)
        self._reply(client, req["id"], {"version": v, "server": f"moed/{self._version}",
                                        "model_type": snap["model_type"], "limits": limits})

    def _generate(self, client: bytes, req: dict[str, Any]) -> None:
        key = (client, req["id"])
        if self._outbox.in_flight(key):
            self._refuse(key, "duplicate_id", f"request {req['id']!r} of this connection is still in flight; use a "
                         f"new id for each request")
            return
        if self._draining:
            self._refuse(key, "shutting_down", "the daemon is shutting down and admits no new work")
            return
        self._outbox.open(key, req["v"])
        try:
            self.controls.submit(key, req["params"], time.monotonic_ns(), client=self._names.get(client, ""))
        except JobError as e:
            self._outbox.close(key)
            self._refuse(key, e.code, e.message, **e.extra)

    def _refuse(self, key: Key, code: str, message: str, **extra: Any) -> None:
        """A generate request refused before the scheduler took it: logged like every generate request, once."""
        event(log, logging.INFO, "request", id=key[1], client=key[0].hex(), error=code, message=message)
        self._outbox.send_once(key[0], key[1], "error", {"code": code, "message": message, **extra}, self._v)

    def _cancel(self, client: bytes, req: dict[str, Any]) -> None:
        if req["params"]["job"] is not None:
            self._cancel_job(client, req)
            return
        key = (client, req["params"]["target"])
        if self._outbox.streaming(key):
            self._reply(client, req["id"], {"cancelled": self.controls.cancel(key, "cancelled")})
        elif self._outbox.in_flight(key) or self._outbox.recently_finished(key):
            self._reply(client, req["id"], {"cancelled": False})
        else:
            self._error(client, req["id"], "not_found", f"no request {key[1]!r} of this connection is in flight "
                        f"(ids are per connection)")

    def _cancel_job(self, client: bytes, req: dict[str, Any]) -> None:
        """Cancel by daemon-wide id (ps), whichever connection sent the request: a control request, so only the
        daemon's own user (ipc: the socket's folder is 0700) or an admin key (tcp) gets here."""
        job = req["params"]["job"]
        key = self.controls.key_of(job)
        if key is None:
            self._error(client, req["id"], "not_found", f"no request {job!r} is in flight (see `moectl ps`)")
            return
        cancelled = self._outbox.streaming(key) and self.controls.cancel(key, "cancelled")
        event(log, logging.INFO, "cancel", job=job, id=key[1], client=key[0].hex(), by=client.hex(),
              cancelled=cancelled)
        self._reply(client, req["id"], {"cancelled": cancelled})

    def _status(self, client: bytes, req: dict[str, Any]) -> None:
        snap = self.controls.snapshot()
        if self._draining:
            snap["state"] = "draining"
        snap.update(uptime_s=round(time.monotonic() - self._started, 3), version=self._version,
                    requests=self.controls.requests())
        if "experts" in req["params"].get("detail", ()):
            snap["experts"] = self.controls.want_experts()
        if self._governor is not None:
            snap["governor"] = self._governor.status()
        self._reply(client, req["id"], snap)

    def _ps(self, client: bytes, req: dict[str, Any]) -> None:
        self._reply(client, req["id"], {"requests": self.controls.requests()})

    def _health(self, client: bytes, req: dict[str, Any]) -> None:
        health = self.controls.health()
        if self._draining or health["state"] not in protocol.DAEMON_STATES:
            health = {"ok": False, "state": "draining"}
        self._reply(client, req["id"], health)

    def _clear_quarantine(self, client: bytes, req: dict[str, Any]) -> None:
        """Request: clear_quarantine {}. Reply: ok {cleared: how many experts were put back in service}."""
        self._reply(client, req["id"], {"cleared": self.controls.clear_quarantine()})

    def _shutdown(self, client: bytes, req: dict[str, Any]) -> None:
        self._reply(client, req["id"], {})
        self.request_shutdown(f"shutdown request from {client.hex()}")

    def _governor_get(self, client: bytes, req: dict[str, Any]) -> None:
        if self._governor is None:
            self._no_governor(client, req)
            return
        self._reply(client, req["id"], self._governor.status())

    def _governor_set(self, client: bytes, req: dict[str, Any]) -> None:
        if self._governor is None:
            self._no_governor(client, req)
            return
        try:
            result = self._governor.apply(req["params"])
        except ValueError as e:
            self._error(client, req["id"], "invalid_params", str(e))
            return
        event(log, logging.INFO, "governor set", client=client.hex(), settings=req["params"])
        self._reply(client, req["id"], result)

    def _no_governor(self, client: bytes, req: dict[str, Any]) -> None:
        self._error(client, req["id"], "not_available", "this daemon runs without its governor (governor = \"off\"); "
                    "start it with the governor on, or set max_batch and cache_budget in its config")
