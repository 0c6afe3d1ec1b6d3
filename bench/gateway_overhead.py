"""What the HTTP gateway costs: decode tok/s and time to first token through the gateway against moed.clients
straight to the daemon, in rounds that alternate the paths; prints (or writes) JSON.

    python -m bench.gateway_overhead STORE [--clients 1,8] [--tokens 64] [--rounds 5] [--via aiohttp,openai]
                                           [--timeout 600] [--out gateway.json]

It starts a daemon on STORE (`moed serve`, a subprocess, on a fresh ipc endpoint, --max-batch the largest client
count) and a gateway in front of it (`moed gateway`, a subprocess on a free loopback port), warms every path, then
for each client count runs `rounds` rounds: on each path in turn (the order rotates round by round), N concurrent
streamed completions of `tokens` tokens (greedy, the same N prompts on every path). The paths:
- `direct`: moed.clients' AsyncClient (one connection, as the gateway itself holds);
- `gateway` (`--via aiohttp`): streamed /v1/completions read with a plain aiohttp client (each SSE event is one
  json.loads), so the client side costs about what moed.clients costs on the direct path and the difference is
  the gateway's own;
- `gateway-openai` (`--via openai`): the same through AsyncOpenAI, what a user of the OpenAI SDK sees, its SDK's
  own per-chunk work (httpx, SSE parsing, pydantic models) included.
All clients run on this process's one event loop, one path at a time.

Per request: TTFT = from sending to the first non-empty text; decode tok/s = (generated tokens - 1) / (last text -
first text), both seen by the client. Per round and path: the median TTFT and median decode tok/s over the N
requests, the aggregate tok/s (all generated tokens / the round's wall time), and the CPU time the daemon, the
gateway and this process (the clients) spent per generated token (`cpu_ms_per_token`: where the cost goes, and
whether the client side was alike on both paths). The record gives every round's values, their medians, and per
gateway path the ratio gateway / direct of each round (TTFT above 1 and tok/s below 1 are the gateway's cost) with
the median over rounds: on a noisy host only ratios within a round say much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil

VIA = {"aiohttp": "gateway", "openai": "gateway-openai"}  # --via: the gateway paths, by client
METRICS = ("ttft_s", "decode_tps", "aggregate_tps")
PROCESSES = ("daemon", "gateway", "clients")
MODEL = "bench"  # the name the gateway serves the model under
PROMPT = "Request {i}. Once upon a time, in a quiet harbour town by the northern sea, there lived"


def _moed() -> list[str]:
    exe = shutil.which("moed")
    return [exe] if exe else [sys.executable, "-m", "moed.daemon.cli"]


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(ready: Any, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if ready():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready within {timeout} s: {log.read_text()[-2000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(store: str, max_batch: int,
            timeout: float = 600.0) -> Iterator[tuple[str, str, dict[str, psutil.Process]]]:
    """A daemon on `store` and a gateway in front of it: yields (ZeroMQ endpoint, gateway base URL, processes by
    PROCESSES name: the daemon's, the gateway's and this one)."""
    from moed.clients import Client

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="moed-gw-")))
        endpoint = f"ipc://{tmp}/moed.sock"
        daemon_log, gateway_log = tmp / "daemon.log", tmp / "gateway.log"
        daemon = stack.enter_context(_process([*_moed(), "serve", store, "--endpoint", endpoint, "--max-batch",
                                               str(max_batch), "--queue-limit", str(4 * max_batch)], daemon_log))
        client = stack.enter_context(Client(endpoint, timeout=10))
        _wait(lambda: client.health().ok, daemon, "the daemon", daemon_log)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        gateway = stack.enter_context(_process([*_moed(), "gateway", "--endpoint", endpoint, "--http", str(port),
                                                "--model-name", MODEL, "--timeout", str(timeout),
                                                "--log-level", "warning"], gateway_log))
        _wait(lambda: urllib.request.urlopen(url + "/v1/models", timeout=5).status == 200, gateway, "the gateway",
              gateway_log)
        yield endpoint, url, {"daemon": psutil.Process(daemon.pid), "gateway": psutil.Process(gateway.pid),
                              "clients": psutil.Process()}


async def _direct_one(client: Any, prompt: str, tokens: int) -> dict[str, float]:
    from moed.clients.events import Chunk

    start, first, last = time.perf_counter(), None, None
    stream = client.generate(prompt, max_tokens=tokens, temperature=0.0)
    async for event in stream:
        if isinstance(event, Chunk) and event.text:
            last = time.perf_counter()
            first = first or last
    return _record(start, first, last, stream.result.generated_tokens)


async def _openai_one(client: Any, prompt: str, tokens: int) -> dict[str, float]:
    start, first, last, generated = time.perf_counter(), None, None, 0
    stream = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=tokens, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            last = time.perf_counter()
            first = first or last
        if chunk.usage is not None:
            generated = chunk.usage.completion_tokens
    return _record(start, first, last, generated)


async def _aiohttp_one(client: Any, prompt: str, tokens: int) -> dict[str, float]:
    session, url = client
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, last, generated = time.perf_counter(), None, None, 0
    async with session.post(url + "/v1/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"gateway answered {response.status}: {await response.text()}")
        async for line in response.content:  # SSE: `data: {json}` lines, blank lines between events
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the stream failed: {event['error']}")
            if event["choices"] and event["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
            if event.get("usage"):
                generated = event["usage"]["completion_tokens"]
    return _record(start, first, last, generated)


ONE = {"direct": _direct_one, "gateway": _aiohttp_one, "gateway-openai": _openai_one}


def _record(start: float, first: float | None, last: float | None, generated: int) -> dict[str, float]:
    if first is None or last is None:
        raise RuntimeError("a request produced no text")
    tps = (generated - 1) / (last - first) if generated > 1 and last > first else float("nan")
    return {"ttft_s": first - start, "decode_tps": tps, "generated": generated, "end": last}


def _cpu(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: cpu_seconds(p) for name, p in procs.items()}


def cpu_seconds(proc: psutil.Process) -> float:
    """The CPU seconds (user + system, every thread, exited ones too) `proc` has used: on Linux from the process's
    CPU clock, to the nanosecond; elsewhere psutil's counters, which tick in 10 ms (on the tiny store two ticks
    are a 1-client round of 128 tokens of the gateway's work)."""
    if sys.platform == "linux":
        try:  # the kernel's clock id for a process's CPU time (CPUCLOCK_SCHED of the process, not a thread)
            return time.clock_gettime((~proc.pid << 3) | 2)
        except OSError:
            pass  # no such clock here: fall back
    return float(sum(proc.cpu_times()[:2]))


async def _round(path: str, clients: dict[str, Any], n: int, tokens: int,
                 procs: dict[str, psutil.Process]) -> dict[str, Any]:
    """n concurrent requests on one path: median TTFT, median decode tok/s, aggregate tok/s, CPU per token."""
    before = _cpu(procs)
    start = time.perf_counter()
    recs = await asyncio.gather(*(ONE[path](clients[path], PROMPT.format(i=i), tokens) for i in range(n)))
    wall = max(r["end"] for r in recs) - start
    after = _cpu(procs)
    generated = sum(r["generated"] for r in recs)
    tps = [r["decode_tps"] for r in recs if r["decode_tps"] == r["decode_tps"]]  # NaN: a one-token answer
    return {"ttft_s": statistics.median(r["ttft_s"] for r in recs),
            "decode_tps": statistics.median(tps) if tps else float("nan"),
            "aggregate_tps": generated / wall, "generated": generated,
            "cpu_ms_per_token": {k: 1e3 * (after[k] - before[k]) / generated for k in procs}}


async def measure(endpoint: str, url: str, counts: list[int], tokens: int, rounds: int, via: list[str],
                  procs: dict[str, psutil.Process], timeout: float = 600.0) -> dict[str, Any]:
    """The alternated rounds for every client count (see the module docstring for the record's shape)."""
    import aiohttp

    from moed.clients.aio import AsyncClient

    paths = ["direct", *(VIA[v] for v in via)]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout),
                                    connector=aiohttp.TCPConnector(limit=0))
    clients: dict[str, Any] = {"direct": AsyncClient(endpoint, timeout=timeout, name="bench-direct"),
                               "gateway": (session, url)}
    if "gateway-openai" in paths:
        from openai import AsyncOpenAI

        clients["gateway-openai"] = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                                timeout=timeout)
    try:
        for path in paths:  # warm-up: connections open, the model's first steps done
            await _round(path, clients, max(counts), min(tokens, 8), procs)
        out: dict[str, Any] = {}
        for n in counts:
            values: dict[str, dict[str, list[Any]]] = {
                p: {m: [] for m in (*METRICS, "generated", "cpu_ms_per_token")} for p in paths}
            for r in range(rounds):
                for path in paths[r % len(paths):] + paths[:r % len(paths)]:  # the order rotates
                    for m, v in (await _round(path, clients, n, tokens, procs)).items():
                        values[path][m].append(v)
            out[str(n)] = summarise(values)
        return out
    finally:
        await clients["direct"].close()
        if "gateway-openai" in clients:
            await clients["gateway-openai"].close()
        await session.close()


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else None


def summarise(values: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """Medians per path (CPU per token per process too), and per gateway path the ratio to direct of each round,
    with its median."""
    gateways = [p for p in values if p != "direct"]
    direct = values["direct"]
    ratio = {g: {m: [x / d if d else float("nan") for x, d in zip(values[g][m], direct[m])] for m in METRICS}
             for g in gateways}
    median: dict[str, Any] = {p: {m: _median(values[p][m]) for m in METRICS} for p in values}
    for p in values:
        rounds = values[p].get("cpu_ms_per_token", [])
        median[p]["cpu_ms_per_token"] = {k: _median([r[k] for r in rounds]) for k in (rounds[0] if rounds else {})}
    return {"values": values, "median": median, "ratio": ratio,
            "median_ratio": {g: {m: _median(ratio[g][m]) for m in METRICS} for g in gateways}}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="a store made by `moed convert`")
    p.add_argument("--clients", default="1,8", help="concurrent client counts, comma-separated (default 1,8)")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens per request (default 64)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per client count (default 5)")
    p.add_argument("--via", default="aiohttp,openai",
                   help="the gateway paths' clients, comma-separated: aiohttp (a plain HTTP client), openai (the "
                        "OpenAI SDK) (default both)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds of silence the clients and the gateway allow (default 600: a large store on a "
                        "slow CPU prefills 8 prompts for minutes)")
    p.add_argument("--out", help="write the JSON here (default: print it)")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    via = [v for v in args.via.split(",") if v]
    if not via or set(via) - set(VIA):
        p.error(f"--via: choose from {', '.join(VIA)}")
    started, load_before = time.time(), os.getloadavg()
    with serving(args.store, max(counts), args.timeout) as (endpoint, url, procs):
        results = asyncio.run(measure(endpoint, url, counts, args.tokens, args.rounds, via, procs, args.timeout))
    record = _json_safe({
        "command": "python -m bench.gateway_overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "store": os.path.abspath(args.store), "clients": counts, "tokens": args.tokens, "rounds": args.rounds,
        "via": via, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "python": platform.python_version(), "load_before": load_before},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seconds": time.time() - started,
        "load_after": os.getloadavg(),
        "results": results})
    text = json.dumps(record, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
