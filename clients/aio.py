"""AsyncClient: the core moed client, one zmq.asyncio DEALER socket, many requests in flight.

How it runs
- The socket connects on the first call, which first says `hello` (version negotiation, docs/protocol.md). An ipc
  endpoint whose socket file is missing, or a daemon that does not answer hello in time, raises DaemonUnavailable.
- One reader (loopsocket.LoopSocket: a callback on the socket, a burst of replies in one call) hands every reply
  to the request it belongs to, by `id` (a _Call with its own queue), so replies for other requests are never
  confused. On the way it holds the daemon to the protocol: `seq` must count 0, 1, 2, ... per request (ZeroMQ
  delivers in order, so a gap is a daemon bug, not tolerated), only generate gets progress and chunks, and exactly
  one final comes (a reply after it is recorded in `violations`, because the call it concerned has already
  returned).
- A Stream (stream.py) sees its client only through the stream.Exchange interface (new_request, send_request,
  cancel) and its request only as a stream.Call (reply, abandon), which AsyncClient and _Call implement.
- Deadlines: a unary call (hello, status, cancel, ...) has one deadline, `timeout` seconds, for its whole life;
  a stream allows at most `timeout` seconds of silence between two messages (the daemon sends progress while the
  request queues and prefills, so a long queue is not a timeout, a hung daemon is).
- A socket monitor turns a dropped connection (daemon exit, missed heartbeats) into DaemonUnavailable for every
  request in flight, at once instead of at their deadlines; so does a refused CURVE handshake before hello.
- A tcp endpoint needs CURVE (keys.py): `curve=` or $MOED_CLIENT_KEY gives the client's key and the daemon's.
- Requests are validated locally with protocol.parse_request before they are sent: a typo in a parameter raises
  InvalidParams at the call, and no frame over the size limit ever reaches the daemon (which would drop it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import errors, protocol
from .endpoints import default_endpoint, ipc_path
from .errors import DaemonUnavailable, MoedError, ProtocolViolation, Timeout
from .events import Health, Hello, RequestInfo, Result, Status
from .keys import ENV_CLIENT_KEY, ClientKey, client_key_from_env
from .loopsocket import LoopSocket
from .stream import Stream

log = logging.getLogger("moed.client")

HEARTBEAT_IVL_MS = 2000  # ZMTP pings; ~3 missed intervals mean the daemon is gone (serving.md)
HEARTBEAT_TIMEOUT_MS = 6000
# a CURVE handshake refused (unknown key) or impossible (no key for a CURVE daemon, or one for a plain daemon)
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_RECENT = 4096  # how many finished / abandoned request ids to remember, to classify late replies

_Item = dict[str, Any] | MoedError


class _Recent:
    """A bounded set of recent request ids (oldest forgotten first)."""

    def __init__(self, size: int = _RECENT) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, rid: str) -> None:
        self._ids[rid] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def __contains__(self, rid: object) -> bool:
        return rid in self._ids


@dataclass(eq=False)
class _Call:
    """One request in flight: its replies arrive in `items` in order, ending with a final or an exception.
    Implements stream.Call for the Stream that owns it.

    How a reader waits: on a future of its own (`waiter`), which the receiver resolves when it adds an item, and a
    deadline timer that outlives the wait. The timer is armed once and moved on lazily: when it fires before the
    current deadline it re-arms for it, so a reply costs no timer of its own (a stream waits once per chunk)."""

    id: str
    type: str
    client: AsyncClient
    items: deque[_Item] = field(default_factory=deque)
    next_seq: int = 0
    waiter: asyncio.Future[None] | None = None  # while reply() waits for an item
    deadline: float = math.inf  # loop time at which the waiting reply() gives up
    timer: asyncio.TimerHandle | None = None

    async def reply(self, timeout: float | None) -> dict[str, Any]:
        """The next reply within `timeout` seconds (None: the client's); see AsyncClient._next."""
        return await self.client._next(self, self.client._deadline(timeout))

    async def abandon(self) -> None:
        """Drop later replies and send cancel for the request without waiting for its answer."""
        self.client._forget(self)
        await self.client._cancel_quietly(self.id)

    def pending(self) -> int:
        """Replies (or a queued failure) that have arrived and not been read: reply() returns them at once."""
        return len(self.items)

    def put(self, item: _Item) -> None:
        """Add a reply or a failure, and wake the reader waiting for one."""
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, deadline: float) -> bool:
        """Wait until an item has arrived (True) or the deadline, loop time, has passed (False)."""
        loop = asyncio.get_running_loop()
        self.deadline = deadline
        if self.timer is None or self.timer.when() > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(deadline, self._on_timer, deadline)
        self.waiter = loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        return bool(self.items)

    def _on_timer(self, armed: float) -> None:
        self.timer = None
        if self.waiter is None or self.waiter.done():
            return  # nobody waits: the next wait arms a timer for its own deadline
        if self.deadline <= armed:
            self.waiter.set_result(None)  # woken with nothing to read: the wait timed out
        else:  # a later reply moved the deadline on since this timer was armed
            self.timer = asyncio.get_running_loop().call_at(self.deadline, self._on_timer, self.deadline)

    def stop_timer(self) -> None:
        """The call is over (final read, failed or forgotten): its timer goes."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class AsyncClient:
    """A client of the moed daemon; see the module docstring. Use `async with AsyncClient() as c:` or close()."""

    def __init__(self, endpoint: str | None = None, *, timeout: float = 30.0, name: str = "moed-client",
                 curve: ClientKey | None = None) -> None:
        """endpoint: a ZeroMQ endpoint (default: endpoints.default_endpoint()); timeout: seconds, see module doc;
        curve: the CURVE key for a tcp endpoint (keys.load_client_key; None: the file named by $MOED_CLIENT_KEY,
        if set, for tcp). Raises keys.KeyFileError when $MOED_CLIENT_KEY names an unusable file."""
        self.endpoint = endpoint or default_endpoint()
        if curve is None and self.endpoint.startswith("tcp://"):
            curve = client_key_from_env()
        self.curve = curve
        self.timeout = timeout
        self.name = name
        self.server: Hello | None = None  # the daemon's hello answer, once connected
        self.violations: deque[ProtocolViolation] = deque(maxlen=100)  # ones no caller could be told about
        self._sock: zmq.asyncio.Socket | None = None
        self._io: LoopSocket | None = None  # sends and receives on _sock (see loopsocket.py)
        self._tasks: list[asyncio.Task[None]] = []
        self._calls: dict[str, _Call] = {}
        self._finished, self._gone = _Recent(), _Recent()
        self._ids = itertools.count()
        self._prefix = os.urandom(3).hex()  # tells this client's ids from another's in daemon logs
        self._lock: asyncio.Lock | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ---------------------------------------------------------------------------------------------------
    async def hello(self, *, timeout: float | None = None) -> Hello:
        """Say hello (again): the negotiated protocol version, the server, the model and the limits."""
        deadline = self._deadline(timeout)
        await self._connect(deadline)
        self.server = Hello.from_wire(await self._roundtrip("hello", self._hello_params(), deadline))
        return self.server

    async def status(self, *, detail: Sequence[str] = (), timeout: float | None = None) -> Status:
        """The daemon's state, model, load and cache counters; `detail=["experts"]` adds the expert map
        (`raw["experts"]`; protocol version 2)."""
        params: dict[str, Any] = {"detail": list(detail)} if detail else {}
        if detail:
            await self._require("status detail", protocol.SINCE[("status", "detail")], timeout)
        return Status.from_wire(await self._unary("status", params, timeout))

    async def ps(self, *, timeout: float | None = None) -> list[RequestInfo]:
        """Every generate request the daemon holds, from any connection, oldest first (protocol version 2)."""
        await self._require("ps", protocol.SINCE["ps"], timeout)
        result = await self._unary("ps", {}, timeout)
        rows = result.get("requests")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ProtocolViolation(f"ps result: `requests` must be a list of maps, got {rows!r}")
        return [RequestInfo.from_wire(r) for r in rows]

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> bool:
        """Cancel a request of any connection by its daemon-wide id (from ps); True if it was still running (its
        own stream then ends with done_reason cancelled). Raises NotFound if no such request is in flight."""
        await self._require("cancel by daemon-wide id", protocol.SINCE[("cancel", "job")], timeout)
        result = await self._unary("cancel", {"job": job_id}, timeout)
        if not isinstance(result.get("cancelled"), bool):
            raise ProtocolViolation(f"cancel result: `cancelled` must be a bool, got {result!r}")
        cancelled: bool = result["cancelled"]
        return cancelled

    async def _require(self, what: str, version: int, timeout: float | None) -> None:
        """Connect, then raise NotAvailable unless the daemon speaks `version`."""
        await self._connect(self._deadline(timeout))
        assert self.server is not None  # set by _connect
        if self.server.version < version:
            raise errors.NotAvailable("not_available", f"{what} needs protocol version {version}; the daemon "
                                      f"({self.server.server}) speaks {self.server.version}: upgrade it")

    async def health(self, *, timeout: float | None = None) -> Health:
        """Whether the daemon admits work now (ok) and its state (loading|ready|draining)."""
        return Health.from_wire(await self._unary("health", {}, timeout))

    async def clear_quarantine(self, *, timeout: float | None = None) -> int:
        """Put the experts the daemon quarantined after failed reads back in service (each is re-read and
        re-verified on its next use); returns how many there were."""
        return int((await self._unary("clear_quarantine", {}, timeout))["cleared"])

    async def shutdown(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the daemon to drain and exit; returns once it has begun."""
        return await self._unary("shutdown", {}, timeout)

    async def cancel(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Cancel one of this client's requests; True if it was still running (its stream then ends with
        done_reason cancelled). Raises NotFound if the daemon has no such request of this client in flight."""
        result = await self._unary("cancel", {"target": request_id}, timeout)
        if not isinstance(result.get("cancelled"), bool):
            raise ProtocolViolation(f"cancel result: `cancelled` must be a bool, got {result!r}")
        cancelled: bool = result["cancelled"]
        return cancelled

    async def governor_get(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The governor's settings and state (raises NotAvailable until the daemon has a governor)."""
        return await self._unary("governor_get", {}, timeout)

    async def governor_set(self, /, *, timeout: float | None = None, **settings: Any) -> dict[str, Any]:
        """Change governor settings (raises NotAvailable until the daemon has a governor)."""
        return await self._unary("governor_set", settings, timeout)

    def generate(self, prompt: str, *, timeout: float | None = None, **params: Any) -> Stream:
        """Start a completion of `prompt`; params as in docs/protocol.md (max_tokens, temperature, stop, ...).

        Returns a Stream (sent on first use). Raises InvalidParams at once for a bad parameter."""
        return Stream(self, {"prompt": prompt, **params}, timeout)

    def chat(self, messages: Sequence[Mapping[str, str]], *, timeout: float | None = None, **params: Any) -> Stream:
        """Start a chat completion of `messages` ([{role, content}, ...]); the daemon applies the chat template."""
        return Stream(self, {"messages": [dict(m) for m in messages], **params}, timeout)

    async def complete(self, /, prompt: str, *, timeout: float | None = None, **params: Any) -> Result:
        """Generate and return the whole text and stats (streams underneath, so `timeout` is a silence limit)."""
        async with self.generate(prompt, timeout=timeout, **params) as stream:
            return await stream.collect()

    async def chat_complete(self, /, messages: Sequence[Mapping[str, str]], *, timeout: float | None = None,
                            **params: Any) -> Result:
        """chat(), collected into one Result."""
        async with self.chat(messages, timeout=timeout, **params) as stream:
            return await stream.collect()

    async def close(self) -> None:
        """Fail what is in flight, stop the tasks, close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(MoedError("the client was closed"))
        if self._sock is not None:
            _stop_monitor(self._sock)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._io is not None:
            self._io.close()
        if self._sock is not None:
            self._sock.close(linger=0)

    # -- the request exchange (stream.Exchange) ---------------------------------------------------------------------
    def new_request(self, type_: str, params: dict[str, Any]) -> tuple[str, bytes]:
        """A fresh request id and the packed request, checked as the daemon will check it.

        Raises InvalidParams (or another RequestError) for parameters the daemon would refuse."""
        rid = f"{self._prefix}-{next(self._ids)}"
        return rid, self._frame(rid, type_, params)

    async def send_request(self, request_id: str, type_: str, frame: bytes, *, timeout: float | None) -> _Call:
        """Connect and say hello if need be (within `timeout`), then send `frame`; returns the call its replies
        come to (read them with `await call.reply(timeout)`, give up with `await call.abandon()`)."""
        await self._connect(self._deadline(timeout))
        return await self._open(request_id, type_, self._in_version(request_id, frame))

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float:
        return asyncio.get_running_loop().time() + (self.timeout if timeout is None else timeout)

    def _frame(self, rid: str, type_: str, params: dict[str, Any]) -> bytes:
        """The packed request, checked as the daemon will check it. Raises InvalidParams / RequestError."""
        # hello goes out as version 1, which every daemon reads; the rest in the version hello settled on, or,
        # before hello, in the newest this client speaks (send_request restates it once hello has settled)
        if type_ == "hello":
            v = protocol.HELLO_VERSION
        else:
            v = max(protocol.SUPPORTED_VERSIONS) if self.server is None else self.server.version
        try:
            frame = protocol.pack(protocol.request(rid, type_, params, v=v))
        except (TypeError, ValueError, OverflowError) as e:  # msgpack cannot encode a value
            raise errors.InvalidParams("invalid_params", f"cannot encode the parameters: {e}", rid) from None
        try:
            protocol.parse_request(frame)
        except protocol.ProtocolError as e:
            raise errors.from_wire({"code": e.code, "message": e.message}, rid) from None
        return frame

    def _in_version(self, rid: str, frame: bytes) -> bytes:
        """`frame` in the version hello settled on (a frame made before hello has the newest); checked again, so a
        parameter the daemon's version lacks raises InvalidParams naming the version it needs."""
        msg = protocol.unpack(frame)
        if self.server is None or msg.get("type") == "hello" or msg.get("v") == self.server.version:
            return frame
        msg["v"] = self.server.version
        frame = protocol.pack(msg)
        try:
            protocol.parse_request(frame)
        except protocol.ProtocolError as e:
            raise errors.from_wire({"code": e.code, "message": e.message}, rid) from None
        return frame

    async def _unary(self, type_: str, params: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        deadline = self._deadline(timeout)
        await self._connect(deadline)
        return await self._roundtrip(type_, params, deadline)

    async def _roundtrip(self, type_: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Send one request and return its ok result; error finals raise their RequestError."""
        rid, frame = self.new_request(type_, params)
        call = await self._open(rid, type_, frame)
        try:
            msg = await self._next(call, deadline)
        except BaseException:
            self._forget(call)
            raise
        if msg["status"] == "error":
            raise errors.from_wire(msg["error"], rid)
        result: dict[str, Any] = msg["result"]
        return result

    async def _open(self, rid: str, type_: str, frame: bytes) -> _Call:
        if self._closed or self._io is None:
            raise MoedError("the client is closed" if self._closed else "the client is not connected")
        call = _Call(rid, type_, self)
        self._calls[rid] = call  # before sending: the reply may come back before send() returns
        try:
            await self._io.send(frame)
        except BaseException as e:
            self._calls.pop(rid, None)
            if isinstance(e, zmq.ZMQError):
                raise MoedError(f"cannot send to {self.endpoint}: {e}") from None
            raise
        return call

    async def _next(self, call: _Call, deadline: float) -> dict[str, Any]:
        """The call's next reply, by the deadline (loop time). Raises the exception the receiver queued, or
        Timeout (DaemonUnavailable when the ipc socket file has disappeared meanwhile)."""
        if not call.items and not await call.wait(deadline):
            path = ipc_path(self.endpoint)
            if path is not None and not path.exists():
                raise DaemonUnavailable(f"the daemon at {self.endpoint} went away (socket file gone)")
            raise Timeout(f"no reply to {call.type} request {call.id} within the deadline")
        item = call.items.popleft()
        if isinstance(item, MoedError):
            call.stop_timer()
            raise item
        if item["type"] == "final":
            call.stop_timer()
        return item

    def _forget(self, call: _Call) -> None:
        """The caller gave up on this call: later replies for it are dropped without complaint."""
        call.stop_timer()
        if self._calls.pop(call.id, None) is not None:
            self._gone.add(call.id)

    async def _cancel_quietly(self, target: str) -> None:
        """Send cancel for `target` without waiting for the answer (used when a stream is closed early)."""
        if self._closed or self._sock is None:
            return
        try:
            rid, frame = self.new_request("cancel", {"target": target})
            self._forget(await self._open(rid, "cancel", frame))
        except (MoedError, zmq.ZMQError) as e:
            log.debug("could not send cancel for %s: %s", target, e)

    # -- connection -------------------------------------------------------------------------------------------------
    def _hello_params(self) -> dict[str, Any]:
        return {"versions": list(protocol.SUPPORTED_VERSIONS), "client": self.name}

    async def _connect(self, deadline: float) -> None:
        """Connect and say hello once (again after a dropped connection)."""
        if self._closed:
            raise MoedError("the client is closed")
        if self.server is not None:
            return
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self.server is not None:
                return
            if self._sock is None:
                self._open_socket()
            try:
                result = await self._roundtrip("hello", self._hello_params(), deadline)
            except Timeout:
                raise DaemonUnavailable(f"no daemon answered at {self.endpoint} (is `moed serve` running?)") from None
            self.server = Hello.from_wire(result)

    def _open_socket(self) -> None:
        self._check_ipc_path()
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        if self.curve is not None:
            sock.curve_serverkey = self.curve.server
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | _HANDSHAKE_FAILED)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            monitor.close(linger=0)
            sock.close(linger=0)
            raise DaemonUnavailable(f"cannot connect to {self.endpoint}: {e}") from None
        self._sock, self._io = sock, LoopSocket(sock, self._dispatch_safely)
        self._tasks = [asyncio.create_task(self._watch(sock, monitor))]

    def _check_ipc_path(self) -> None:
        """Fail at once when an ipc socket file is missing or belongs to a folder this user may not enter."""
        path = ipc_path(self.endpoint)
        if path is None:
            return
        try:
            path.stat()
        except PermissionError:
            raise DaemonUnavailable(f"cannot reach the daemon at {self.endpoint}: permission denied (its socket is "
                                    f"private to the user who runs it)") from None
        except OSError:
            raise DaemonUnavailable(f"no daemon at {self.endpoint}: {path} does not exist (is `moed serve` "
                                    f"running?)") from None

    def _handshake_failed(self) -> DaemonUnavailable:
        """A tcp connection dropped or refused before hello: almost always a missing or unknown CURVE key."""
        if self.curve is None:
            return DaemonUnavailable(f"the daemon at {self.endpoint} refused the connection: a tcp endpoint needs "
                                     f"a CURVE key (moectl --key-file FILE, or ${ENV_CLIENT_KEY}; `moed keys`)")
        return DaemonUnavailable(f"the daemon at {self.endpoint} refused the connection with this client's CURVE key "
                                 f"{self.curve.public.decode()} (not in its allowed clients, or made for another "
                                 f"daemon; `moed keys client NAME`)")

    async def _watch(self, sock: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket) -> None:
        """Fail everything in flight when the connection drops (the next call says hello again), and fail a hello
        at once when the connection is refused (a stale socket file, a closed port) instead of at its deadline."""
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    before_hello, self.server = self.server is None, None
                    self._fail_all(self._handshake_failed() if before_hello and self.endpoint.startswith("tcp://")
                                   else DaemonUnavailable(f"the daemon at {self.endpoint} closed the connection"))
                elif event["event"] == zmq.EVENT_CONNECT_RETRIED and self.server is None:
                    self._fail_all(DaemonUnavailable(f"nothing is listening at {self.endpoint} "
                                                      f"(is `moed serve` running?)"))
                elif event["event"] & _HANDSHAKE_FAILED and self.server is None:
                    self._fail_all(self._handshake_failed())
        except zmq.ZMQError:
            pass
        finally:
            _stop_monitor(sock)  # first: see _stop_monitor
            monitor.close(linger=0)

    def _dispatch_safely(self, frames: list[bytes]) -> None:
        try:
            self._dispatch(frames)
        except Exception as e:  # a bug here must not silently strand every caller until its deadline
            log.exception("moed client: cannot handle a reply")
            self._fail_all(MoedError(f"internal client error handling a reply: {e!r}"))

    # -- demultiplexing ---------------------------------------------------------------------------------------------
    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 1:
                raise protocol.ProtocolError("malformed", f"a reply must be one frame, got {len(frames)}",
                                             _peek_id(frames[-1]))
            msg = protocol.parse_reply(frames[0])
        except protocol.ProtocolError as e:
            self._bad_frame(e)
            return
        call = self._calls.get(msg["id"])
        if call is None:
            self._stray(msg)
            return
        if problem := _order_problem(call, msg):
            self._fail(call, ProtocolViolation(f"request {call.id}: {problem}"))
            return
        call.next_seq += 1
        if msg["type"] == "final":
            del self._calls[call.id]
            self._finished.add(call.id)
        call.put(msg)

    def _bad_frame(self, e: protocol.ProtocolError) -> None:
        """A reply that breaks the protocol: fail its request, or every request when its id is unreadable (any
        of them may have lost a message)."""
        err = ProtocolViolation(f"bad reply from the daemon: {e.message}")
        if e.request_id in self._calls:
            self._fail(self._calls[e.request_id], err)
        elif e.request_id is None and self._calls:
            self._fail_all(err)
        else:
            self._violation(err)

    def _stray(self, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        if rid in self._gone:
            return  # the caller gave up on it (deadline, early close): late replies are expected
        what = "after the final of" if rid in self._finished else "for unknown"
        self._violation(ProtocolViolation(f"{msg['type']} reply (seq {msg['seq']}) {what} request {rid!r}"))

    def _fail(self, call: _Call, err: MoedError) -> None:
        if self._calls.pop(call.id, None) is not None:
            self._gone.add(call.id)
            call.put(err)

    def _fail_all(self, err: MoedError) -> None:
        for call in list(self._calls.values()):
            self._fail(call, err)

    def _violation(self, err: ProtocolViolation) -> None:
        log.warning("moed daemon broke the protocol: %s", err)
        self.violations.append(err)


def _stop_monitor(sock: zmq.asyncio.Socket) -> None:
    """Stop a socket's monitor before its PAIR socket closes. libzmq sends monitor events with a blocking send
    from the context's I/O thread: an event for a monitor nobody reads any more would stall that thread, and with
    it every socket of the (shared) context."""
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass  # already closed


def _order_problem(call: _Call, msg: dict[str, Any]) -> str | None:
    if msg["seq"] != call.next_seq:
        return f"reply seq {msg['seq']}, expected {call.next_seq}"
    if msg["type"] != "final" and call.type != "generate":
        return f"a {msg['type']} reply to a {call.type} request"
    return None


def _peek_id(frame: bytes) -> str | None:
    try:
        rid = protocol.unpack(frame).get("id")
    except protocol.ProtocolError:
        return None
    return rid if isinstance(rid, str) else None
