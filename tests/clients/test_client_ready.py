"""Replies that have arrived already: Stream.ready says so, and next_event() hands them over without waiting for
the event loop (a burst of replies is read in one go), in order, through the final."""

from __future__ import annotations

import asyncio

from fakedaemon import FakeDaemon, FakeRequest, arun, gen_result
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients import AsyncClient, Chunk


def _burst(req: FakeRequest) -> None:
    for i in range(5):
        req.chunk(f"t{i}", [i])
    req.ok(gen_result("length", 5))


def test_ready_replies_are_read_without_waiting(fake: FakeDaemon):
    fake.on("generate", _burst)

    async def main() -> tuple[list[bool], list[object], bool]:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            stream = c.generate("hi")
            assert not stream.ready  # not sent yet
            first = await stream.next_event()
            while stream._call.pending() < 5:  # type: ignore[union-attr]  # the other four chunks and the final
                await asyncio.sleep(0.01)
            ready, events = [], [first]
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()  # set by the loop's next iteration: done only if a read gave way to it
            loop.call_soon(waiter.set_result, None)
            while stream.ready:
                ready.append(stream.ready)
                events.append(await stream.next_event())
            return ready, events, waiter.done()

    ready, events, yielded = arun(main())
    assert events == [*(Chunk(f"t{i}", (i,)) for i in range(5)), None]  # None: the final came
    assert ready == [True] * 5 and not yielded  # five reads, none of them waited on the loop


def test_not_ready_when_nothing_has_arrived(fake: FakeDaemon):
    fake.on("generate", lambda req: req.later(0.3, lambda: _burst(req)))

    async def main() -> tuple[bool, str]:
        async with AsyncClient(fake.endpoint, timeout=5) as c:
            stream = c.generate("hi")
            await stream.start()
            ready = stream.ready
            result = await stream.collect()
            return ready or stream.ready, result.text

    assert arun(main()) == (False, "t0t1t2t3t4")
