"""moed.clients: the Python client library of the moed daemon, moectl, and the wire protocol (no MLX).

    from moed.clients import AsyncClient, Chunk, Client, MoedError

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

docs/clients.md is the guide. The names below load on first use (module `__getattr__`): `import moed.clients`, or
`moed.clients.protocol` (which the daemon uses), loads neither pyzmq nor the client machinery.

Layout: aio.py (AsyncClient: the core), stream.py (Stream, and the Exchange interface it needs from a client),
sync.py (Client, SyncStream: generated from the async ones), events.py (typed events and results), errors.py (the
exception hierarchy), endpoints.py (where the daemon listens), protocol.py (the wire format, docs/protocol.md),
cli.py (moectl).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["AsyncClient"], "aio"),
    **dict.fromkeys(["Client", "SyncStream"], "sync"),
    **dict.fromkeys(["Stream"], "stream"),
    **dict.fromkeys(["Event", "Progress", "Chunk", "Result", "Status", "Health", "Hello", "RequestInfo"], "events"),
    **dict.fromkeys(["MoedError", "DaemonUnavailable", "Timeout", "ProtocolViolation", "RequestError", "Busy",
                     "InvalidParams", "ContextOverflow", "NotFound", "NotAvailable", "Loading", "ShuttingDown",
                     "UnsupportedVersion"], "errors"),
    **dict.fromkeys(["default_endpoint", "runtime_dir"], "endpoints"),
}

__all__ = [
    "AsyncClient", "Client", "Stream", "SyncStream",
    "Event", "Progress", "Chunk", "Result", "Status", "Health", "Hello", "RequestInfo",
    "MoedError", "DaemonUnavailable", "Timeout", "ProtocolViolation", "RequestError", "Busy", "InvalidParams",
    "ContextOverflow", "NotFound", "NotAvailable", "Loading", "ShuttingDown", "UnsupportedVersion",
    "default_endpoint", "runtime_dir",
]


def __getattr__(name: str) -> Any:
    """Import an exported name from its submodule on first use (then it is an ordinary module attribute)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
