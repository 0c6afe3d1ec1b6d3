"""The governor against a real power meter: NVML board power and energy per profile, and a power cap held by pacing.

    python -m bench.governor_power STORE [--budgets 100%,25%] [--profiles performance,balanced,saver]
        [--seconds 20] [--clients 4] [--cap-seconds 60] [--out F.json]

For each budget and profile: `moed serve STORE` (a subprocess, governor on, that profile) under `--clients`
concurrent greedy streams for `--seconds`; the board's energy counter (NVML) before and after gives average
watts and joules per token; the daemon's status gives tokens, decode bytes read per token and wasted prefetch bytes
(prefetched experts evicted unused x record bytes). Then the power cap (first budget, profile performance): the idle
draw (no load), the uncapped draw under load, a cap half-way between them set with governor_set, and the average
board power of every 10 s window after the controller settled, against the cap. A greedy request's tokens under
the cap are compared with the same request's uncapped tokens.

Needs pynvml (nvidia-ml-py) for the power figures; without it (this CPU) the power fields are null and the rest
still runs, so the script itself is tested here (tests/bench/test_governor_power.py). Results in
docs/performance.md (governor section).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from moed.clients import Client

PROMPT = "The history of the world is the history of"


class Meter:
    """NVML energy (mJ since the driver loaded) and power (mW), summed over the machine's GPUs; None without."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no NVML here: figures without power
            self._nvml, self._handles = None, []

    def energy_j(self) -> float | None:
        if self._nvml is None:
            return None
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0

    def power_w(self) -> float | None:
        if self._nvml is None:
            return None
        return sum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000.0

    def temp_c(self) -> float | None:
        if self._nvml is None:
            return None
        return max(self._nvml.nvmlDeviceGetTemperature(h, 0) for h in self._handles)


class Daemon:
    """`moed serve` in a subprocess on a private ipc endpoint."""

    def __init__(self, store: str, budget: str, profile: str, max_batch: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="moed-gp-", dir="/tmp")
        self.endpoint = f"ipc://{self.dir}/d.sock"
        Path(self.dir, "none.toml").write_text("")
        env = {**os.environ, "MOED_CONFIG": f"{self.dir}/none.toml", "MOED_STATE_DIR": self.dir}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moed.daemon.cli", "serve", store, "--endpoint", self.endpoint,
             "--cache-budget", budget, "--max-batch", str(max_batch), "--governor", "on",
             "--governor-profile", profile, "--read-mode", "buffered", "--log-level", "warning"],
            env=env, stderr=open(f"{self.dir}/err.log", "wb"))

    def client(self, timeout: float = 120.0) -> Client:
        return Client(self.endpoint, timeout=timeout, name="bench")

    def wait_ready(self, seconds: float = 600.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {Path(self.dir, 'err.log').read_text()[-2000:]}")
            try:
                with self.client(timeout=2.0) as c:
                    if c.health().ok:
                        return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        raise TimeoutError("the daemon did not become ready")

    def stop(self) -> None:
        try:
            with self.client(timeout=10.0) as c:
                c.shutdown()
        except Exception:  # noqa: BLE001
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(d: Daemon, clients: int, seconds: float, max_tokens: int = 64) -> int:
    """`clients` threads each streaming greedy requests until `seconds` pass; returns the tokens generated."""
    stop, counts = time.monotonic() + seconds, [0] * clients

    def one(i: int) -> None:
        with d.client() as c:
            while time.monotonic() < stop:
                r = c.generate(f"{PROMPT} {i}", max_tokens=max_tokens, temperature=0.0).collect()
                counts[i] += r.generated_tokens

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def greedy(d: Daemon, tokens: int = 32) -> list[int]:
    with d.client() as c:
        stream = c.generate(PROMPT, max_tokens=tokens, temperature=0.0)
        got = [t for e in stream if hasattr(e, "tokens") for t in e.tokens]
    return got


def profile_run(store: str, budget: str, profile: str, args: argparse.Namespace, meter: Meter,
                record_bytes: int) -> dict[str, Any]:
    d = Daemon(store, budget, profile, args.clients)
    try:
        d.wait_ready()
        load(d, args.clients, min(5.0, args.seconds))  # warm: compile kernels, fill the cache
        with d.client() as c:
            s0 = c.status()
        e0, t0 = meter.energy_j(), time.monotonic()
        tokens = load(d, args.clients, args.seconds)
        e1, t1 = meter.energy_j(), time.monotonic()
        with d.client() as c:
            s1 = c.status()
        gov = s1.raw.get("governor", {})
    finally:
        d.stop()
    dt, c0, c1 = t1 - t0, s0.cache, s1.cache
    joules = None if e0 is None or e1 is None else e1 - e0
    decode_tokens = c1.get("decode_tokens", 0) - c0.get("decode_tokens", 0)
    read = c1.get("decode_bytes_read", 0) - c0.get("decode_bytes_read", 0)
    loaded = c1.get("bytes_loaded", 0) - c0.get("bytes_loaded", 0)
    wasted = (c1.get("prefetch_wasted", 0) - c0.get("prefetch_wasted", 0)) * record_bytes
    return {"budget": budget, "profile": profile, "state": gov.get("state"), "limits": gov.get("limits"),
            "seconds": round(dt, 2), "tokens": tokens, "tok_s": tokens / dt,
            "avg_w": None if joules is None else joules / dt, "j_per_token": None if joules is None else joules / tokens,
            "bytes_read_per_token": read / decode_tokens if decode_tokens else None, "bytes_loaded": loaded,
            "wasted_prefetch_bytes": wasted, "wasted_fraction": wasted / loaded if loaded else 0.0,
            "hit_rate": c1.get("hit_rate"), "gpu_temp_c": meter.temp_c()}


def cap_run(store: str, budget: str, args: argparse.Namespace, meter: Meter) -> dict[str, Any]:
    d = Daemon(store, budget, "performance", args.clients)
    windows: list[dict[str, Any]] = []
    try:
        d.wait_ready()
        load(d, args.clients, 5.0)
        time.sleep(3.0)
        e0, t0 = meter.energy_j(), time.monotonic()
        time.sleep(5.0)
        idle_w = _avg(meter, e0, t0)
        reference = greedy(d)
        e0, t0 = meter.energy_j(), time.monotonic()
        tokens = load(d, args.clients, 10.0)
        uncapped_w, uncapped_tok_s = _avg(meter, e0, t0), tokens / 10.0
        cap = None if idle_w is None or uncapped_w is None else idle_w + 0.5 * (uncapped_w - idle_w)
        with d.client() as c:
            c.governor_set(power_cap_w=cap if cap else 1e9)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                e, t = meter.energy_j(), time.monotonic()
                if stop.wait(10.0):
                    break  # the load ended inside this window: it is not a capped window
                with d.client() as c:
                    gov = c.governor_get()
                windows.append({"t": round(t - t_cap, 1), "avg_w": _avg(meter, e, t),
                                "pace": gov["limits"]["pace_steps_per_s"]})

        t_cap = time.monotonic()
        sampler = threading.Thread(target=sample)
        sampler.start()
        capped_tokens = load(d, args.clients, args.cap_seconds)
        stop.set()
        sampler.join()
        under_cap = greedy(d)
    finally:
        d.stop()
    settled = [w for w in windows if w["t"] >= 20 and w["avg_w"] is not None]
    return {"budget": budget, "idle_w": idle_w, "uncapped_w": uncapped_w, "uncapped_tok_s": uncapped_tok_s,
            "cap_w": cap, "capped_tok_s": capped_tokens / args.cap_seconds, "windows": windows,
            "settled_max_error": max((abs(w["avg_w"] - cap) / cap for w in settled), default=None) if cap else None,
            "exact_under_cap": under_cap == reference}


def _avg(meter: Meter, e0: float | None, t0: float) -> float | None:
    e1 = meter.energy_j()
    return None if e0 is None or e1 is None else (e1 - e0) / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--budgets", default="100%,25%")
    p.add_argument("--profiles", default="performance,balanced,saver")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--cap-seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--no-cap", action="store_true", help="skip the power-cap run")
    p.add_argument("--no-profiles", action="store_true", help="only the power-cap run")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from moed.daemon.store.format import read_manifest

    record_bytes = read_manifest(args.store).layout.record_bytes
    meter = Meter()
    out: dict[str, Any] = {"nvml": meter.energy_j() is not None, "profiles": [], "cap": None}
    budgets = [b for b in args.budgets.split(",") if b]
    if not args.no_profiles:
        for budget in budgets:
            for profile in [x for x in args.profiles.split(",") if x]:
                row = profile_run(args.store, budget, profile, args, meter, record_bytes)
                out["profiles"].append(row)
                print(json.dumps(row), flush=True)
    if not args.no_cap:
        out["cap"] = cap_run(args.store, budgets[0], args, meter)
        print(json.dumps(out["cap"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
