"""The moed client library: import everything from here. Needs only pyzmq and msgpack (no MLX).

    from moed.clients.client import Client, AsyncClient

    with Client() as c:                                # default endpoint: endpoints.default_endpoint()
        print(c.status().state)
        for event in c.generate("Once upon a time", max_tokens=64):
            if isinstance(event, Chunk):
                print(event.text, end="", flush=True)  # breaking out of the loop cancels the request
        r = c.complete("2 + 2 =", max_tokens=8)        # Result: r.text, r.done_reason, r.decode_tps, ...

    async with AsyncClient(timeout=10) as c:
        async with c.chat([{"role": "user", "content": "hi"}]) as stream:
            async for event in stream:
                ...
            print(stream.result)

Layout: aio.py (AsyncClient: the core), stream.py (Stream), sync.py (Client, SyncStream: generated from the async
ones), events.py (typed events and results), errors.py (the exception hierarchy), endpoints.py (where the daemon
listens), protocol.py (the wire format, docs/protocol.md), cli.py (moectl).
"""

from .aio import AsyncClient
from .endpoints import default_endpoint, runtime_dir
from .errors import (
    Busy,
    ContextOverflow,
    DaemonUnavailable,
    InvalidParams,
    Loading,
    MoedError,
    NotAvailable,
    NotFound,
    ProtocolViolation,
    RequestError,
    ShuttingDown,
    Timeout,
    UnsupportedVersion,
)
from .events import Chunk, Event, Health, Hello, Progress, Result, Status
from .stream import Stream
from .sync import Client, SyncStream

__all__ = [
    "AsyncClient", "Client", "Stream", "SyncStream",
    "Event", "Progress", "Chunk", "Result", "Status", "Health", "Hello",
    "MoedError", "DaemonUnavailable", "Timeout", "ProtocolViolation", "RequestError", "Busy", "InvalidParams",
    "ContextOverflow", "NotFound", "NotAvailable", "Loading", "ShuttingDown", "UnsupportedVersion",
    "default_endpoint", "runtime_dir",
]
