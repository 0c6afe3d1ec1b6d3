"""The gateway's side of the daemon: one AsyncClient shared by every HTTP request, a recent status snapshot, the
served model's name, and Generation, one daemon `generate` request seen through admission.

How it runs: every HTTP request is a request on the one DEALER connection of the shared AsyncClient (the protocol
lets a connection have many in flight). A Generation is admitted before any HTTP header is sent: it waits for
the daemon's first reply (progress, a chunk or an error final), so a full queue or a bad parameter still becomes
an HTTP status code. Closing a Generation before its final (the HTTP client went away, the handler was
cancelled) cancels the request on the daemon, which frees its batch slot at the next step.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from pathlib import PurePath
from typing import Any

from ..aio import AsyncClient
from ..errors import MoedError
from ..events import Chunk, Event, Result, Status
from ..stream import Stream
from .config import GatewayConfig
from .errors import ApiError, from_moed

_STATUS_TIMEOUT_S = 5.0


class Upstream:
    """The daemon as the gateway sees it. Create and use on the gateway's event loop."""

    def __init__(self, config: GatewayConfig) -> None:
        self.client = AsyncClient(config.endpoint, timeout=config.timeout_s, name="moed-gateway",
                                  curve=config.curve)
        self._model_name = config.model_name
        self._max_age = config.status_max_age_s
        self._status: Status | None = None
        self._status_at = -math.inf  # loop time of the last good status
        self._fresh = False  # whether the last status request succeeded
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None  # a status request started behind a generation's back

    @property
    def snapshot(self) -> tuple[Status | None, bool]:
        """The latest status the daemon sent (None before the first) and whether the last request for it succeeded."""
        return self._status, self._fresh

    async def status(self) -> Status:
        """A status at most status_max_age_s old. Raises ApiError (503) when the daemon does not answer."""
        loop = asyncio.get_running_loop()
        async with self._lock:  # one status request at a time: a burst of HTTP requests shares it
            if self._status is not None and self._fresh and loop.time() - self._status_at < self._max_age:
                return self._status
            try:
                self._status = await self.client.status(timeout=_STATUS_TIMEOUT_S)
            except MoedError as e:
                self._fresh = False
                raise from_moed(e) from None
            self._status_at, self._fresh = loop.time(), True
            return self._status

    async def _naming_status(self) -> Status:
        """A status to take the model's name from, without a daemon round trip on a request's way when one is at
        hand: the last good one, refreshed in the background once older than status_max_age_s (the name changes
        only when the daemon restarts on another store). The first one, or after a failed request, is awaited."""
        if self._status is None or not self._fresh:
            return await self.status()
        loop = asyncio.get_running_loop()
        if loop.time() - self._status_at >= self._max_age and (self._refresh is None or self._refresh.done()):
            self._refresh = loop.create_task(self._refresh_status())
        return self._status

    async def _refresh_status(self) -> None:
        try:
            await self.status()
        except ApiError:
            pass  # _fresh is False now: the next request waits for a status itself

    def model_id(self, status: Status) -> str:
        """The served model's name: the configured one, else the store folder's name, else the model type."""
        return self._model_name or PurePath(status.store).name or status.model_type or "moed"

    async def resolve_model(self, requested: Any, *, aliases: tuple[str, ...] = ()) -> str:
        """Check that `requested` names the served model (or `<name><alias>` for an alias suffix such as
        `:latest`); return the served name. Raises ApiError: 400 when missing, 404 when another model, 503 when
        the daemon has not answered a status request yet."""
        if not isinstance(requested, str) or not requested:
            raise ApiError(400, "`model` is required: the name of the served model (see /v1/models or /api/tags)",
                           param="model", code="missing_model")
        served = self.model_id(await self._naming_status())
        if requested not in (served, *(served + a for a in aliases)):
            raise ApiError(404, f"model {requested!r} is not served here; this gateway serves {served!r}",
                           param="model", code="model_not_found")
        return served

    async def context_length(self) -> int | None:
        """The model's context length as the daemon's hello reported it, if it did."""
        try:
            hello = self.client.server or await self.client.hello(timeout=_STATUS_TIMEOUT_S)
        except MoedError as e:
            raise from_moed(e) from None
        value = hello.limits.get("context_length")
        return value if isinstance(value, int) else None

    async def generate(self, params: dict[str, Any], rename: Mapping[str, str] | None = None) -> Generation:
        """Start a generate request (params as in docs/protocol.md, `stream` is forced on) and wait until the
        daemon admitted it. Raises ApiError when it refused (busy 503, invalid 400, ...)."""
        return await Generation.start(self.client, params, rename)

    async def close(self) -> None:
        """Close the connection, after one round trip: replies come in order, so once it is answered the daemon
        has every cancel sent for the streams cut at shutdown (closing drops unsent messages: LINGER is 0)."""
        if self._refresh is not None:
            self._refresh.cancel()
        if self.client.server is not None:
            try:
                await self.client.health(timeout=1.0)
            except MoedError:
                pass  # the daemon is gone: nothing to flush
        await self.client.close()


class Generation:
    """One admitted daemon generate request: `texts()` yields its text pieces as they come, `result` follows."""

    def __init__(self, stream: Stream, first: Event | None, rename: Mapping[str, str] | None) -> None:
        self._stream, self._first, self._rename = stream, first, rename

    @classmethod
    async def start(cls, client: AsyncClient, params: dict[str, Any],
                    rename: Mapping[str, str] | None = None) -> Generation:
        wire = {k: v for k, v in params.items() if k not in ("prompt", "messages")}
        wire["stream"] = True  # always streamed: the silence deadline then never has to cover a whole generation
        stream: Stream | None = None
        try:
            if params.get("messages") is not None:
                stream = client.chat(params["messages"], **wire)
            else:
                stream = client.generate(params.get("prompt"), **wire)  # type: ignore[arg-type]  # checked there
            first = await stream.next_event()
        except MoedError as e:
            if stream is not None:
                await stream.aclose()
            raise from_moed(e, rename) from None
        return cls(stream, first, rename)

    @property
    def request_id(self) -> str:
        return self._stream.request_id

    @property
    def result(self) -> Result:
        """The daemon's final result; only after texts() is exhausted."""
        if self._stream.result is None:
            raise RuntimeError("the generation has not finished")
        return self._stream.result

    async def texts(self) -> AsyncIterator[str]:
        """The generated text, piece by piece as the daemon streams it (empty pieces skipped). Raises ApiError when
        the request fails part-way."""
        async for pieces in self.batches():
            for text in pieces:
                yield text

    async def batches(self) -> AsyncIterator[list[str]]:
        """The generated text as lists of pieces: each list holds every piece that had arrived when the reader
        came for more (one piece while the reader keeps up; several after it fell behind, which it can then send
        in one write). Never an empty list. Raises ApiError when the request fails part-way."""
        event, self._first = self._first, None
        batch: list[str] = []
        error: ApiError | None = None
        try:
            while event is not None:
                if isinstance(event, Chunk) and event.text:
                    batch.append(event.text)
                if batch and not self._stream.ready:
                    yield batch
                    batch = []
                event = await self._stream.next_event()
        except MoedError as e:
            error = from_moed(e, self._rename)
        if batch:  # what came before the end (or the failure) goes out first
            yield batch
        if error is not None:
            raise error
        reason = self.result.done_reason
        if reason not in ("stop", "length"):  # cut short: not an answer a client should take as complete
            raise ApiError(503 if reason == "shutdown" else 500,
                           f"the daemon ended the generation early (done reason {reason!r})",
                           "server_error", None, reason, 5 if reason == "shutdown" else None)

    async def collect(self) -> Result:
        """Read to the end; the Result carries the whole text."""
        async for _ in self.texts():
            pass
        return self.result

    async def aclose(self) -> None:
        """Stop; cancels the request on the daemon if its final has not come."""
        await self._stream.aclose()

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
