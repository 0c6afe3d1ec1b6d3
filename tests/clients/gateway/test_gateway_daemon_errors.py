"""Each HTTP error status from a real request to a real daemon (one batch slot, no queue): 400 invalid, 400
context too long, 404 unknown model, 413 too large, 503 with Retry-After while the daemon is busy; through the
`openai` and `ollama` packages as well as plain HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("mlx.core")
openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from gateway_harness import gateway, http, openai_error  # noqa: E402  (also puts the daemon harness on the path)

from daemon_harness import InProcess  # noqa: E402
from moed.clients import Client  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "tiny"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def daemon(model_dir: Any) -> Any:
    with InProcess(model_dir("qwen3_moe", "store-mlx"), max_batch=1, queue_limit=0) as d:
        yield d


@pytest.fixture(scope="module")
def gw(daemon: Any) -> Any:
    with gateway(daemon.endpoint, model_name=MODEL, max_body_bytes=1 << 16) as handle:
        yield handle


def test_400_invalid(gw):
    r = http("POST", gw.url + "/v1/chat/completions", {**CHAT, "temperature": -1})
    assert r.status == 400 and openai_error(r)["param"] == "temperature" and "temperature" in openai_error(r)["message"]
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=CHAT["messages"], n=2)
    assert e.value.status_code == 400 and e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="x", max_tokens=5000)  # the context is 4096
    assert e.value.code == "context_length_exceeded"


def test_404_unknown_model(gw):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4", messages=CHAT["messages"])
    assert e.value.code == "model_not_found"
    with pytest.raises(ollama.ResponseError) as oe:
        ollama.Client(host=gw.url).chat(model="llama3", messages=CHAT["messages"])
    assert oe.value.status_code == 404 and "llama3" in oe.value.error


def test_413_too_large(gw):
    r = http("POST", gw.url + "/v1/completions", {"model": MODEL, "prompt": "x" * (1 << 17)})
    assert r.status == 413 and openai_error(r)["code"] == "too_large"
    r = http("POST", gw.url + "/api/generate", {"model": MODEL, "prompt": "x" * (1 << 17)})
    assert r.status == 413 and "too large" in r.json()["error"]


def test_413_frame_too_large_for_the_daemon(daemon):
    # Within the prompt's character limit, but two bytes a character: the frame would pass the protocol's limit.
    with gateway(daemon.endpoint, model_name=MODEL) as big:
        r = http("POST", big.url + "/v1/completions", {"model": MODEL, "prompt": "é" * 524_288, "max_tokens": 1})
    assert r.status == 413 and openai_error(r)["code"] == "too_large"


def test_503_busy_with_retry_after(gw, daemon):
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    hog = c.completions.create(model=MODEL, prompt="Once", max_tokens=3000, stream=True)
    try:
        next(iter(hog))  # the one batch slot is taken; the queue holds nothing
        r = http("POST", gw.url + "/v1/chat/completions", CHAT)
        assert r.status == 503 and openai_error(r)["code"] == "busy" and int(r.headers["Retry-After"]) >= 1
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model=MODEL, messages=CHAT["messages"], stream=True)
        assert e.value.status_code == 503
        with pytest.raises(ollama.ResponseError) as oe:
            ollama.Client(host=gw.url).generate(model=MODEL, prompt="hi", stream=True).__next__()
        assert oe.value.status_code == 503
    finally:
        hog.close()  # the gateway sees the client go and cancels: the slot frees
    with Client(daemon.endpoint, timeout=60) as moed:
        end = time.monotonic() + 60
        while moed.status().active:
            assert time.monotonic() < end, "the slot was not freed"
            time.sleep(0.02)
    assert http("POST", gw.url + "/v1/chat/completions", CHAT).status == 200
