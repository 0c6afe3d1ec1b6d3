"""The client library against the real daemon (in-process, tiny test model): every call type, streaming,
cancellation and busy, with the client's strict checks on (seq, one final, result fields). Needs MLX; the other
client tests do not."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx.core")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from daemon_harness import InProcess  # noqa: E402  (the daemon tests' harness: a daemon on a thread)

from moed.clients import protocol  # noqa: E402
from moed.clients import AsyncClient, Busy, Chunk, Client, NotAvailable, NotFound, Progress  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(model_dir: Any) -> Any:
    with InProcess(model_dir("qwen3_moe", "store-mlx"), max_batch=2, queue_limit=1) as d:
        yield d


def test_calls_and_streams(daemon: Any):
    with Client(daemon.endpoint, timeout=30) as c:
        hello = c.hello()
        assert hello.version == protocol.VERSION and hello.model_type == "qwen3_moe"
        assert hello.limits["max_messages"] == 256
        assert c.status().state == "ready" and c.health().ok
        stream = c.generate("Once upon a time", max_tokens=6)
        events = list(stream)
        assert isinstance(events[0], Progress) and all(isinstance(e, Chunk) for e in events[-6:])
        assert stream.result and stream.result.generated_tokens == 6 and stream.result.done_reason == "length"
        assert stream.result.text == "".join(e.text for e in events if isinstance(e, Chunk))
        whole = c.complete("Once upon a time", max_tokens=6, stream=False)
        assert whole.text == stream.result.text  # greedy: the same tokens either way
        assert c.chat_complete([{"role": "user", "content": "hi"}], max_tokens=3).generated_tokens == 3
        with pytest.raises(NotAvailable):
            c.governor_get()
        with pytest.raises(NotFound):
            c.cancel("no-such-request")
        assert not c.async_client.violations


def test_cancel_and_busy(daemon: Any):
    with Client(daemon.endpoint, timeout=30) as c:
        with c.generate("story", max_tokens=500) as stream:
            stream.next_event()
            assert stream.cancel() is True
            assert stream.collect().done_reason == "cancelled"
        for event in c.generate("story", max_tokens=500):
            if isinstance(event, Chunk):
                break  # cancels: the slot frees for the next test

    async def five() -> list[Any]:
        async with AsyncClient(daemon.endpoint, timeout=30) as ac:
            return await asyncio.gather(*[ac.complete("x", max_tokens=20) for _ in range(5)],
                                        return_exceptions=True)

    outcomes = asyncio.run(five())  # max_batch 2 + queue_limit 1: at least two are refused
    assert sum(isinstance(o, Busy) for o in outcomes) >= 2
    assert all(isinstance(o, Busy) or o.generated_tokens == 20 for o in outcomes)
