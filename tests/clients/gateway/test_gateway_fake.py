"""The gateway against the scripted fake daemon (no MLX): how HTTP parameters map to the protocol, error shapes
and status codes (mid-stream too), metrics from a known status, API keys, CORS, and running without MLX."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest
from gateway_harness import gateway, http, ndjson, openai_error, sse_events  # also puts tests/clients on the path
from prometheus_client.parser import text_string_to_metric_families

from moed.clients.gateway import GatewayConfig, start_in_thread

from fakedaemon import FakeDaemon, FakeRequest, fake_daemon, gen_result, slow_generate, wait_until  # noqa: F401

CHAT = {"model": "tiny.moe", "messages": [{"role": "user", "content": "hi"}]}


def last_generate(fake: FakeDaemon) -> dict[str, Any]:
    return [r for r in fake.requests if r["type"] == "generate"][-1]["params"]


def test_openai_params_map_to_the_protocol(fake):
    with gateway(fake.endpoint) as gw:
        body = {"model": "tiny.moe", "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0.5, "top_p": 0.9,
                "seed": 3, "stop": "x", "n": 1, "presence_penalty": 0, "user": "ignored",
                "messages": [{"role": "developer", "content": "be brief"},
                             {"role": "user", "content": [{"type": "text", "text": "a"},
                                                          {"type": "text", "text": "b"}]}]}
        r = http("POST", gw.url + "/v1/chat/completions", body)
        assert r.status == 200, r.body
        p = last_generate(fake)
        assert p["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]
        assert (p["max_tokens"], p["temperature"], p["top_p"], p["seed"], p["stop"], p["stream"]) == (
            7, 0.5, 0.9, 3, ["x"], True)
        out = r.json()
        assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
        assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        r = http("POST", gw.url + "/v1/completions", {"model": "tiny.moe", "prompt": ["Once"], "max_tokens": 4,
                                                       "stop": ["a", "b"]})
        assert r.status == 200 and r.json()["choices"][0]["text"] == "Hello world"
        p = last_generate(fake)
        assert (p["prompt"], p["messages"], p["max_tokens"], p["stop"]) == ("Once", None, 4, ["a", "b"])


def test_ollama_params_map_to_the_protocol(fake):
    with gateway(fake.endpoint) as gw:
        options = {"num_predict": 5, "temperature": 0.2, "top_k": 4, "seed": 1, "stop": ["z"], "num_ctx": 8192}
        r = http("POST", gw.url + "/api/generate", {"model": "tiny.moe:latest", "prompt": "Why?", "system": "S",
                                                     "options": options, "stream": False, "keep_alive": "5m"})
        assert r.status == 200, r.body
        p = last_generate(fake)
        assert p["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "Why?"}]
        assert (p["max_tokens"], p["temperature"], p["top_k"], p["seed"], p["stop"]) == (5, 0.2, 4, 1, ["z"])
        out = r.json()
        assert out["response"] == "Hello world" and out["done"] and out["done_reason"] == "stop"
        assert (out["prompt_eval_count"], out["eval_count"], out["total_duration"]) == (3, 2, 7_001_000)
        http("POST", gw.url + "/api/generate", {"model": "tiny.moe", "prompt": "raw text", "raw": True,
                                                 "options": {"num_predict": -1}})
        p = last_generate(fake)
        assert (p["prompt"], p["messages"], p["max_tokens"]) == ("raw text", None, 256)  # the daemon's default
        lines = ndjson(http("POST", gw.url + "/api/chat", {"model": "tiny.moe", "messages": CHAT["messages"]}).body)
        assert [x["message"]["content"] for x in lines] == ["Hello", " world", ""]
        assert [x["done"] for x in lines] == [False, False, True] and lines[-1]["eval_count"] == 2
        load = http("POST", gw.url + "/api/generate", {"model": "tiny.moe"}).json()  # Ollama's "load the model"
        assert load["done"] and load["done_reason"] == "load"


def test_errors_after_the_headers_go_out_as_events(fake):
    def fails_midway(req: FakeRequest) -> None:
        req.progress("queued", 0)
        req.chunk("Hel", [1])
        req.error("store_error", "expert 3 failed its checksum")

    fake.on("generate", fails_midway)
    with gateway(fake.endpoint) as gw:
        r = http("POST", gw.url + "/v1/chat/completions", {**CHAT, "stream": True})
        events = sse_events(r.body)
        assert r.status == 200 and events[1]["choices"][0]["delta"] == {"content": "Hel"}
        assert events[-1]["error"]["code"] == "store_error" and "[DONE]" not in events
        lines = ndjson(http("POST", gw.url + "/api/chat", {"model": "tiny.moe", "messages": CHAT["messages"]}).body)
        assert lines[0]["message"]["content"] == "Hel" and "checksum" in lines[-1]["error"]
        r = http("POST", gw.url + "/v1/chat/completions", CHAT)
        assert r.status == 500 and openai_error(r)["code"] == "store_error"
        _sdks_raise_midstream_errors(gw.url)

        fake.on("generate", lambda req: (req.chunk("a"), req.ok(gen_result("shutdown", 1))))
        r = http("POST", gw.url + "/v1/completions", {"model": "tiny.moe", "prompt": "x"})
        assert r.status == 503 and openai_error(r)["code"] == "shutdown" and r.headers["Retry-After"]


def _sdks_raise_midstream_errors(url: str) -> None:
    openai = pytest.importorskip("openai")
    ollama = pytest.importorskip("ollama")
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError, match="checksum"):
        for _ in c.chat.completions.create(model="tiny.moe", messages=CHAT["messages"], stream=True):
            pass
    with pytest.raises(ollama.ResponseError, match="checksum"):
        for _ in ollama.Client(host=url).chat(model="tiny.moe", messages=CHAT["messages"], stream=True):
            pass


def test_daemon_errors_map_to_status_codes(fake):
    with gateway(fake.endpoint) as gw:
        for code, status, shown in (("loading", 503, "loading"), ("busy", 503, "busy"),
                                    ("context_overflow", 400, "context_length_exceeded"),
                                    ("shutting_down", 503, "shutting_down")):
            fake.on("generate", lambda req, code=code: req.error(code, f"{code} happened", position=3))
            r = http("POST", gw.url + "/v1/chat/completions", CHAT)
            assert r.status == status and openai_error(r)["code"] == shown, (code, r.body)
            assert ("Retry-After" in r.headers) == (status == 503)
            r = http("POST", gw.url + "/api/chat", {"model": "tiny.moe", "messages": CHAT["messages"]})
            assert r.status == status and r.json() == {"error": f"{code} happened"}


def test_requests_the_gateway_rejects(fake):
    with gateway(fake.endpoint) as gw:
        cases = [({**CHAT, "n": 2}, "n"), ({**CHAT, "tools": [{"type": "function"}]}, "tools"),
                 ({**CHAT, "temperature": "hot"}, "temperature"), ({**CHAT, "max_tokens": 0}, "max_tokens"),
                 ({**CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
                 ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
                 ({**CHAT, "messages": []}, "messages"), ({"messages": CHAT["messages"]}, "model"),
                 ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options")]
        for body, param in cases:
            r = http("POST", gw.url + "/v1/chat/completions", body)
            assert r.status == 400 and openai_error(r)["param"] == param, (body, r.body)
        r = http("POST", gw.url + "/v1/chat/completions", raw=b"{not json")
        assert r.status == 400 and openai_error(r)["code"] == "invalid_json"
        r = http("POST", gw.url + "/v1/chat/completions", {**CHAT, "model": "other"})
        assert r.status == 404 and openai_error(r)["code"] == "model_not_found"
        r = http("GET", gw.url + "/v1/nothing-here")
        assert r.status == 404 and openai_error(r)["type"] == "invalid_request_error"
        r = http("POST", gw.url + "/api/generate", {"model": "tiny.moe", "prompt": "x", "images": ["AAAA"]})
        assert r.status == 400 and "images" in r.json()["error"]
        r = http("POST", gw.url + "/api/chat", {"model": "nope", "messages": CHAT["messages"]})
        assert r.status == 404 and "nope" in r.json()["error"]
        assert all(r["type"] != "generate" for r in fake.requests)  # none of these reached the daemon


def test_metrics_from_status_and_counters(fake):
    with gateway(fake.endpoint) as gw:
        http("POST", gw.url + "/v1/chat/completions", CHAT)
        assert http("GET", gw.url + "/v1/chat/completions").status == 405
        assert http("GET", gw.url + "/no/such/route").status == 404
        text = http("GET", gw.url + "/metrics").body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("moed_daemon_up", ())] == 1
    assert samples[("moed_cache_hits_total", ())] == 3 and samples[("moed_cache_misses_total", ())] == 1
    assert samples[("moed_cache_budget_bytes", ())] == 1 << 20
    assert samples[("moed_active_requests", ())] == 1 and samples[("moed_queue_length", ())] == 0
    assert samples[("moed_daemon_state", (("state", "ready"),))] == 1
    assert samples[("moed_prompt_tokens_total", (("api", "openai"),))] == 3
    assert samples[("moed_generated_tokens_total", (("api", "openai"),))] == 2
    assert samples[("moed_time_to_first_token_seconds_count", ())] == 1
    key = ("moed_http_requests_total", (("api", "openai"), ("code", "200"), ("route", "/v1/chat/completions")))
    assert samples[key] == 1
    unrouted = {(labels["code"], labels["route"]) for (name, items), _ in samples.items()
                if name == "moed_http_requests_total" for labels in [dict(items)] if labels["code"] in ("404", "405")}
    assert unrouted == {("404", "unmatched"), ("405", "unmatched")}  # one series for all such paths, not one each


def test_no_daemon_is_503_and_metrics_say_down():
    with gateway("ipc:///tmp/moed-no-such-dir/d.sock") as gw:
        r = http("GET", gw.url + "/v1/models")
        assert r.status == 503 and openai_error(r)["code"] == "daemon_unavailable" and "Retry-After" in r.headers
        assert "moed_daemon_up 0.0" in http("GET", gw.url + "/metrics").body.decode()


def test_api_key(fake):
    with gateway(fake.endpoint, api_key="s3cret") as gw:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = http("GET", gw.url + "/v1/models", headers=headers)
            assert r.status == 401 and openai_error(r)["type"] == "authentication_error"
            assert r.headers["WWW-Authenticate"] == "Bearer"
        assert http("GET", gw.url + "/api/tags").json() == {"error": "a valid API key is required: send "
                                                                      "`Authorization: Bearer <key>`"}
        ok = http("GET", gw.url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status == 200 and ok.json()["data"][0]["id"] == "tiny.moe"


def test_cors_off_unless_configured(fake):
    origin = {"Origin": "http://app.example"}
    with gateway(fake.endpoint) as gw:
        assert "Access-Control-Allow-Origin" not in http("GET", gw.url + "/v1/models", headers=origin).headers
        assert http("OPTIONS", gw.url + "/v1/models", headers={**origin, "Access-Control-Request-Method": "GET"}
                    ).status == 405
    with gateway(fake.endpoint, cors_origins=("http://app.example",), api_key="k") as gw:
        pre = http("OPTIONS", gw.url + "/v1/chat/completions", headers={
            **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
        assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == "http://app.example"
        auth = {**origin, "Authorization": "Bearer k"}
        streamed = http("POST", gw.url + "/v1/chat/completions", {**CHAT, "stream": True}, headers=auth)
        assert streamed.headers["Access-Control-Allow-Origin"] == "http://app.example"
        other = http("GET", gw.url + "/v1/models",
                     headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
        assert "Access-Control-Allow-Origin" not in other.headers


def test_a_client_that_goes_away_cancels(fake):
    fake.on("generate", slow_generate(n=100_000, interval=0.005))
    with gateway(fake.endpoint) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port))
        body = b'{"model": "tiny.moe", "prompt": "x", "stream": true}'
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: " not in received:  # streaming has begun
            piece = s.recv(65536)
            assert piece, "the gateway closed the connection"
            received += piece
        s.close()
        wait_until(lambda: "cancel" in fake.types(), timeout=10)
        wait_until(lambda: not fake.active, timeout=10)


NO_MLX = r'''
import sys
class BlockMLX:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlx", "mlx_lm"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, BlockMLX())
sys.path.insert(0, HERE)
from gateway_harness import gateway, http
from fakedaemon import FakeDaemon
with FakeDaemon() as fake, gateway(fake.endpoint) as gw:
    r = http("POST", gw.url + "/v1/chat/completions",
             {"model": "tiny.moe", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "Hello world", r.body
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm") or m.startswith("moed.daemon"))
assert not loaded, loaded
print("NO-MLX-OK")
'''


def test_gateway_runs_without_mlx():
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", f"HERE = {here!r}\n" + NO_MLX], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "NO-MLX-OK" in proc.stdout, proc.stderr


def test_models_root_and_stop_with_a_stream_open(fake):
    fake.on("generate", slow_generate(n=100_000, interval=0.005))
    gw = start_in_thread(GatewayConfig(endpoint=fake.endpoint, port=0))
    try:
        assert http("GET", gw.url + "/v1/models/tiny.moe").json()["id"] == "tiny.moe"
        assert http("GET", gw.url + "/v1/models/other").status == 404
        assert http("GET", gw.url + "/").body == b"moed gateway is running"
        s = socket.create_connection(("127.0.0.1", gw.port))
        body = b'{"model": "tiny.moe", "prompt": "x", "stream": true}'
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: bool(fake.active), timeout=10)
    finally:
        gw.stop()  # cuts the open stream: its request is cancelled on the daemon
    s.close()
    wait_until(lambda: "cancel" in fake.types() and not fake.active, timeout=10)


def test_governor_metrics_when_the_daemon_has_one(fake):
    from fakedaemon import STATUS

    governor = {"state": "SAVER", "profile": "auto", "power_cap_w": 40.0,
                "limits": {"batch_ceiling": 2, "prefetch_depth": 0, "cache_budget_bytes": 1 << 20,
                           "pace_steps_per_s": None}}
    fake.on("status", lambda r: r.ok({**STATUS, "governor": governor}))
    with gateway(fake.endpoint) as gw:
        text = http("GET", gw.url + "/metrics").body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("moed_governor_state", (("state", "SAVER"),))] == 1
    assert samples[("moed_governor_state", (("state", "PERFORMANCE"),))] == 0
    assert samples[("moed_governor_batch_ceiling", ())] == 2 and samples[("moed_governor_prefetch_depth", ())] == 0
    assert samples[("moed_governor_power_cap_watts", ())] == 40
    assert ("moed_governor_pace_steps_per_second", ()) not in samples  # no cap: no sample
