"""AsyncClient against a scripted fake daemon: streaming, results, several requests on one client, cancellation."""

from __future__ import annotations

import asyncio
import functools
import time

import pytest
from fakedaemon import FakeDaemon, FakeRequest, arun, gen_result, slow_generate, wait_until
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients import AsyncClient, Chunk, NotFound, Progress, Result, Timeout, protocol

HELLO_WORLD = [Progress("queued", 0), Progress("prefilling", 0), Chunk("Hello", (9,)), Chunk(" world", (10,))]


def test_stream_yields_events_then_result(fake: FakeDaemon):
    async def main() -> tuple[list[object], Result | None, str]:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            stream = c.generate("hi", max_tokens=5, temperature=0.5)
            seen = [event async for event in stream]
            return seen, stream.result, stream.request_id

    seen, result, rid = arun(main())
    assert seen == HELLO_WORLD
    assert result == Result(text="Hello world", done_reason="stop", prompt_tokens=3, generated_tokens=2,
                            queue_ns=1000, prefill_ns=2_000_000, decode_ns=4_000_000, total_ns=7_001_000,
                            cache_hits=30, cache_misses=10, bytes_read=123456, request_id=rid)
    assert result.decode_tps == pytest.approx(500.0) and result.hit_rate == pytest.approx(0.75)
    request = fake.requests[-1]
    assert request["id"] == rid and request["params"]["max_tokens"] == 5 and request["params"]["temperature"] == 0.5
    assert fake.types() == ["hello", "generate"]


def test_stream_false_takes_the_text_from_the_result(fake: FakeDaemon):
    async def main() -> tuple[list[object], Result]:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            stream = c.generate("hi", stream=False)
            seen = [event async for event in stream]
            assert stream.result is not None
            return seen, stream.result

    seen, result = arun(main())
    assert seen == HELLO_WORLD[:2] and result.text == "Hello world"


def test_complete_and_chat_complete(fake: FakeDaemon):
    async def main() -> tuple[Result, Result]:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
            return await c.complete("hi", seed=3), await c.chat_complete(messages, stop=["\n"])

    plain, chat = arun(main())
    assert plain.text == chat.text == "Hello world"
    assert fake.requests[1]["params"]["seed"] == 3
    assert fake.requests[2]["params"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert fake.requests[2]["params"]["stop"] == ["\n"] and fake.requests[2]["params"]["prompt"] is None


def interleave_two(fake: FakeDaemon) -> None:
    """A generate handler that waits for two requests, then answers them interleaved (B finishes first)."""
    pending: list[FakeRequest] = []

    def handler(req: FakeRequest) -> None:
        pending.append(req)
        if len(pending) == 2:
            a, b = pending
            for step in (lambda: a.progress("prefilling"), lambda: b.progress("queued", 1), lambda: a.chunk("a0"),
                         lambda: b.chunk("b0"), lambda: a.chunk("a1"), lambda: b.chunk("b1"),
                         lambda: b.ok(gen_result(generated=2)), lambda: a.chunk("a2"),
                         lambda: a.ok(gen_result("length", generated=3))):
                step()

    fake.on("generate", handler)


def test_two_streams_on_one_client_are_demultiplexed(fake: FakeDaemon):
    interleave_two(fake)

    async def read(stream: object) -> list[object]:
        return [event async for event in stream]  # type: ignore[attr-defined]

    async def main() -> None:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            a, b = c.generate("first"), c.generate("second")
            events_a, events_b, status = await asyncio.gather(read(a), read(b), c.status())
            assert [e.text for e in events_a if isinstance(e, Chunk)] == ["a0", "a1", "a2"]
            assert [e.text for e in events_b if isinstance(e, Chunk)] == ["b0", "b1"]
            assert events_b[0] == Progress("queued", 1) and events_a[0] == Progress("prefilling", 0)
            assert a.result and a.result.text == "a0a1a2" and a.result.done_reason == "length"
            assert b.result and b.result.text == "b0b1" and b.result.done_reason == "stop"
            assert status.state == "ready"
            assert not c.violations

    arun(main())


def test_breaking_out_of_the_loop_cancels_the_request(fake: FakeDaemon):
    fake.on("generate", slow_generate())

    async def main() -> str:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            stream = c.generate("tell me a long story")
            async for event in stream:
                if isinstance(event, Chunk) and event.text == "t2 ":
                    break
            await asyncio.sleep(0.2)  # the loop closes the generator; its finally sends cancel
            assert stream.done and stream.result is None
            assert not c.violations  # the chunks still in flight after the cancel are dropped quietly
            return stream.request_id

    rid = arun(main())
    cancels = [r for r in fake.requests if r["type"] == "cancel"]
    assert [r["params"]["target"] for r in cancels] == [rid]


def test_leaving_async_with_cancels(fake: FakeDaemon):
    fake.on("generate", slow_generate())

    async def main() -> str:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            async with c.generate("story") as stream:
                assert isinstance(await stream.__anext__(), Chunk)
            return stream.request_id

    rid = arun(main())
    wait_until(lambda: any(r["type"] == "cancel" and r["params"]["target"] == rid for r in fake.requests))


def test_explicit_cancel_ends_the_stream_with_done_reason_cancelled(fake: FakeDaemon):
    fake.on("generate", slow_generate())

    async def main() -> Result:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            stream = c.generate("story")
            await stream.__anext__()
            assert await stream.cancel() is True
            result = await stream.collect()
            assert await stream.cancel() is False  # too late: already over
            return result

    result = arun(main())
    assert result.done_reason == "cancelled" and result.text.startswith("t0 ")


def test_cancel_of_an_unknown_request_raises_not_found(fake: FakeDaemon):
    async def main() -> None:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            with pytest.raises(NotFound) as e:
                await c.cancel("nope")
            assert e.value.code == "not_found"

    arun(main())


def test_progress_keeps_a_queued_stream_alive_past_the_silence_limit(fake: FakeDaemon):
    def handler(req: FakeRequest) -> None:  # 16 progress frames 0.05 s apart: 0.8 s in all, timeout 0.5 s
        for i in range(16):
            req.later(0.05 * i, functools.partial(req.progress, "queued", 15 - i))
        req.later(0.8, lambda: (req.chunk("done"), req.ok(gen_result())))

    fake.on("generate", handler)

    async def main() -> Result:
        async with AsyncClient(fake.endpoint, timeout=0.5) as c:
            return await c.complete("hi")

    assert arun(main()).text == "done"


def test_the_silence_limit_counts_from_the_last_reply(fake: FakeDaemon):
    """The deadline timer is armed once per call and moved on lazily: it must neither fire at the deadline of the
    first wait (the chunks kept the stream alive) nor miss the silence after the last chunk."""
    def handler(req: FakeRequest) -> None:  # 10 chunks 0.05 s apart (0.45 s), then silence; timeout 0.3 s
        for i in range(10):
            req.later(0.05 * i, functools.partial(req.chunk, "x"))

    fake.on("generate", handler)

    async def main() -> tuple[float, str, float]:
        async with AsyncClient(fake.endpoint, timeout=0.3) as c:
            stream = c.generate("hi")
            start, last = time.monotonic(), 0.0
            with pytest.raises(Timeout):
                async for _ in stream:
                    last = time.monotonic()
            return last - start, stream.text, time.monotonic() - last

    spent, text, silence = arun(main())
    assert text == "x" * 10 and spent > 0.3  # the chunks outlived the first wait's deadline
    assert 0.25 < silence < 5  # loose above: test machines may be loaded


def test_unary_calls(fake: FakeDaemon):
    async def main() -> None:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            hello = await c.hello()
            assert hello.version == protocol.VERSION and hello.limits["max_message_bytes"] == 1 << 20
            assert c.server == hello
            assert (await c.health()).ok
            status = await c.status()
            assert (status.max_batch, status.queue_limit, status.cache["hits"]) == (4, 64, 3)
            assert await c.shutdown() == {}

    arun(main())
    assert fake.types() == ["hello", "hello", "health", "status", "shutdown"]
    assert fake.requests[0]["params"] == {"versions": list(protocol.SUPPORTED_VERSIONS), "client": "moed-client"}
    v = protocol.VERSION
    assert [r["v"] for r in fake.requests] == [1, 1, v, v, v]  # hello in version 1, the rest in the one agreed


def test_a_first_request_may_use_the_newest_params_and_goes_out_in_the_negotiated_version(fake: FakeDaemon):
    # a fresh client frames its first generate before hello has settled a version: it is checked against the newest
    # version this client speaks, then sent in the version hello settled on
    async def main() -> Result:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            return await c.complete("hi", speculate=False)

    assert arun(main()).text == "Hello world"
    sent = fake.requests[-1]
    assert sent["type"] == "generate" and sent["params"]["speculate"] is False
    assert sent["v"] == max(protocol.SUPPORTED_VERSIONS)


def test_a_param_newer_than_the_daemon_raises_naming_the_version_it_needs(fake: FakeDaemon):
    def old_hello(req: FakeRequest) -> None:  # a daemon that speaks up to version 2
        req.ok({"version": 2, "server": "fake/old", "model_type": "qwen3_moe", "limits": dict(protocol.LIMITS)})

    fake.on("hello", old_hello)

    async def main() -> None:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            await c.complete("hi", speculate=False)

    from moed.clients import InvalidParams

    with pytest.raises(InvalidParams, match="version 3"):
        arun(main())
    assert fake.types() == ["hello"]  # nothing the daemon would refuse was sent
