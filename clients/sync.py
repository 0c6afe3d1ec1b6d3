"""Client: the blocking moed client, generated from AsyncClient.

How it runs: each Client owns a private event loop in a background (daemon) thread, and an AsyncClient that
lives on it, so the socket stays on one thread. Every blocking method is made by `_blocking` from the async
method of the same name and runs that coroutine on the loop; behaviour, deadlines and exceptions are the async
client's. Streams are wrapped in SyncStream, a plain iterator; breaking out of a `for` loop over it (or
KeyboardInterrupt) cancels the request on the daemon, like the async one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from .aio import AsyncClient
from .errors import MoedError
from .events import Event, Result
from .keys import ClientKey
from .stream import Stream

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]
              ) -> Callable[Concatenate[Client, P], R]:
    """The blocking twin of an AsyncClient coroutine method (same signature, docstring and behaviour)."""

    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._async, *args, **kwargs))

    run.__name__, run.__qualname__, run.__doc__ = method.__name__, f"Client.{method.__name__}", method.__doc__
    return run


class Client:
    """A blocking client of the moed daemon (see AsyncClient for the semantics). Use `with Client() as c:`."""

    def __init__(self, endpoint: str | None = None, *, timeout: float = 30.0, name: str = "moed-client",
                 curve: ClientKey | None = None) -> None:
        self._async = AsyncClient(endpoint, timeout=timeout, name=name, curve=curve)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moed-client-loop", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return self._async.endpoint

    @property
    def timeout(self) -> float:
        return self._async.timeout

    @property
    def async_client(self) -> AsyncClient:
        """The AsyncClient underneath (its coroutines must run on this client's loop thread)."""
        return self._async

    hello = _blocking(AsyncClient.hello)
    status = _blocking(AsyncClient.status)
    health = _blocking(AsyncClient.health)
    shutdown = _blocking(AsyncClient.shutdown)
    clear_quarantine = _blocking(AsyncClient.clear_quarantine)
    cancel = _blocking(AsyncClient.cancel)
    cancel_job = _blocking(AsyncClient.cancel_job)
    ps = _blocking(AsyncClient.ps)
    governor_get = _blocking(AsyncClient.governor_get)
    governor_set = _blocking(AsyncClient.governor_set)
    complete = _blocking(AsyncClient.complete)
    chat_complete = _blocking(AsyncClient.chat_complete)

    def generate(self, prompt: str, *, timeout: float | None = None, **params: Any) -> SyncStream:
        """Start a completion of `prompt`; iterate the returned SyncStream for events. See AsyncClient.generate."""
        return SyncStream(self, self._async.generate(prompt, timeout=timeout, **params))

    def chat(self, messages: Sequence[Mapping[str, str]], *, timeout: float | None = None,
             **params: Any) -> SyncStream:
        """Start a chat completion of `messages`. See AsyncClient.chat."""
        return SyncStream(self, self._async.chat(messages, timeout=timeout, **params))

    def close(self) -> None:
        """Close the async client and stop the loop thread. Idempotent."""
        if not self._thread.is_alive():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run a coroutine on the loop thread and wait for it; an interrupt here cancels it there."""
        if not self._thread.is_alive():
            coro.close()
            raise MoedError("the client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise MoedError("a blocking Client method was called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            while not future.done():  # wake up now and then: a signal taken by another thread cannot end a wait
                concurrent.futures.wait([future], timeout=0.1)
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt: stop the coroutine (a stream then cancels its request)
            raise


class SyncStream:
    """A generate request as a blocking iterator of Progress / Chunk events; `.result` once the final came."""

    def __init__(self, client: Client, stream: Stream) -> None:
        self._client, self._stream = client, stream

    @property
    def request_id(self) -> str:
        return self._stream.request_id

    @property
    def result(self) -> Result | None:
        return self._stream.result

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def done(self) -> bool:
        return self._stream.done

    def __iter__(self) -> Iterator[Event]:
        # a generator: breaking out of `for` closes it, and `finally` cancels the request
        try:
            while (event := self._client._run(self._stream.next_event())) is not None:
                yield event
        finally:
            self.close()

    def __next__(self) -> Event:
        event = self._client._run(self._stream.next_event())
        if event is None:
            raise StopIteration
        return event

    def next_event(self) -> Event | None:
        """The next event, or None once the final has come."""
        return self._client._run(self._stream.next_event())

    def collect(self) -> Result:
        """Read to the end and return the Result."""
        return self._client._run(self._stream.collect())

    def cancel(self) -> bool:
        """Ask the daemon to stop; keep reading for the final (done_reason cancelled)."""
        return self._client._run(self._stream.cancel())

    def close(self) -> None:
        """Stop reading and cancel the request if it is still running."""
        if self._stream.done or not self._client._thread.is_alive():
            return
        if threading.current_thread() is self._client._thread:  # finalised on the loop thread: cannot block
            self._client._loop.create_task(self._stream.aclose())
            return
        self._client._run(self._stream.aclose())

    def __enter__(self) -> SyncStream:
        self._client._run(self._stream.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
