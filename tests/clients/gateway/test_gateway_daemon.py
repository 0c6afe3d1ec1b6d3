"""The gateway in front of a real daemon serving the tiny test store, driven by the official `openai` and
`ollama` packages: greedy text equal to moed.clients', streamed and not; eight concurrent streams each get their
solo text; server-sent events arrive as they are generated; a client that goes away frees its batch slot."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

pytest.importorskip("mlx.core")
openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from gateway_harness import gateway, http  # noqa: E402  (also puts the daemon harness on the path)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from daemon_harness import InProcess  # noqa: E402
from moed.clients import Client  # noqa: E402

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
MODEL = "tiny"  # the name the gateway serves the model under (model_name)


@pytest.fixture(scope="module")
def daemon(model_dir: Any) -> Any:
    with InProcess(model_dir("qwen3_moe", "store-mlx"), max_batch=4, queue_limit=8) as d:
        yield d


@pytest.fixture(scope="module")
def gw(daemon: Any) -> Any:
    with gateway(daemon.endpoint, model_name=MODEL) as handle:
        yield handle


@pytest.fixture(scope="module")
def moed(daemon: Any) -> Any:
    with Client(daemon.endpoint, timeout=60) as c:
        yield c


def openai_client(gw: Any) -> Any:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)


def test_openai_chat_equals_moed_clients(gw, moed):
    want = moed.chat_complete(MESSAGES, max_tokens=12, temperature=0.0)
    c = openai_client(gw)
    assert [m.id for m in c.models.list().data] == [MODEL]
    whole = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == want.text and whole.choices[0].finish_reason == want.done_reason
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (want.prompt_tokens, 12)
    chunks = list(c.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 12
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) > 1


def test_openai_completions_equal_moed_clients(gw, moed):
    want = moed.complete("Once upon a time", max_tokens=10, stop=["zzz"])
    c = openai_client(gw)
    whole = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, stop="zzz")
    assert whole.choices[0].text == want.text and whole.usage.completion_tokens == want.generated_tokens
    streamed = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, stop="zzz", stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == want.text


def test_ollama_generate_and_chat_equal_moed_clients(gw, moed):
    want = moed.chat_complete(MESSAGES, max_tokens=8)
    o = ollama.Client(host=gw.url)
    assert [m.model for m in o.list().models] == [MODEL + ":latest"]
    assert o.show(MODEL).modelinfo["qwen3_moe.context_length"] == 4096
    options = {"num_predict": 8, "temperature": 0}
    one = o.generate(model=MODEL, prompt=MESSAGES[0]["content"], options=options)  # the chat template, as Ollama
    assert one.response == want.text and one.done and one.eval_count == 8 and one.done_reason == "length"
    parts = list(o.generate(model=MODEL, prompt=MESSAGES[0]["content"], options=options, stream=True))
    assert "".join(p.response for p in parts) == want.text and parts[-1].done and len(parts) > 2
    chat = o.chat(model=MODEL + ":latest", messages=MESSAGES, options=options)
    assert chat.message.content == want.text and chat.prompt_eval_count == want.prompt_tokens
    parts = list(o.chat(model=MODEL, messages=MESSAGES, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == want.text
    raw = o.generate(model=MODEL, prompt="Once upon a time", raw=True, options=options)
    assert raw.response == moed.complete("Once upon a time", max_tokens=8).text
    assert http("GET", gw.url + "/api/version").json()["version"]


def test_eight_concurrent_streams_get_their_solo_text(gw, moed):
    prompts = [f"Story number {i}: the" + " long" * i for i in range(8)]
    solo = [moed.complete(p, max_tokens=16).text for p in prompts]

    async def one(c: Any, prompt: str) -> str:
        stream = await c.completions.create(model=MODEL, prompt=prompt, max_tokens=16, stream=True)
        return "".join([ch.choices[0].text async for ch in stream])

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0) as c:
            return await asyncio.gather(*[one(c, p) for p in prompts])

    assert asyncio.run(all_at_once()) == solo


def _open_raw(gw: Any, path: str, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (path.encode(), len(body), body))
    return s


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def test_events_arrive_as_they_are_generated(gw, moed):
    s = _open_raw(gw, "/v1/completions", b'{"model": "%s", "prompt": "Once", "max_tokens": 3000, "stream": true}'
                  % MODEL.encode())
    arrivals: list[float] = []
    buffered = b""
    try:
        while len(arrivals) < 10:
            piece = s.recv(65536)
            assert piece, "the stream ended early"
            buffered += piece
            arrivals += [time.monotonic()] * (buffered.count(b"data: ") - len(arrivals))
        assert moed.status().active == 1  # the first chunks came while the daemon was still generating
    finally:
        s.close()
    assert len(set(arrivals)) > 1  # not one burst at the end
    _wait(lambda: moed.status().active == 0)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_its_slot(gw, moed, stream):
    def ended_early() -> int:  # cancelled by the gateway, or seen gone by the daemon: either frees the slot
        finished = moed.status().raw["finished"]
        return finished.get("cancelled", 0) + finished.get("client_gone", 0)

    before, lengths = ended_early(), moed.status().raw["finished"].get("length", 0)
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000, "stream": %s}' % (
        MODEL.encode(), b"true" if stream else b"false")
    s = _open_raw(gw, "/v1/chat/completions", body)
    try:
        _wait(lambda: moed.status().active == 1)
        if stream:
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        s.close()
    _wait(lambda: moed.status().active == 0)
    assert ended_early() == before + 1, moed.status().raw["finished"]
    assert moed.status().raw["finished"].get("length", 0) == lengths  # not run to its length


def test_metrics_from_the_daemon(gw, moed):
    moed.complete("warm", max_tokens=4)
    families = list(text_string_to_metric_families(http("GET", gw.url + "/metrics").body.decode()))
    samples = {s.name: s.value for fam in families for s in fam.samples if not s.labels}
    generated = sum(s.value for fam in families for s in fam.samples if s.name == "moed_generated_tokens_total")
    status = moed.status()
    assert samples["moed_daemon_up"] == 1 and samples["moed_max_batch"] == 4 and samples["moed_queue_limit"] == 8
    assert samples["moed_cache_budget_bytes"] == status.cache["budget_bytes"] > 0
    assert samples["moed_cache_hits_total"] > 0 and "moed_cache_misses_total" in samples
    assert generated > 0  # the earlier tests' generations, counted by the gateway
    assert samples["moed_time_to_first_token_seconds_count"] >= 1
