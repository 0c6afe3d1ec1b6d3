"""Fuzzing the HTTP gateway in front of the fake daemon: thousands of generated requests, none answered with a 5xx
other than the documented 503, every answer well-formed, and the gateway unhurt afterwards.

Bodies are hypothesis-made JSON for every POST route (OpenAI and Ollama): valid-shaped ones with their fields
replaced by wrong types, huge numbers, NaN and infinities, nested junk and unknown keys, and raw ones that are not
JSON at all: truncated documents, invalid UTF-8, deep nesting, bodies just over the size limit, JSON that is not an
object. Then random paths and methods. Each answer must be: a status below 500, or 503 (with Retry-After); an
error as the route's API writes it (OpenAI's `{"error": {message, type, param, code}}`, Ollama's
`{"error": "..."}` under /api/); a success as JSON, server-sent events of JSON, NDJSON or the route's text. Raw
bytes on the socket (well-made requests spliced with random bytes, cut short, with odd headers or pipelined) get
no 5xx either, and a request the gateway could read whole is answered. After the run a normal request still works
and no HTTP request is left counted in flight.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_harness import Reply, gateway  # also puts tests/clients on the path
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fakedaemon import FakeDaemon, wait_until

MODEL = "tiny.moe"  # the fake daemon's store folder name
LIMIT = 1 << 16  # the gateway's max_body_bytes here: small, so bodies just over it are cheap
POST_ROUTES = ("/v1/chat/completions", "/v1/completions", "/api/generate", "/api/chat", "/api/show")
GET_ROUTES = ("/", "/v1/models", f"/v1/models/{MODEL}", "/api/version", "/api/tags", "/metrics",
              "/api/moed/status", "/static/status.js")


def fuzz(n: int) -> settings:
    """Settings of one fuzz test: n cases, the same ones every run (derandomized), no example database."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gw() -> Iterator[Any]:
    with FakeDaemon() as fake, gateway(fake.endpoint, max_body_bytes=LIMIT) as handle:
        yield handle


def call(gw: Any, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Reply:
    """One HTTP request on a fresh connection (http.client: any method, any bytes as the body)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Reply(r.status, dict(r.getheaders()), r.read())
    finally:
        conn.close()


def check_answer(method: str, path: str, r: Reply) -> None:
    """No 5xx but the documented 503, and a body in the shape the route's API promises."""
    if currently_in_test_context():  # hypothesis' statistics (--hypothesis-show-statistics)
        event(f"{path.split('?')[0] if path in POST_ROUTES + GET_ROUTES else 'other'} {r.status}")
    assert r.status < 500 or r.status == 503, (method, path, r.status, r.body[:300])
    if r.status == 503:
        assert "Retry-After" in r.headers
    if method == "HEAD" or r.status == 204:
        return
    ctype = r.headers.get("Content-Type", "")
    if r.status >= 400:
        err = json.loads(r.body)["error"]
        path_only = urllib.parse.urlsplit(path).path
        if path_only.startswith("/api/") and not path_only.startswith("/api/moed/"):
            assert isinstance(err, str) and err, r.body
        else:
            assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str), r.body
    elif ctype.startswith("application/json"):
        json.loads(r.body)
    elif ctype.startswith("text/event-stream"):
        blocks = [b for b in r.body.decode().split("\n\n") if b.strip()]
        assert blocks and all(b.startswith("data: ") for b in blocks), r.body[:300]
        for b in blocks:
            if b != "data: [DONE]":
                json.loads(b[len("data: "):])
    elif ctype.startswith("application/x-ndjson"):
        lines = [json.loads(x) for x in r.body.decode().splitlines() if x.strip()]
        assert lines and all(isinstance(x, dict) for x in lines)
    else:
        assert ctype.startswith(("text/", "application/javascript")), (path, ctype)
        r.body.decode()


# -- JSON bodies ------------------------------------------------------------------------------------------------------
huge = st.sampled_from([2**63, 2**64, -2**63 - 1, 10**30, -10**30, 1e308, -1e308, 1e-320])
surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udc80" * 3])  # JSON may escape them; UTF-8 cannot carry them
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | huge | st.floats(allow_nan=True)
           | st.text(max_size=12) | surrogates)
junk = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                                       max_size=4), max_leaves=10)
good = {
    "max_tokens": st.integers(-2, 8), "max_completion_tokens": st.integers(1, 8), "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1), "top_k": st.integers(0, 50), "min_p": st.floats(0, 1),
    "seed": st.integers(0, 2**63 - 1), "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(max_size=4),
                                                                                              max_size=3),
    "stream": st.booleans(), "n": st.just(1), "presence_penalty": st.just(0), "user": st.text(max_size=6),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "raw": st.booleans(),
    "system": st.text(max_size=10), "keep_alive": st.sampled_from(["5m", 0, -1]),
    "options": st.dictionaries(st.sampled_from(["num_predict", "temperature", "top_p", "top_k", "min_p", "seed",
                                                "stop", "num_ctx"]), st.integers(-2, 8) | st.floats(0, 1), max_size=4),
}
role = st.sampled_from(["system", "developer", "user", "user", "user", "assistant", "tool", "robot"])
message = st.fixed_dictionaries({"role": role, "content": st.text(max_size=20) | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=8)}), max_size=2)})


@st.composite
def bodies(draw: st.DrawFn, route: str = "") -> dict[str, Any]:
    """A request body of roughly the right shape for `route` with a few fields given junk, dropped or added."""
    body: dict[str, Any] = {"model": draw(st.sampled_from([MODEL] * 4 + [MODEL + ":latest", "other", ""]))}
    if draw(st.sampled_from([True] * 9 + [False])) == route.endswith("chat/completions") or route == "/api/chat":
        body["messages"] = draw(st.lists(message, max_size=3))
    else:
        body["prompt"] = draw(st.text(max_size=30) | surrogates
                              | st.lists(st.text(max_size=10), min_size=1, max_size=2))
    for key in draw(st.sets(st.sampled_from(sorted(good)), max_size=5)):
        body[key] = draw(good[key])
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):  # mostly well-formed, so many reach the daemon
        how = draw(st.sampled_from(["junk", "drop", "unknown"]))
        key = draw(st.sampled_from(sorted([*good, "model", "messages", "prompt"])))
        if how == "junk":
            body[key] = draw(junk)
        elif how == "drop":
            body.pop(key, None)
        else:
            body[draw(st.text(max_size=8))] = draw(junk)
    return body


@fuzz(1500)
@given(data=st.data(), route=st.sampled_from(POST_ROUTES))
def test_json_bodies_on_every_post_route(gw, data, route):
    body = data.draw(bodies(route), label="body")
    check_answer("POST", route, call(gw, "POST", route, json.dumps(body, allow_nan=True).encode()))


# -- bodies that are not a JSON object --------------------------------------------------------------------------------
def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


raw_bodies = st.one_of(
    bodies().flatmap(lambda b: st.integers(0, max(0, len(json.dumps(b)) - 1)).map(
        lambda cut: json.dumps(b).encode()[:cut])),                                    # truncated
    bodies().flatmap(lambda b: st.tuples(st.integers(0, len(json.dumps(b))), st.binary(min_size=1, max_size=4).filter(
        lambda x: not _utf8(x))).map(lambda t: json.dumps(b).encode()[:t[0]] + t[1] + json.dumps(b).encode()[t[0]:])),
    st.binary(max_size=64),                                                            # bytes
    st.integers(1, LIMIT // 2).map(_deep),                                             # deep nesting
    st.sampled_from([b"[", b"{", b'{"model":', b"\"\\ud800\"", b"NaN", b"null", b"[]", b"1e999999", b'"x"',
                     b"1" + b"0" * 5000, b'{"model": "' + b"a" * 100 + b'"']),         # odd documents
    st.integers(1, 64).map(lambda extra: b'{"model": "' + b"x" * (LIMIT + extra) + b'"}'),  # over the limit
)


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


@fuzz(800)
@given(route=st.sampled_from(POST_ROUTES), body=raw_bodies,
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_raw_bodies_on_every_post_route(gw, route, body, ctype):
    r = call(gw, "POST", route, body, ctype)
    check_answer("POST", route, r)
    if len(body) > LIMIT:
        assert r.status == 413


# -- paths and methods ------------------------------------------------------------------------------------------------
paths = st.one_of(
    st.sampled_from([*POST_ROUTES, *GET_ROUTES]),
    st.lists(st.text(max_size=10), min_size=1, max_size=4).map(
        lambda parts: "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)),
    st.sampled_from(["/v1/", "/api/", "/v1/models/", "/v1/models/other", "/static/../../etc/passwd",
                     "/static/nothing.js", "/api/moed/", "//v1//models", "/v1/chat/completions/"]),
).flatmap(lambda p: st.sampled_from([p, p + "?stream=true", p + "?x=%ff"]))


@fuzz(800)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]), path=paths,
       body=st.none() | st.builds(lambda b: json.dumps(b).encode(), bodies()))
def test_random_paths_and_methods(gw, method, path, body):
    check_answer(method, path, call(gw, method, path, body))


# -- raw bytes on the socket ------------------------------------------------------------------------------------------
def _request(method: str, path: str, body: bytes, extra: list[bytes]) -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: application/json",
            b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


headers_junk = st.lists(st.sampled_from([
    b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip", b"Connection: close", b"Expect: 100-continue", b"X-" + b"a" * 9000 + b": 1",
    b"Bad Header", b": empty", b"Authorization: Bearer \xff\xfe", b"Expect: \x80"]), max_size=2)


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A well-made HTTP request for a POST route (asking the gateway to close after answering), then spliced
    with random bytes, given odd headers, followed by another request, or cut short; and whether it was cut."""
    route = draw(st.sampled_from(POST_ROUTES))
    raw = _request(draw(st.sampled_from(["POST", "GET", "POST "])), route, json.dumps(draw(bodies(route))).encode(),
                   [b"Connection: close", *draw(headers_junk)])
    how = draw(st.sampled_from(["as is", "cut", "splice", "pipelined"]))
    if how == "cut":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif how == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]
    elif how == "pipelined":
        raw += _request("GET", "/v1/models", b"", [])
    return raw, how == "cut"


def exchange(port: int, raw: bytes, cut: bool) -> tuple[bytes, bool]:
    """Send raw bytes, read until the gateway closes; (what came back, whether the gateway had to be told that no
    more bytes come). A cut request is followed by EOF at once (aiohttp then drops the connection, answered or not);
    a whole one gets 3 s to be answered and closed (Connection: close) before the EOF is sent."""
    answer, waited = b"", cut
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(raw)
        if cut:
            s.shutdown(socket.SHUT_WR)
        while True:
            try:
                piece = s.recv(65536)
            except TimeoutError:  # the gateway waits for bytes a spliced Content-Length promised
                s.shutdown(socket.SHUT_WR)
                waited = True
                continue
            if not piece:
                return answer, waited
            answer += piece


@pytest.mark.parametrize("method, path", [("POST", "/v1/chat/completions"), ("GET", "/v1/chat/completions"),
                                          ("POST", "/no/such/route")])
@pytest.mark.parametrize("expect, status", [(b"100-continue", None), (b"100-cont\x80inue", 417), (b"\xff", 417)])
def test_the_expect_header_is_answered_whatever_its_bytes(gw, method, path, expect, status):
    # aiohttp's own handler wrote a non-UTF-8 value into its 417 text and failed to encode it: a 500 (found by the
    # fuzz test below, now and then), also on paths and methods no route of ours answers
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    raw = _request(method, path, body, [b"Connection: close", b"Expect: " + expect])
    status = status or {"GET": 405, "POST": 200 if path.startswith("/v1") else 404}[method]
    answer, _ = exchange(gw.port, raw, cut=False)
    statuses = [int(m) for m in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", answer, re.M)]
    assert statuses[-1] == status, answer[:300]


@fuzz(400)
@given(request=raw_requests())
def test_raw_bytes_on_the_socket(gw, request):
    raw, cut = request
    answer, waited = exchange(gw.port, raw, cut)
    statuses = [int(m) for m in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", answer, re.M)]
    assert statuses or waited, (raw[:200], answer[:200])  # a request it could read whole is answered
    assert all(code < 500 or code == 503 for code in statuses), (raw[:200], answer[:300])
    if currently_in_test_context():
        event(f"{'cut' if cut else 'waited' if waited else 'whole'}: statuses {sorted(set(statuses))}")


@pytest.mark.parametrize("route", POST_ROUTES)
def test_deeply_nested_json_is_a_400(gw, route):
    r = call(gw, "POST", route, _deep(20_000))  # json.loads recurses: this raised RecursionError, a 500
    check_answer("POST", route, r)
    assert r.status == 400 and b"nested too deeply" in r.body


def test_the_gateway_still_serves_and_nothing_is_left_in_flight(gw):
    r = call(gw, "POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode())
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "Hello world"
    r = call(gw, "POST", "/api/generate", json.dumps({"model": MODEL, "prompt": "x", "stream": False}).encode())
    assert r.status == 200 and r.json()["response"] == "Hello world"

    def in_flight() -> float:  # the gauge counts the scrape that reads it
        text = call(gw, "GET", "/metrics").body.decode()
        gauge = next(f for f in text_string_to_metric_families(text) if f.name == "moed_http_requests_in_flight")
        return gauge.samples[0].value - 1

    wait_until(lambda: in_flight() == 0, timeout=10)
    status = call(gw, "GET", "/api/moed/status").json()
    assert status["up"] and status["gateway"]["http_in_flight"] == 0
    assert not math.isnan(in_flight())
