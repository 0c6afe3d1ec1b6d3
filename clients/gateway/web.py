"""What the OpenAI and Ollama routes share: the application's keys, JSON bodies, and EventStream, a streaming
HTTP response of JSON events (server-sent events for OpenAI, NDJSON lines for Ollama) written through aiohttp's
StreamResponse."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

from .config import GatewayConfig
from .errors import invalid
from .metrics import Metrics
from .upstream import Upstream

CONFIG = web.AppKey("config", GatewayConfig)
UPSTREAM = web.AppKey("upstream", Upstream)
METRICS = web.AppKey("metrics", Metrics)
STARTED = web.AppKey("started", float)  # unix time the gateway started: the model's `created`


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body. Raises ApiError 400 when it is not one; aiohttp raises 413 past the size
    limit (the error middleware answers it in the API's shape)."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # json nests by recursion: `[[[[...` a few thousand deep, well under the size limit
        raise invalid("the request body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", code="invalid_json")
    return body


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one instance: json.dumps with these
# arguments would build a new encoder per call, which is most of the cost of a small event


def dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def template(build: Callable[..., Any], holes: int = 1) -> Callable[..., str]:
    """A fast renderer of one JSON event shape: `build(*holes)` makes the object with `holes` string fields; the
    renderer takes those strings and gives exactly `dumps(build(*values))`, by splicing each value's JSON string
    between fixed parts worked out once (per streamed piece only the text is encoded, not the whole object)."""
    marks = [f"\x00{uuid.uuid4().hex}" for _ in range(holes)]  # a value no id, model or name can contain
    rest, parts = dumps(build(*marks)), []
    for mark in marks:
        head, found, rest = rest.partition(dumps(mark))
        if not found:
            raise ValueError("template: a hole is not a string value of the built object")
        parts.append(head)
    encode, last = _ENCODER.encode, rest
    if holes == 1:
        first = parts[0]
        return lambda value: first + encode(value) + last
    return lambda *values: "".join(p + encode(v) for p, v in zip(parts, values, strict=True)) + last


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(obj), status=status, content_type="application/json")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def unix_now() -> int:
    return int(time.time())


class EventStream:
    """A streamed response: each `send(obj)` writes one JSON event and flushes it to the client at once;
    `frame()` and `write()` let a caller put several events that are ready together into one write, and
    `close(last)` sends the last events with the end of the response.

    kind `sse`: `data: <json>` blocks (text/event-stream); kind `ndjson`: one JSON object per line. A write to a
    client that has gone raises ConnectionResetError, which ends the handler (and so its daemon request)."""

    def __init__(self, request: web.Request, kind: Literal["sse", "ndjson"]) -> None:
        self._request, self._kind = request, kind
        content_type = "text/event-stream" if kind == "sse" else "application/x-ndjson"
        self.response = web.StreamResponse(headers={
            "Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})  # a proxy that honours it must not hold events back

    async def open(self) -> None:
        await self.response.prepare(self._request)

    def frame(self, text: str) -> bytes:
        """One event (its JSON text) as it goes on the wire."""
        return f"data: {text}\n\n".encode() if self._kind == "sse" else f"{text}\n".encode()

    async def send(self, obj: Any) -> None:
        await self.response.write(self.frame(dumps(obj)))

    async def write(self, data: bytes) -> None:
        """Write framed events (one or several joined) in one go."""
        await self.response.write(data)

    async def close(self, last: bytes = b"") -> web.StreamResponse:
        """End the response; `last` (framed events) goes out in the same write as the end."""
        await self.response.write_eof(last)
        return self.response
