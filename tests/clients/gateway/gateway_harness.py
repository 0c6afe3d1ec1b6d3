"""Helpers for the gateway tests: a gateway on a thread for a daemon endpoint, plain HTTP calls (urllib, so the
tests do not lean on the gateway's own HTTP library), and parsers for server-sent events and NDJSON."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moed.clients.gateway import GatewayConfig, GatewayHandle, start_in_thread

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS / "clients"), str(TESTS / "daemon")]  # fakedaemon, daemon_harness


@contextmanager
def gateway(endpoint: str, **settings: Any) -> Iterator[GatewayHandle]:
    """A gateway on 127.0.0.1 and a free port for the daemon at `endpoint`."""
    handle = start_in_thread(GatewayConfig(endpoint=endpoint, port=0, timeout_s=30, **settings))
    try:
        yield handle
    finally:
        handle.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None,
         timeout: float = 60.0) -> Reply:
    """One HTTP request; any status comes back as a Reply (no exception for 4xx/5xx)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


def sse_events(body: bytes) -> list[Any]:
    """The `data:` payloads of a server-sent event stream (JSON decoded, `[DONE]` kept as the string)."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def ndjson(body: bytes) -> list[Any]:
    # lines end at "\n" only: str.splitlines() would also cut at U+2028 and the like, which JSON text may hold
    return [json.loads(line) for line in body.decode().split("\n") if line.strip()]


def openai_error(reply: Reply) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error reply, checked for its four fields."""
    err = reply.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err
