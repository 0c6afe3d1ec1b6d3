"""What the HTTP gateway costs: decode tok/s and time to first token through the gateway (the `openai` package,
streaming) against moed.clients straight to the daemon, paired and alternated; prints (or writes) JSON.

    python -m bench.gateway_overhead STORE [--clients 1,8] [--tokens 64] [--rounds 5] [--out gateway.json]

It starts a daemon on STORE (`moed serve`, a subprocess, on a fresh ipc endpoint, --max-batch the largest client
count) and a gateway in front of it (`moed gateway`, a subprocess on a free loopback port), warms both paths, then
for each client count runs `rounds` pairs: N concurrent streamed completions of `tokens` tokens (greedy, the same
N prompts on both paths) through moed.clients' AsyncClient (one connection, as the gateway itself holds), and the
same through the gateway with AsyncOpenAI; the order within a pair alternates round by round. Both clients run on
this process's one event loop.

Per request: TTFT = from sending to the first non-empty text; decode tok/s = (generated tokens - 1) / (last text -
first text), both seen by the client. Per round and path: the median TTFT and median decode tok/s over the N
requests, and the aggregate tok/s (all generated tokens / the round's wall time). The record gives every round's
values, their medians, and per pair the ratio gateway / direct (TTFT above 1 and tok/s below 1 are the gateway's
cost) with the median over pairs: on a noisy host only ratios within a pair say much.
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

PATHS = ("direct", "gateway")
METRICS = ("ttft_s", "decode_tps", "aggregate_tps")
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
def serving(store: str, max_batch: int) -> Iterator[tuple[str, str]]:
    """A daemon on `store` and a gateway in front of it: yields (ZeroMQ endpoint, gateway base URL)."""
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
                                                "--model-name", MODEL, "--log-level", "warning"], gateway_log))
        _wait(lambda: urllib.request.urlopen(url + "/v1/models", timeout=5).status == 200, gateway, "the gateway",
              gateway_log)
        yield endpoint, url


async def _direct_one(client: Any, prompt: str, tokens: int) -> dict[str, float]:
    from moed.clients.events import Chunk

    start, first, last = time.perf_counter(), None, None
    stream = client.generate(prompt, max_tokens=tokens, temperature=0.0)
    async for event in stream:
        if isinstance(event, Chunk) and event.text:
            last = time.perf_counter()
            first = first or last
    return _record(start, first, last, stream.result.generated_tokens)


async def _gateway_one(client: Any, prompt: str, tokens: int) -> dict[str, float]:
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


def _record(start: float, first: float | None, last: float | None, generated: int) -> dict[str, float]:
    if first is None or last is None:
        raise RuntimeError("a request produced no text")
    tps = (generated - 1) / (last - first) if generated > 1 and last > first else float("nan")
    return {"ttft_s": first - start, "decode_tps": tps, "generated": generated, "end": last}


async def _round(path: str, clients: dict[str, Any], n: int, tokens: int) -> dict[str, float]:
    """n concurrent requests on one path: median TTFT, median decode tok/s, aggregate tok/s."""
    one = _direct_one if path == "direct" else _gateway_one
    start = time.perf_counter()
    recs = await asyncio.gather(*(one(clients[path], PROMPT.format(i=i), tokens) for i in range(n)))
    wall = max(r["end"] for r in recs) - start
    tps = [r["decode_tps"] for r in recs if r["decode_tps"] == r["decode_tps"]]  # NaN: a one-token answer
    return {"ttft_s": statistics.median(r["ttft_s"] for r in recs),
            "decode_tps": statistics.median(tps) if tps else float("nan"),
            "aggregate_tps": sum(r["generated"] for r in recs) / wall,
            "generated": sum(r["generated"] for r in recs)}


async def measure(endpoint: str, url: str, counts: list[int], tokens: int, rounds: int) -> dict[str, Any]:
    """The paired rounds for every client count (see the module docstring for the record's shape)."""
    from openai import AsyncOpenAI

    from moed.clients.aio import AsyncClient

    direct = AsyncClient(endpoint, timeout=120, name="bench-direct")
    gateway = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    clients = {"direct": direct, "gateway": gateway}
    try:
        for path in PATHS:  # warm-up: connections open, the model's first steps done
            await _round(path, clients, max(counts), min(tokens, 8))
        out: dict[str, Any] = {}
        for n in counts:
            values: dict[str, dict[str, list[float]]] = {p: {m: [] for m in (*METRICS, "generated")} for p in PATHS}
            for r in range(rounds):
                for path in PATHS if r % 2 == 0 else PATHS[::-1]:
                    for m, v in (await _round(path, clients, n, tokens)).items():
                        values[path][m].append(v)
            out[str(n)] = summarise(values)
        return out
    finally:
        await direct.close()
        await gateway.close()


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else None


def summarise(values: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Medians per path, and per pair the ratio gateway / direct with its median."""
    ratio = {m: [g / d if d else float("nan") for g, d in zip(values["gateway"][m], values["direct"][m])]
             for m in METRICS}
    return {"values": values,
            "median": {p: {m: _median(values[p][m]) for m in METRICS} for p in PATHS},
            "ratio": ratio, "median_ratio": {m: _median(ratio[m]) for m in METRICS}}


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
    p.add_argument("--rounds", type=int, default=5, help="pairs per client count (default 5)")
    p.add_argument("--out", help="write the JSON here (default: print it)")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    started = time.time()
    with serving(args.store, max(counts)) as (endpoint, url):
        results = asyncio.run(measure(endpoint, url, counts, args.tokens, args.rounds))
    record = _json_safe({
        "command": "python -m bench.gateway_overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "store": os.path.abspath(args.store), "clients": counts, "tokens": args.tokens, "rounds": args.rounds,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seconds": time.time() - started,
        "results": results})
    text = json.dumps(record, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
