"""The gateway's streaming path: event templates give exactly the JSON of the objects they stand for, pieces that
arrive together are read (and written) together, in order, what came before a failure still goes out first, and a
stale status is refreshed behind a request's back rather than on its way."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from gateway_harness import gateway, http, ndjson, sse_events  # also puts tests/clients on the path
from hypothesis import given, settings
from hypothesis import strategies as st

from moed.clients.aio import AsyncClient
from moed.clients.gateway.upstream import Generation
from moed.clients.gateway.web import dumps, template

from fakedaemon import STATUS, FakeDaemon, FakeRequest, arun, fake_daemon, gen_result, wait_until  # noqa: F401

PIECES = [f" p{i}" for i in range(20)] + ["é \" \\ \n \u2028 \U0001f600"]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_templates_render_what_dumps_gives(a: str, b: str) -> None:
    def one(text: str) -> dict[str, Any]:
        return {"id": "x", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                "usage": None}

    assert template(one)(a) == dumps(one(a))
    two = template(lambda when, text: {"model": "m", "created_at": when, "response": text, "done": False}, 2)
    assert two(a, b) == dumps({"model": "m", "created_at": a, "response": b, "done": False})


def test_a_template_needs_its_holes_in_the_object() -> None:
    with pytest.raises(ValueError, match="hole"):
        template(lambda text: {"text": len(text)})


def _burst(final: Any) -> Any:
    """A generate handler that sends every piece and then `final(req)` at once, as one daemon step does for many
    requests (here: many pieces for one)."""

    def handler(req: FakeRequest) -> None:
        req.progress("queued", 0)
        for i, text in enumerate(PIECES):
            req.chunk(text, [i])
        final(req)

    return handler


def test_pieces_that_arrived_together_come_as_one_batch(fake) -> None:
    fake.on("generate", _burst(lambda req: req.ok(gen_result("length", len(PIECES)))))

    async def run() -> list[list[str]]:
        async with AsyncClient(fake.endpoint, timeout=10) as client:
            async with await Generation.start(client, {"prompt": "x"}) as gen:
                while gen._stream._call.pending() < len(PIECES) + 1:  # type: ignore[union-attr]  # all arrived
                    await asyncio.sleep(0.01)
                return [batch async for batch in gen.batches()]

    assert arun(run()) == [PIECES]


def test_streams_keep_every_piece_in_order(fake) -> None:
    fake.on("generate", _burst(lambda req: req.ok(gen_result("length", len(PIECES)))))
    with gateway(fake.endpoint) as gw:
        r = http("POST", gw.url + "/v1/completions", {"model": "tiny.moe", "prompt": "x", "stream": True,
                                                       "stream_options": {"include_usage": True}})
        events = sse_events(r.body)
        assert r.status == 200 and events[-1] == "[DONE]"
        head = {k: events[0][k] for k in ("id", "object", "created", "model", "system_fingerprint")}
        assert head["object"] == "text_completion"
        assert events[:len(PIECES)] == [
            {**head, "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}], "usage": None}
            for t in PIECES]
        assert events[len(PIECES)]["choices"][0] == {"index": 0, "text": "", "logprobs": None,
                                                     "finish_reason": "length"}
        assert events[len(PIECES) + 1]["usage"]["completion_tokens"] == len(PIECES)
        assert r.body.count(b"data: ") == len(events)  # one `data:` per event: none glued to another

        r = http("POST", gw.url + "/v1/chat/completions", {"model": "tiny.moe", "stream": True,
                                                            "messages": [{"role": "user", "content": "hi"}]})
        deltas = [e["choices"][0]["delta"] for e in sse_events(r.body)[:-1]]
        assert deltas == [{"role": "assistant", "content": ""}, *({"content": t} for t in PIECES), {}]

        lines = ndjson(http("POST", gw.url + "/api/generate", {"model": "tiny.moe", "prompt": "x"}).body)
        assert [line["response"] for line in lines] == [*PIECES, ""] and lines[-1]["done"]
        assert all(set(line) == {"model", "created_at", "response", "done"} for line in lines[:-1])
        assert json.loads(json.dumps(lines[0]))["created_at"].endswith("Z")


def test_pieces_before_a_failure_go_out_before_the_error(fake) -> None:
    fake.on("generate", _burst(lambda req: req.error("store_error", "expert 3 failed its checksum")))
    with gateway(fake.endpoint) as gw:
        events = sse_events(http("POST", gw.url + "/v1/completions", {"model": "tiny.moe", "prompt": "x",
                                                                       "stream": True}).body)
        assert [e["choices"][0]["text"] for e in events[:-1]] == PIECES
        assert events[-1]["error"]["code"] == "store_error"
        lines = ndjson(http("POST", gw.url + "/api/chat", {"model": "tiny.moe",
                                                           "messages": [{"role": "user", "content": "hi"}]}).body)
        assert [line["message"]["content"] for line in lines[:-1]] == PIECES and "checksum" in lines[-1]["error"]


def test_a_stale_status_does_not_hold_up_requests(fake) -> None:
    answered: list[int] = []

    def status_once(req: FakeRequest) -> None:  # later status requests get no answer, as from a stuck daemon
        if not answered:
            answered.append(1)
            req.ok(dict(STATUS))

    fake.on("status", status_once)
    with gateway(fake.endpoint, status_max_age_s=0.01) as gw:
        for _ in range(3):
            r = http("POST", gw.url + "/v1/completions", {"model": "tiny.moe", "prompt": "x"})
            assert r.status == 200 and r.json()["choices"][0]["text"] == "Hello world"
            time.sleep(0.05)  # the status is stale by the next request
        wait_until(lambda: fake.types().count("status") >= 2)  # it was asked for again, in the background
