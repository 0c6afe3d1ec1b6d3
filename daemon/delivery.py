"""Delivery of replies over the ROUTER socket: seq numbers, merging for slow readers, and noticing dead clients.

The socket loop owns an Outbox and calls it on its own thread only. Every reply is sent with NOBLOCK on a
ROUTER_MANDATORY socket, and the outcome decides what happens next:

- sent: the request's `seq` advances (seq is assigned at send time, so it stays contiguous whatever is merged).
- EAGAIN: the client's pipe is full (SNDHWM): it reads slowly. The reply waits in the request's backlog, and
  later chunks are merged into the last waiting chunk (text concatenated, tokens appended; a newer progress
  replaces an older one), so a slow client never holds up the loop or anyone else. Backlogs are retried every
  loop pass. Past `slow_bytes` waiting or `slow_s` blocked the request fails: its backlog is replaced by one
  `slow_client` error final and `on_slow(key)` asks the scheduler to stop it. Finals are never dropped while
  the client is connected: it gets its one final when it reads again (or its connection goes away).
- EHOSTUNREACH: no such peer any more (the client closed its socket, died, or missed its heartbeats):
  `on_gone(key)` for each of that client's requests (the scheduler ends them with done reason client_gone), and
  nothing more is sent to it.

A generate request's flight lives until the scheduler's final has come AND a final went to the client (or could
not), so a reused id stays a duplicate until the old request has really ended.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from moed.clients import protocol

from .jobs import Key
from .logs import event

log = logging.getLogger(__name__)
FINALS = ("ok", "error")
MERGE_LIMIT = protocol.MAX_MESSAGE_BYTES // 4  # a merged chunk stays well inside one frame
MAX_ONCE_PER_CLIENT = 256  # control replies kept for a client that does not read
RECENT = 1024  # finished request ids remembered per daemon, for cancel's `cancelled: false`


def build(rid: str, seq: int, kind: str, body: dict[str, Any], v: int = protocol.HELLO_VERSION) -> dict[str, Any]:
    """A reply message from its kind and body, with the protocol's builders; `v` is its request's version (1 when
    unknown: every client speaks it)."""
    if kind == "progress":
        return protocol.progress(rid, seq, body["state"], body["position"], v=v)
    if kind == "chunk":
        return protocol.chunk(rid, seq, body["text"], body["tokens"], v=v)
    if kind == "ok":
        return protocol.ok(rid, seq, body, v=v)
    extra = {k: x for k, x in body.items() if k not in ("code", "message")}
    return protocol.error(rid, seq, body["code"], body["message"], v=v, **extra)


def _size(kind: str, body: dict[str, Any]) -> int:
    return len(body["text"].encode()) + 5 * len(body["tokens"]) if kind == "chunk" else 32


@dataclass
class Flight:
    """One generate request's replies on their way to the client."""

    backlog: deque[list[Any]] = field(default_factory=deque)  # [kind, body], oldest first, not yet sent
    seq: int = 0
    waiting_bytes: int = 0
    blocked_since: float | None = None
    scheduler_done: bool = False  # the scheduler's final has come
    client_done: bool = False  # a final was sent to the client, or cannot be
    failed: bool = False  # ended for slow_client by us
    v: int = protocol.HELLO_VERSION  # the request's protocol version, which its replies carry


class Outbox:
    def __init__(self, sock: zmq.Socket, on_gone: Callable[[Key], object], on_slow: Callable[[Key], object],
                 slow_bytes: int, slow_s: float):
        self._sock, self._on_gone, self._on_slow = sock, on_gone, on_slow
        self._slow_bytes, self._slow_s = slow_bytes, slow_s
        self._flights: dict[Key, Flight] = {}
        self._stuck: set[Key] = set()
        self._once: deque[tuple[bytes, bytes]] = deque()  # (client, frame): one-shot finals still to send
        self._recent: OrderedDict[Key, None] = OrderedDict()
        self.sent = 0

    # -- flights ----------------------------------------------------------------------------------------------
    def open(self, key: Key, v: int = protocol.HELLO_VERSION) -> None:
        self._flights[key] = Flight(v=v)

    def in_flight(self, key: Key) -> bool:
        return key in self._flights

    def streaming(self, key: Key) -> bool:
        """In flight and its client may still get replies for it."""
        f = self._flights.get(key)
        return f is not None and not f.client_done

    def recently_finished(self, key: Key) -> bool:
        return key in self._recent

    def close(self, key: Key) -> None:
        """Forget a flight at once (its request was refused before the scheduler took it)."""
        self._flights.pop(key, None)
        self._stuck.discard(key)

    def post(self, key: Key, kind: str, body: dict[str, Any]) -> None:
        """A reply from the scheduler for a request in flight."""
        f = self._flights.get(key)
        if f is None:
            return
        if kind in FINALS:
            f.scheduler_done = True
        if f.client_done or f.failed:  # gone, or already answered with slow_client: nothing more to send
            self._maybe_retire(key, f)
            return
        last = f.backlog[-1] if f.backlog else None
        if kind == "chunk" and last is not None and last[0] == "chunk" and f.waiting_bytes < MERGE_LIMIT:
            last[1] = {"text": last[1]["text"] + body["text"], "tokens": last[1]["tokens"] + body["tokens"]}
        elif kind == "progress" and last is not None and last[0] == "progress":
            last[1] = body
        else:
            f.backlog.append([kind, body])
        f.waiting_bytes += _size(kind, body)
        self._flush(key, f)

    def _flush(self, key: Key, f: Flight) -> None:
        while f.backlog:
            kind, body = f.backlog[0]
            outcome = self._send(key[0], protocol.pack(build(key[1], f.seq, kind, body, f.v)))
            if outcome == "again":
                if f.blocked_since is None:
                    f.blocked_since = time.monotonic()
                self._stuck.add(key)
                return
            if outcome == "gone":
                return
            f.backlog.popleft()
            f.seq += 1
            if kind in FINALS:
                f.client_done = True
                f.backlog.clear()
        f.waiting_bytes, f.blocked_since = 0, None
        self._stuck.discard(key)
        self._maybe_retire(key, f)

    def _maybe_retire(self, key: Key, f: Flight) -> None:
        if f.scheduler_done and f.client_done:
            self._flights.pop(key, None)
            self._stuck.discard(key)
            self._recent[key] = None
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)

    # -- one-shot finals (control requests, refusals, unattributable errors) -----------------------------------
    def send_once(self, client: bytes, rid: str | None, kind: str, body: dict[str, Any],
                  v: int = protocol.HELLO_VERSION) -> None:
        frame = protocol.pack(build(rid or "", 0, kind, body, v))
        if self._send(client, frame) == "again":
            if sum(1 for c, _ in self._once if c == client) >= MAX_ONCE_PER_CLIENT:
                event(log, logging.WARNING, "reply dropped", client=client.hex(), id=rid or "",
                      reason="the client has not read its earlier replies")
                return
            self._once.append((client, frame))

    # -- sending ------------------------------------------------------------------------------------------------
    def _send(self, client: bytes, frame: bytes) -> str:
        try:
            self._sock.send_multipart([client, frame], flags=zmq.NOBLOCK)
        except zmq.Again:
            return "again"
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self._client_gone(client)
            return "gone"
        self.sent += 1
        return "sent"

    def _client_gone(self, client: bytes) -> None:
        keys = [k for k in self._flights if k[0] == client]
        event(log, logging.INFO, "client gone", client=client.hex(), requests=len(keys))
        self._once = deque(x for x in self._once if x[0] != client)
        for key in keys:
            f = self._flights[key]
            f.backlog.clear()
            f.failed = f.client_done = True
            self._stuck.discard(key)
            if not f.scheduler_done:
                self._on_gone(key)
            self._maybe_retire(key, f)

    # -- the loop's periodic pass -------------------------------------------------------------------------------
    def retry(self) -> None:
        """Retry blocked replies; fail requests whose client is too slow (see the module docstring)."""
        now = time.monotonic()
        for key in list(self._stuck):
            f = self._flights.get(key)
            if f is None:
                self._stuck.discard(key)
                continue
            self._flush(key, f)
            if key in self._stuck:
                self._check_slow(key, f, now)
        for _ in range(len(self._once)):
            client, frame = self._once.popleft()
            if self._send(client, frame) == "again":
                self._once.append((client, frame))

    def _check_slow(self, key: Key, f: Flight, now: float) -> None:
        blocked = now - (f.blocked_since or now)
        if not f.failed and (f.waiting_bytes > self._slow_bytes or blocked > self._slow_s):
            event(log, logging.WARNING, "slow client", client=key[0].hex(), id=key[1],
                  waiting_bytes=f.waiting_bytes, blocked_s=round(blocked, 3))
            f.failed, f.blocked_since = True, now
            f.backlog = deque([["error", {"code": "slow_client", "message": (
                f"the client did not read its stream for {blocked:.1f} s ({f.waiting_bytes} bytes waiting); "
                f"the request was ended (read replies promptly, or use stream=false)")}]])
            f.waiting_bytes = 0
            if not f.scheduler_done:
                self._on_slow(key)

    # -- state ----------------------------------------------------------------------------------------------
    def busy(self) -> bool:
        """Replies are waiting for a slow client: the loop should poll again soon."""
        return bool(self._stuck or self._once)

    def open_keys(self) -> list[Key]:
        return list(self._flights)
