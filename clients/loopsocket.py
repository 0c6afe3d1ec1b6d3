"""LoopSocket: a ZeroMQ socket's messages handed to a callback from the asyncio loop, a burst in one call.

How it runs: one reader callback on the socket's file descriptor (ZeroMQ signals on it that the socket's EVENTS
changed, edge-triggered). Each time it fires it reads EVENTS and receives a message while EVENTS says one is there
(plain non-blocking calls), handing each to `on_message(frames)`: a burst in one callback. `send()` sends without
waiting, and waits only while the socket cannot take the message (its high-water mark), in line, until EVENTS
says it can.

Why not zmq.asyncio's recv: it makes a Future per message and reads EVENTS five to seven times per wake-up through
pyzmq's Python option layer; on the gateway's hot path (one message per streamed token) that was a fifth of the
gateway's CPU per token (docs/gateway.md, Overhead). The zmq.asyncio socket stays the owner (options, monitor,
close); this drives a plain shadow of it, and its own async methods must not be used meanwhile (their reader would
replace this one).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import zmq
import zmq.asyncio

# zmq's constants are enum.Flag members, whose `&` runs Python code: plain ints on the hot path
_NOBLOCK, _RCVMORE, _EVENTS = int(zmq.NOBLOCK), int(zmq.RCVMORE), int(zmq.EVENTS)
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)


class LoopSocket:
    """Drives `owner` (a zmq.asyncio socket) on the running loop; see the module docstring."""

    def __init__(self, owner: zmq.asyncio.Socket, on_message: Callable[[list[bytes]], None]) -> None:
        self._sock: zmq.Socket[bytes] = zmq.Socket.shadow(owner.underlying)
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._fd = self._sock.get(zmq.FD)
        self._writable: deque[asyncio.Future[None]] = deque()  # senders waiting for room, in order
        self._turn = False  # a waiting sender was woken and has not tried yet: wake no other before it
        self._closed = False
        self._loop.add_reader(self._fd, self._on_events)
        self._loop.call_soon(self._on_events)  # anything that came before the reader was there

    async def send(self, frame: bytes) -> None:
        """Send one frame. Waits only while the socket is at its high-water mark, in line behind sends that wait
        already, so frames go out in the order of the calls. Raises zmq.ZMQError (also when closed meanwhile)."""
        woken = False
        while True:
            if self._closed:
                raise zmq.ZMQError(zmq.ENOTSOCK, "the socket is closed")
            if woken or not self._writable:
                try:
                    self._sock.send(frame, _NOBLOCK)
                    break
                except zmq.Again:
                    pass
            waiter = self._loop.create_future()
            if woken:
                self._writable.appendleft(waiter)  # still first in line
            else:
                self._writable.append(waiter)
            self._loop.call_soon(self._on_events)  # room may have come back before the waiter was there
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # it was this one's turn: pass it on
                    self._turn = False
                    self._loop.call_soon(self._on_events)
                raise
            self._turn, woken = False, True
        # The next in line may go too; and a send lets ZeroMQ process its pending commands, which can take in
        # replies without another signal on the descriptor: look now, or they would wait for the next message.
        self._loop.call_soon(self._on_events)

    def close(self) -> None:
        """Stop reading and wake waiting senders (they raise); the owner closes the socket itself, after this."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        waiters, self._writable = self._writable, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_events(self) -> None:
        sock = self._sock
        try:
            while not self._closed:
                events = sock.get(_EVENTS)
                if events & _POLLOUT and self._writable and not self._turn:
                    self._wake_next_sender()
                if not events & _POLLIN:
                    return
                try:
                    frames = [sock.recv(_NOBLOCK)]
                    while sock.get(_RCVMORE):
                        frames.append(sock.recv(_NOBLOCK))
                except zmq.Again:
                    continue  # POLLIN promises a whole message; should it not be there, look again
                self._on_message(frames)
        except zmq.ZMQError:  # the socket was closed under us: nothing more will come
            self.close()

    def _wake_next_sender(self) -> None:
        while self._writable:
            waiter = self._writable.popleft()
            if not waiter.done():  # done: its sender was cancelled
                waiter.set_result(None)
                self._turn = True
                return
