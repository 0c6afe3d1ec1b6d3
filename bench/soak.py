"""A bounded soak of the daemon: many clients for minutes with random lengths, cancels, abrupt disconnects and
poisoned requests, then the invariants that must still hold; prints (or writes) a JSON report.

    python -m bench.soak STORE [--clients 32] [--minutes 10] [--poison 0.01] [--seed N] [--out F.json]

It starts `moed serve STORE` as a subprocess on a private ipc endpoint (governor off, a fixed cache budget, no
config file), computes the solo answers first (each prompt of a fixed set, greedy, `--max-tokens` tokens, one
request at a time), warms up, and takes the baseline of the daemon's open file descriptors (/proc/PID/fd) and
threads (/proc/PID/task). Then `--clients` threads, each with its own DEALER connection speaking the wire protocol
(moed.clients.protocol, so every reply is checked as it arrives), loop until the time is up. Each request is one of:

- plain: a greedy streamed generate of a random prompt with a random max_tokens, read to its final;
- cancel: the same, cancelled (`cancel` by target) after a random number of chunks;
- disconnect: the same, and the connection is closed after a random number of chunks (no cancel; the daemon must
  notice and free the slot); the client goes on with a new connection;
- poison (`--poison`, a fraction): `top_k` above the model's vocabulary, which must be refused with
  `invalid_params` and hurt no other request.

A sampler reads the daemon's RSS, fds and threads every second. Afterwards, with every client gone: the daemon
must be idle (no request active or queued), every request that was read to the end must have exactly one final
(seq 0, 1, 2, ... with no gap; nothing after it), the daemon's own count of the finals it sent (status `finished`)
must match what the clients received plus at most one per abandoned request, every greedy answer that ended with
`length` or `stop` must equal the solo answer's first max_tokens tokens, a cancelled one (and what an abandoned
one got before the cut) a prefix of it, RSS must stay within dense weights + cache budget + the fixed overhead
(RSS_OVERHEAD_BYTES, as README.md states the bound), and fds and threads must be back to their baseline. The solo
answers are computed again at the end and must not have changed. The exit status is 1 when an invariant fails.

Why the solo answer of (prompt, n) is the first n tokens of the prompt's solo run of --max-tokens: greedy decode
of one request does not depend on max_tokens until it stops, so one solo run per prompt covers every n.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from moed.clients import protocol as P

PROMPTS = (
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog and",
    "We hold these truths to be self-evident, that all men are created equal,",
    "In a quiet harbour town by the northern sea, there lived an old sailor who",
    "Hello",
    "The history of the expert cache begins with",
    "List three colours:",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness,",
)
RSS_OVERHEAD_BYTES = 256 << 20  # the fixed overhead of the README's bound, as tests/daemon/test_memory_bound.py
KINDS = ("plain", "cancel", "disconnect", "poison")
REPLY_TIMEOUT_S = 120.0  # the longest silence a client allows (the daemon sends progress while a request waits)


# -- the daemon -------------------------------------------------------------------------------------------------------
def start_daemon(store: str, folder: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    (folder / "none.toml").write_text("")
    env = {**os.environ, "MOED_CONFIG": str(folder / "none.toml"), "MOED_STATE_DIR": str(folder),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "moed.daemon.cli", "serve", store, "--endpoint", f"ipc://{folder}/d.sock",
           "--governor", "off", "--cache-budget", args.cache_budget, "--read-mode", args.read_mode,
           "--max-batch", str(args.max_batch), "--queue-limit", str(args.queue_limit), "--log-level", "warning"]
    with open(folder / "daemon.log", "wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def proc_sample(pid: int) -> dict[str, int]:
    """The daemon's resident memory (VmRSS, VmHWM in bytes), open file descriptors and threads, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields["VmRSS"], "hwm": fields["VmHWM"], "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


class Sampler(threading.Thread):
    """Samples the daemon once a second until stopped: (seconds since start, rss, fds, threads)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="soak-sampler")
        self.pid, self.samples = pid, []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.wait(1.0):
            s = proc_sample(self.pid)
            self.samples.append([round(time.monotonic() - self._t0, 1), s["rss"], s["fds"], s["threads"]])

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- one connection --------------------------------------------------------------------------------------------------
@dataclass
class Req:
    """One request as its client saw it."""

    rid: str
    kind: str
    prompt: int = -1
    max_tokens: int = 0
    seq: int = 0
    finals: int = 0
    tokens: list[int] = field(default_factory=list)
    final: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


class Conn:
    """A DEALER connection whose replies are checked as they arrive (seq, one final, nothing after it)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.reqs: dict[str, Req] = {}
        self.stray: list[str] = []  # replies to ids this connection never sent

    def send(self, req: Req, type_: str, params: dict[str, Any]) -> None:
        self.reqs[req.rid] = req
        self.sock.send(P.pack(P.request(req.rid, type_, params)))

    def pump(self, done: Any, timeout: float = REPLY_TIMEOUT_S) -> bool:
        """Read replies until done() is true; False when the daemon stayed silent for `timeout` seconds."""
        while not done():
            if not self.sock.poll(int(timeout * 1000)):
                return False
            self._take(P.parse_reply(self.sock.recv()))
        return True

    def _take(self, msg: dict[str, Any]) -> None:
        req = self.reqs.get(msg["id"])
        if req is None:
            self.stray.append(msg["id"])
            return
        if req.finals:
            req.problems.append(f"a {msg['type']} after the final")
        if msg["seq"] != req.seq:
            req.problems.append(f"seq {msg['seq']}, expected {req.seq}")
        req.seq = msg["seq"] + 1
        if msg["type"] == "chunk":
            req.tokens.extend(msg["tokens"])
        elif msg["type"] == "final":
            req.finals += 1
            req.final = msg

    def close(self) -> None:
        self.sock.close(linger=0)


def solo(endpoint: str, max_tokens: int) -> list[dict[str, Any]]:
    """Each prompt alone, greedy: its tokens and done reason."""
    conn, out = Conn(endpoint), []
    try:
        for i, prompt in enumerate(PROMPTS):
            req = Req(f"solo-{i}", "plain", i, max_tokens)
            conn.send(req, "generate", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0})
            if not conn.pump(lambda: req.finals > 0) or req.final["status"] != "ok":  # type: ignore[index]
                raise RuntimeError(f"the solo run of prompt {i} failed: {req.final}")
            out.append({"tokens": req.tokens, "done_reason": req.final["result"]["done_reason"]})  # type: ignore
    finally:
        conn.close()
    return out


def unary(endpoint: str, type_: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    conn = Conn(endpoint)
    try:
        req = Req(f"{type_}-{time.monotonic_ns()}", type_)
        conn.send(req, type_, params or {})
        if not conn.pump(lambda: req.finals > 0, timeout=30):
            raise TimeoutError(f"no answer to {type_}")
        assert req.final is not None
        return req.final
    finally:
        conn.close()


# -- the clients -----------------------------------------------------------------------------------------------------
class Client(threading.Thread):
    """One soak client: requests of random kinds until `end` (monotonic), on its own connections."""

    def __init__(self, n: int, endpoint: str, end: float, args: argparse.Namespace, vocab: int) -> None:
        super().__init__(daemon=True, name=f"soak-client-{n}")
        self.n, self.endpoint, self.end, self.args, self.vocab = n, endpoint, end, args, vocab
        self.rng = random.Random(args.seed * 1000 + n)
        self.done: list[Req] = []  # requests read to their final (or not answered: problems say so)
        self.disconnected: list[Req] = []
        self.stray = 0
        self.error: str | None = None

    def run(self) -> None:
        conn, k = Conn(self.endpoint), 0
        try:
            while time.monotonic() < self.end:
                k += 1
                conn = self._one(conn, f"c{self.n}-{k}")
        except Exception as e:  # a client bug or a broken reply: reported, never silent
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.stray += len(conn.stray)
            conn.close()

    def _kind(self) -> str:
        if self.rng.random() < self.args.poison:
            return "poison"
        return self.rng.choices(("plain", "cancel", "disconnect"), (0.75, 0.15, 0.10))[0]

    def _one(self, conn: Conn, rid: str) -> Conn:
        kind = self._kind()
        req = Req(rid, kind, self.rng.randrange(len(PROMPTS)), self.rng.randint(1, self.args.max_tokens))
        params: dict[str, Any] = {"prompt": PROMPTS[req.prompt], "max_tokens": req.max_tokens, "temperature": 0.0}
        if kind == "poison":
            params |= {"temperature": 1.0, "top_k": self.vocab + 1}
        conn.send(req, "generate", params)
        if kind in ("cancel", "disconnect"):
            after = self.rng.randint(0, req.max_tokens)  # chunks to read first (0: while queued or prefilling)
            if not conn.pump(lambda: req.finals > 0 or len(req.tokens) >= after):
                req.problems.append("no reply before the cut")
            if kind == "disconnect" and not req.finals:
                self.stray += len(conn.stray)
                conn.close()
                self.disconnected.append(req)
                return Conn(self.endpoint)
            if kind == "cancel" and not req.finals:
                cancel = Req(rid + "-x", "cancel-request")
                conn.send(cancel, "cancel", {"target": rid})
                if not conn.pump(lambda: cancel.finals > 0):
                    req.problems.append("no final for its cancel")
                self._check_cancel(req, cancel)
        if not conn.pump(lambda: req.finals > 0):
            req.problems.append("no final")
        self.done.append(req)
        return conn

    @staticmethod
    def _check_cancel(req: Req, cancel: Req) -> None:
        f = cancel.final or {}
        ok = f.get("status") == "ok" or f.get("error", {}).get("code") == "not_found"
        if not ok or cancel.problems:
            req.problems.append(f"its cancel was answered {f} {cancel.problems}")


# -- the checks ------------------------------------------------------------------------------------------------------
def check(req: Req, answers: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(outcome, problem or None) of one request read to its end, against the solo answers."""
    if req.finals != 1 or req.final is None:
        return "no_final", f"{req.finals} finals"
    f = req.final
    if f["status"] == "error":
        code = f["error"]["code"]
        if req.kind == "poison":
            return code, None if code == "invalid_params" else "a poisoned request was not refused as invalid"
        return code, None if code == "busy" else f"error {code}: {f['error'].get('message')}"
    reason = f["result"]["done_reason"]
    if req.kind == "poison":
        return reason, "a poisoned request was served"
    if f["result"]["generated_tokens"] != len(req.tokens):
        return reason, f"generated_tokens {f['result']['generated_tokens']} but {len(req.tokens)} streamed"
    solo_tokens, solo_reason = answers[req.prompt]["tokens"], answers[req.prompt]["done_reason"]
    want = solo_tokens[:req.max_tokens]
    if reason == "cancelled":
        return reason, None if req.tokens == want[:len(req.tokens)] else "cancelled tokens not a prefix of solo"
    if reason == "length" and len(req.tokens) == req.max_tokens and req.tokens == want:
        return reason, None
    if reason == "stop" and solo_reason == "stop" and req.tokens == solo_tokens:
        return reason, None
    return reason, f"{reason} with {req.tokens[:8]}... ({len(req.tokens)}) != solo {want[:8]}... ({len(want)})"


def wait_idle(endpoint: str, timeout: float = 60.0) -> dict[str, Any]:
    """The daemon's status once nothing is active or queued (it has noticed every disconnect)."""
    end = time.monotonic() + timeout
    while True:
        status = unary(endpoint, "status")["result"]
        if (status["active"] == 0 and status["queued"] == 0) or time.monotonic() > end:
            return status
        time.sleep(0.5)


def settle(pid: int, baseline: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
    """The daemon's fds and threads, sampled until they are back at the baseline or `timeout` passes."""
    end = time.monotonic() + timeout
    while True:
        s = proc_sample(pid)
        if (s["fds"] <= baseline["fds"] and s["threads"] <= baseline["threads"]) or time.monotonic() > end:
            return s
        time.sleep(0.5)


def warm_up(endpoint: str, args: argparse.Namespace, vocab: int) -> None:
    """A few seconds of the soak's own traffic, so lazily started threads and buffers exist at the baseline."""
    short = argparse.Namespace(**{**vars(args), "seed": args.seed + 1})
    clients = [Client(n, endpoint, time.monotonic() + 3.0, short, vocab) for n in range(min(args.clients, 8))]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wait_idle(endpoint)


def bound_bytes(store: str, budget_bytes: int) -> dict[str, int]:
    from moed.daemon.store.format import read_manifest

    m = read_manifest(store)
    dense = sum((Path(store) / f).stat().st_size for f in m.dense_files)
    return {"dense_bytes": dense, "cache_budget_bytes": budget_bytes, "overhead_bytes": RSS_OVERHEAD_BYTES,
            "bound_bytes": dense + budget_bytes + RSS_OVERHEAD_BYTES}


def soak(store: str, args: argparse.Namespace) -> dict[str, Any]:
    vocab = int(json.loads((Path(store) / "config.json").read_text())["vocab_size"])
    folder = Path(tempfile.mkdtemp(prefix="moed-soak-", dir="/tmp"))  # ipc paths must be short
    endpoint = f"ipc://{folder}/d.sock"
    daemon = start_daemon(store, folder, args)
    try:
        _wait_ready(endpoint, daemon, folder)
        answers = solo(endpoint, args.max_tokens)
        warm_up(endpoint, args, vocab)
        time.sleep(2.0)
        baseline = proc_sample(daemon.pid)
        finished_before = unary(endpoint, "status")["result"].get("finished")
        sampler = Sampler(daemon.pid)
        sampler.start()
        t0 = time.monotonic()
        clients = [Client(n, endpoint, t0 + args.minutes * 60, args, vocab) for n in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.monotonic() - t0
        status = wait_idle(endpoint)
        after = settle(daemon.pid, baseline)
        sampler.stop()
        answers_after = solo(endpoint, args.max_tokens)
        budget = int(status["cache"]["budget_bytes"])
        record = report(store, args, clients, answers, answers_after, baseline, after, sampler.samples, status,
                        bound_bytes(store, budget), wall)
        return daemon_count(record, clients, finished_before, status.get("finished"))
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(endpoint: str, daemon: subprocess.Popen[bytes], folder: Path, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode}: "
                               f"{(folder / 'daemon.log').read_text()[-2000:]}")
        try:
            if unary(endpoint, "health")["result"]["ok"]:
                return
        except (TimeoutError, KeyError):
            pass
        time.sleep(0.3)
    raise TimeoutError("the daemon did not become ready")


def daemon_count(record: dict[str, Any], clients: list[Client], before: dict[str, int] | None,
                 after: dict[str, int] | None) -> dict[str, Any]:
    """Adds the daemon's own count of the finals it sent during the soak (status `finished`, by outcome): at least
    what the clients received, per outcome, plus one for each abandoned request the daemon had answered at least once
    and at most one for each abandoned request (one dropped with its connection before it arrived is not counted).
    Refused requests (`busy`) are answered before the scheduler counts anything, so they are left out."""
    if before is None or after is None:  # a daemon that does not report `finished`
        record["daemon_finished"] = None
        return record
    seen: Counter[str] = Counter()
    for kind_outcome, n in record["requests"]["outcomes"].items():
        if (outcome := kind_outcome.split(":", 1)[1]) != "busy":
            seen[outcome] += n
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    abandoned = [r for c in clients for r in c.disconnected]
    extra = sum(delta.values()) - sum(seen.values())
    heard = sum(1 for r in abandoned if r.seq > 0)
    ok = all(delta.get(o, 0) >= n for o, n in seen.items()) and heard <= extra <= len(abandoned)
    record["daemon_finished"] = {"during_soak": dict(sorted(delta.items())), "received_by_clients": dict(seen),
                                 "abandoned": len(abandoned), "abandoned_after_a_reply": heard}
    record["invariants"]["daemon_counted_one_final_each"] = ok
    record["ok"] = record["ok"] and ok
    return record


def report(store: str, args: argparse.Namespace, clients: list[Client], answers: list[dict[str, Any]],
           answers_after: list[dict[str, Any]], baseline: dict[str, int], after: dict[str, int],
           samples: list[list[float]], status: dict[str, Any], bound: dict[str, int], wall: float) -> dict[str, Any]:
    """The JSON record: counts, outcomes, problems, memory and the invariants (see the module docstring)."""
    done = [r for c in clients for r in c.done]
    kinds = Counter(r.kind for c in clients for r in (*c.done, *c.disconnected))
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    greedy_checked = 0
    for r in (r for c in clients for r in c.disconnected):  # what came before the cut must be right too
        solo_tokens = answers[r.prompt]["tokens"][:r.max_tokens]
        for p in r.problems + ([] if r.tokens == solo_tokens[:len(r.tokens)] else ["tokens not a prefix of solo"]):
            problems.append(f"{r.rid} ({r.kind}, prompt {r.prompt}, max_tokens {r.max_tokens}): {p}")
    for r in done:
        outcome, problem = check(r, answers)
        outcomes[f"{r.kind}:{outcome}"] += 1
        greedy_checked += r.kind != "poison" and outcome in ("length", "stop", "cancelled") and problem is None
        for p in ([problem] if problem else []) + r.problems:
            problems.append(f"{r.rid} ({r.kind}, prompt {r.prompt}, max_tokens {r.max_tokens}): {p}")
    rss_max = max([s[1] for s in samples] + [baseline["rss"], after["rss"]])
    invariants = {
        "every_request_one_final": all(r.finals == 1 and not r.problems for r in done),
        "greedy_equals_solo": not problems,
        "no_client_errors": not any(c.error for c in clients) and not any(c.stray for c in clients),
        "daemon_idle_after": status["active"] == 0 and status["queued"] == 0,
        "rss_within_bound": rss_max <= bound["bound_bytes"],
        "fds_back_to_baseline": after["fds"] <= baseline["fds"],
        "threads_back_to_baseline": after["threads"] <= baseline["threads"],
        "solo_unchanged_after": answers == answers_after,
        "poison_sent": kinds["poison"] > 0 or args.poison == 0,
    }
    tokens = sum(len(r.tokens) for c in clients for r in (*c.done, *c.disconnected))
    return {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "store": store, "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "store")},
        "wall_s": round(wall, 1),
        "requests": {"total": sum(kinds.values()), "by_kind": dict(kinds), "outcomes": dict(sorted(outcomes.items())),
                     "greedy_checked": int(greedy_checked), "tokens_streamed": tokens,
                     "tokens_per_s": round(tokens / wall, 1) if wall else None},
        "memory": {**bound, "rss_baseline_bytes": baseline["rss"], "rss_max_bytes": rss_max,
                   "rss_end_bytes": after["rss"], "vm_hwm_bytes": after["hwm"]},
        "fds": {"baseline": baseline["fds"], "end": after["fds"], "max": max([s[2] for s in samples] or [0])},
        "threads": {"baseline": baseline["threads"], "end": after["threads"],
                    "max": max([s[3] for s in samples] or [0])},
        "samples": {"every_s": 1, "columns": ["t_s", "rss_bytes", "fds", "threads"], "rows": samples[::5]},
        "client_errors": [c.error for c in clients if c.error],
        "problems": problems[:50], "problem_count": len(problems),
        "invariants": invariants, "ok": all(invariants.values()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--poison", type=float, default=0.01, help="the fraction of poisoned requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=48, help="the longest random max_tokens (and the solo runs')")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--queue-limit", type=int, default=64)
    ap.add_argument("--cache-budget", default="50%")
    ap.add_argument("--read-mode", default="direct")
    ap.add_argument("--out", help="write the JSON here (else stdout)")
    args = ap.parse_args(argv)
    record = soak(args.store, args)
    text = json.dumps(record, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(json.dumps({"ok": record["ok"], "invariants": record["invariants"], "requests": record["requests"]}))
    else:
        print(text)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
