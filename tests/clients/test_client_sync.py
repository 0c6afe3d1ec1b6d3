"""The blocking Client behaves exactly like the AsyncClient it is generated from: same events, results and
exceptions for the same daemon script; breaking out of a `for` loop cancels; it works from several threads."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from fakedaemon import FakeDaemon, FakeRequest, Handler, arun, gen_result, slow_generate, wait_until
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients import AsyncClient, Chunk, Client, MoedError, RequestError, Result


def _error_mid_stream(r: FakeRequest) -> None:
    r.chunk("a")
    r.error("slow_client", "too slow")


SCRIPTS: dict[str, Handler | None] = {
    "default": None,
    "busy": lambda r: r.error("busy", "full", position=3),
    "error mid-stream": _error_mid_stream,
    "seq gap": lambda r: (r.chunk("a"), r.send({"v": 1, "id": r.id, "seq": 5, "type": "chunk", "text": "b",
                                                "tokens": [1]})),
    "silent": lambda r: r.progress("queued", 2),
    "length": lambda r: (r.chunk("x"), r.ok(gen_result("length", generated=1))),
}
CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "status": ("status", {}), "health": ("health", {}), "governor_get": ("governor_get", {}),
    "cancel": ("cancel", {"request_id": "nope"}), "shutdown": ("shutdown", {}),
}


def _outcome(result: Any = None, error: BaseException | None = None, events: list[Any] | None = None) -> Any:
    if isinstance(result, Result):
        result = dataclasses.replace(result, request_id="")  # ids differ between clients
    if error is not None:
        return ("error", type(error).__name__, getattr(error, "code", None), events)
    return ("ok", result, events)


def run_async_stream(endpoint: str, timeout: float) -> Any:
    async def main() -> Any:
        async with AsyncClient(endpoint, timeout=timeout) as c:
            stream, events = c.generate("hi"), []
            try:
                async for event in stream:
                    events.append(event)
            except MoedError as e:
                return _outcome(error=e, events=events)
            return _outcome(stream.result, events=events)

    return arun(main())


def run_sync_stream(endpoint: str, timeout: float) -> Any:
    with Client(endpoint, timeout=timeout) as c:
        stream, events = c.generate("hi"), []
        try:
            for event in stream:
                events.append(event)
        except MoedError as e:
            return _outcome(error=e, events=events)
        return _outcome(stream.result, events=events)


@pytest.mark.parametrize("script", SCRIPTS)
def test_streams_behave_the_same(fake: FakeDaemon, script: str):
    handler = SCRIPTS[script]
    if handler is not None:
        fake.on("generate", handler)
    timeout = 0.3 if script == "silent" else 10.0  # short only where the timeout is the point
    assert run_sync_stream(fake.endpoint, timeout) == run_async_stream(fake.endpoint, timeout)


@pytest.mark.parametrize("name", CALLS)
def test_unary_calls_behave_the_same(fake: FakeDaemon, name: str):
    method, kwargs = CALLS[name]

    async def via_async() -> Any:
        async with AsyncClient(fake.endpoint, timeout=10) as c:
            try:
                return _outcome(await getattr(c, method)(**kwargs))
            except MoedError as e:
                return _outcome(error=e)

    with Client(fake.endpoint, timeout=10) as c:
        try:
            sync = _outcome(getattr(c, method)(**kwargs))
        except MoedError as e:
            sync = _outcome(error=e)
    assert sync == arun(via_async())


def test_complete_and_signatures(fake: FakeDaemon):
    with Client(fake.endpoint, timeout=10) as c:
        assert c.complete("hi", max_tokens=4).text == "Hello world"
        assert c.chat_complete([{"role": "user", "content": "hi"}]).done_reason == "stop"
        with pytest.raises(RequestError):
            c.governor_set(mode="quiet")
    assert Client.status.__doc__ == AsyncClient.status.__doc__ and Client.status.__name__ == "status"


def test_breaking_out_of_a_for_loop_cancels(fake: FakeDaemon):
    fake.on("generate", slow_generate())
    with Client(fake.endpoint, timeout=10) as c:
        stream = c.generate("story")
        for event in stream:
            if isinstance(event, Chunk) and event.text == "t1 ":
                break
        assert stream.done
        wait_until(lambda: [r["params"]["target"] for r in fake.requests if r["type"] == "cancel"]
                   == [stream.request_id])


def test_with_block_and_explicit_cancel(fake: FakeDaemon):
    fake.on("generate", slow_generate())
    with Client(fake.endpoint, timeout=10) as c:
        with c.generate("story") as stream:
            assert isinstance(stream.next_event(), Chunk)
            assert stream.cancel() is True
            result = stream.collect()
        assert result.done_reason == "cancelled" and stream.result == result


def test_keyboard_interrupt_while_waiting_cancels_the_request(fake: FakeDaemon):
    fake.on("generate", lambda r: r.progress("queued", 0))  # then silence
    with Client(fake.endpoint, timeout=10) as c:
        stream = c.generate("hi")
        assert stream.next_event() is not None
        timer = threading.Timer(0.2, lambda: _interrupt_main())
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            for _ in stream:
                pass
        rid = stream.request_id
    wait_until(lambda: any(r["type"] == "cancel" and r["params"]["target"] == rid for r in fake.requests))


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


def test_one_client_from_several_threads(fake: FakeDaemon):
    fake.on("generate", slow_generate(n=5, interval=0.005))
    texts: list[str] = []
    with Client(fake.endpoint, timeout=5) as c:
        threads = [threading.Thread(target=lambda: texts.append(c.complete("x").text)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert texts == ["t0 t1 t2 t3 t4 "] * 4


def test_closed_client_raises(fake: FakeDaemon):
    c = Client(fake.endpoint, timeout=10)
    c.close()
    c.close()  # idempotent
    start = time.monotonic()
    with pytest.raises(MoedError, match="closed"):
        c.status()
    assert time.monotonic() - start < 1
