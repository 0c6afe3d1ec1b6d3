"""Stream: one generate request seen from the client, an async iterable of Progress and Chunk events.

It is created by AsyncClient.generate / chat (the request is checked then, and sent on first use). A Stream
knows its client only through the small `Exchange` interface below (AsyncClient implements it), and its request in
flight only as a `Call`: so this module imports nothing from aio.py, and aio.py imports it. Leaving early in any way
(break, an exception, `async with` exit, aclose) abandons the call, which sends `cancel` for the request, so a
client that stops reading frees its slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from . import errors
from .errors import MoedError, NotFound
from .events import Chunk, Event, Result, event_from_wire


class Call(Protocol):
    """One request in flight, as an Exchange hands it to a Stream."""

    async def reply(self, timeout: float | None) -> dict[str, Any]:
        """The request's next reply (a checked wire message), waiting at most `timeout` seconds (None: the
        client's default). Raises Timeout, DaemonUnavailable or ProtocolViolation."""
        ...

    async def abandon(self) -> None:
        """Stop reading: later replies are dropped, and the daemon is asked (without waiting) to cancel."""
        ...

    def pending(self) -> int:
        """Replies that have arrived and not been read yet (reply() returns them without waiting)."""
        ...


class Exchange(Protocol):
    """What a Stream needs from its client: frame a request, send it, cancel it. AsyncClient is one."""

    def new_request(self, type_: str, params: dict[str, Any]) -> tuple[str, bytes]:
        """A fresh request id and the packed request, checked as the daemon will check it (raises InvalidParams)."""
        ...

    async def send_request(self, request_id: str, type_: str, frame: bytes, *, timeout: float | None) -> Call:
        """Connect if need be (within `timeout`), send `frame`, and return the Call its replies come to."""
        ...

    async def cancel(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Ask the daemon to cancel the request; True if it was still running. Raises NotFound if not in flight."""
        ...


class Stream:
    """One generate request: an async iterable of Progress and Chunk events; `.result` once the final came.

    Iterate with `async for` (breaking out, or an exception, cancels the request on the daemon), or use
    `async with client.generate(...) as s:` to be sure it is cancelled on exit. `collect()` reads to the end.
    """

    request_id: str  # the id the daemon knows the request by (for cancel, and in its logs)
    result: Result | None  # the Result once the final came

    def __init__(self, client: Exchange, params: dict[str, Any], timeout: float | None) -> None:
        self.request_id, self._frame = client.new_request("generate", params)  # raises InvalidParams now
        self.result: Result | None = None
        self._client, self._params, self._timeout = client, params, timeout
        self._call: Call | None = None
        self._started = False
        self._chunks: list[str] = []
        self._over = False  # the final came, the request failed, or the stream was closed

    @property
    def text(self) -> str:
        """The text streamed so far."""
        return "".join(self._chunks)

    @property
    def ready(self) -> bool:
        """True when next_event() has an event (or the final, or a failure) that arrived already, so it returns
        without waiting: a reader can take what is there in one go (the HTTP gateway writes it as one)."""
        return self._call is not None and not self._over and self._call.pending() > 0

    @property
    def done(self) -> bool:
        """True once nothing more will come (final received, failed or closed)."""
        return self._over

    async def start(self) -> None:
        """Send the request (connecting first); iteration does this itself."""
        if self._started or self._over:
            return
        self._started = True  # before the first await: a concurrent start() must not send it twice
        self._call = await self._client.send_request(self.request_id, "generate", self._frame, timeout=self._timeout)

    async def next_event(self) -> Event | None:
        """The next event, or None once the final has come (then `result` is set). Error finals raise."""
        try:
            if not self._started:
                await self.start()
            if self._over or self._call is None:
                return None
            msg = await self._call.reply(self._timeout)
        except BaseException:
            await self.aclose()
            raise
        if msg["type"] != "final":
            event = event_from_wire(msg)
            if isinstance(event, Chunk):
                self._chunks.append(event.text)
            return event
        self._over = True
        if msg["status"] == "error":
            raise errors.from_wire(msg["error"], self.request_id)
        streamed = self.text if self._params.get("stream", True) else None
        self.result = Result.from_wire(msg["result"], streamed, self.request_id)
        return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        # An async generator: when `async for` breaks, the event loop closes it, and `finally` cancels.
        try:
            while (event := await self.next_event()) is not None:
                yield event
        finally:
            await self.aclose()

    async def __anext__(self) -> Event:
        event = await self.next_event()
        if event is None:
            raise StopAsyncIteration
        return event

    async def collect(self) -> Result:
        """Read to the end; returns the Result (text and stats)."""
        while await self.next_event() is not None:
            pass
        if self.result is None:
            raise MoedError(f"stream {self.request_id} was closed before its final")
        return self.result

    async def cancel(self) -> bool:
        """Ask the daemon to stop; keep reading to get the final (done_reason cancelled). False if too late."""
        if self._call is None:  # never sent: nothing to cancel on the daemon
            self._over = True
            return False
        if self._over:
            return False
        try:
            return await self._client.cancel(self.request_id, timeout=self._timeout)
        except NotFound:
            return False  # the final crossed our cancel on the wire

    async def aclose(self) -> None:
        """Stop reading; if the final has not come, cancel the request on the daemon (not waiting for it)."""
        if self._over:
            return
        self._over = True
        if self._call is not None:
            await self._call.abandon()

    async def __aenter__(self) -> Stream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
