"""The governor inside the daemon, end to end: a daemon started with a sensor trace changes its batch ceiling,
prefetch depth, cache budget and pace as the trace says, visible in `moectl governor`, while concurrent clients
keep streaming exactly their solo greedy tokens across every change; governor_set from moectl takes effect."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import Conn, InProcess, check_sequence, tokens_of

from moed.clients.cli import main as moectl

PROMPTS = ["The governor of", "Four score and", "We hold these", "In the beginning"]
TOKENS = 48
# Seconds from the daemon's start. Cool and plugged in, then hot (SAVER: batch 1, no prefetch, paced), then
# memory pressure (the cache shrinks step by step), then all clear (relax a level per dwell; the cache regrows).
TRACE = [
    {"t": 0, "on_ac": True, "battery_percent": 90, "thermal": 0.1, "mem_pressure_some_avg10": 0.0},
    {"t": 5, "thermal": 0.75},
    {"t": 8, "mem_pressure_some_avg10": 50.0},
    {"t": 11, "thermal": 0.1, "mem_pressure_some_avg10": 0.0},
]
POLICY = {"dwell_s": 1.5, "batch_interval_s": 0.5, "cache_interval_s": 0.5, "cache_grow_interval_s": 0.5,
          "cache_shrink_step": 0.2, "cache_grow_step": 0.2, "pace_steps_per_s": [40.0, 40.0, 12.0, 6.0],
          "tick_s": 0.2, "fast_interval_s": 0.2}


@pytest.fixture(scope="module")
def store(model_dir):
    return model_dir("qwen3_moe", "store-mlx")


def generate(conn: Conn, rid: str, prompt: str) -> list[int]:
    replies = conn.call("generate", {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0.0}, rid=rid,
                        timeout=120)
    final = check_sequence(replies)
    assert final["status"] == "ok", final
    return tokens_of(replies)


def test_a_sensor_trace_drives_every_knob_and_tokens_stay_exact(store, tmp_path: Path, capsys):
    with InProcess(store, max_batch=4) as d:  # governor off: the solo runs
        conn = Conn(d.endpoint)
        solo = {p: generate(conn, f"solo-{i}", p) for i, p in enumerate(PROMPTS)}
        conn.close()
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps(r) for r in TRACE) + "\n")
    with InProcess(store, max_batch=4, governor="on", sensor_trace=str(trace), governor_policy=POLICY) as d:
        seen: list[dict] = []
        done = threading.Event()  # the whole trace was seen: hot, pressed, and all clear again

        def watch() -> None:
            c = Conn(d.endpoint)
            deadline = time.monotonic() + 120
            while not done.is_set() and time.monotonic() < deadline:
                st = c.result("status")
                seen.append({**st["governor"]["limits"], "state": st["governor"]["state"],
                             "applied_budget": st["cache"]["budget_bytes"], "max_batch": st["max_batch"]})
                full = seen[0]["cache_budget_bytes"]
                if any(x["cache_budget_bytes"] < full for x in seen) and seen[-1]["state"] == "PERFORMANCE" \
                        and seen[-1]["cache_budget_bytes"] == full and seen[-1]["max_batch"] == 4:
                    done.set()
                time.sleep(0.1)
            done.set()
            c.close()

        watcher = threading.Thread(target=watch)
        watcher.start()
        got: dict[str, list[int]] = {}

        def client(i: int, prompt: str) -> None:
            c = Conn(d.endpoint)
            for round_ in range(200):  # keep streaming through the whole trace
                got[f"{prompt}#{round_}"] = generate(c, f"c{i}-{round_}", prompt)
                if done.is_set():
                    break
            c.close()

        clients = [threading.Thread(target=client, args=(i, p)) for i, p in enumerate(PROMPTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(300)
        watcher.join()
        assert moectl(["--endpoint", d.endpoint, "governor", "show"]) == 0
        shown = capsys.readouterr().out

    for key, tokens in got.items():  # exact across every change of batch, prefetch, cache and pace
        assert tokens == solo[key.split("#")[0]], key
    assert len(got) >= 2 * len(PROMPTS)
    states = [s["state"] for s in seen]
    assert "SAVER" in states and states[-1] == "PERFORMANCE"
    saver = [s for s in seen if s["state"] == "SAVER"]
    assert {s["batch_ceiling"] for s in saver} == {1} and {s["prefetch_depth"] for s in saver} == {0}
    assert {s["pace_steps_per_s"] for s in saver} == {12.0}
    assert any(s["max_batch"] == 1 for s in seen)  # the daemon applied the ceiling (status reports it)
    full = seen[0]["cache_budget_bytes"]
    assert min(s["cache_budget_bytes"] for s in seen) < full  # shrunk under the pressure ...
    assert min(s["applied_budget"] for s in seen) < full  # ... and the cache was resized
    assert seen[-1]["cache_budget_bytes"] == full and seen[-1]["batch_ceiling"] == 4  # ... and all regrown
    assert "PERFORMANCE" in shown and "batch_ceiling" in shown and "cache_budget_bytes" in shown


def test_moectl_governor_profile_set_and_auto(store, tmp_path: Path, capsys):
    trace = tmp_path / "calm.jsonl"
    trace.write_text(json.dumps({"t": 0, "on_ac": True, "thermal": 0.0, "power_w": 150.0}) + "\n")
    policy = {"tick_s": 0.2, "dwell_s": 0.5, "batch_interval_s": 0.2, "pace_interval_s": 0.2}
    with InProcess(store, max_batch=4, governor="on", sensor_trace=str(trace), governor_policy=policy) as d:
        ep = ["--endpoint", d.endpoint]
        assert moectl([*ep, "governor", "profile", "saver", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["profile"] == "saver"
        assert moectl([*ep, "governor", "set", "batch_ceiling=2", "pace_steps_per_s=none"]) == 0
        capsys.readouterr()
        conn = Conn(d.endpoint)
        deadline = time.monotonic() + 10
        while conn.result("status")["max_batch"] != 2:  # within a tick, at the next step boundary
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert moectl([*ep, "governor", "set", "batch_ceiling=0"]) == 1  # the daemon refuses: nothing changes
        assert "batch_ceiling" in capsys.readouterr().err
        assert moectl([*ep, "governor", "set", "nonsense"]) == 2
        capsys.readouterr()
        assert moectl([*ep, "governor", "auto", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["profile"] == "auto" and st["overrides"] == {} and st["power_cap_w"] is None
        while conn.result("status")["max_batch"] != 4:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert moectl([*ep, "status"]) == 0
        assert "governor" in capsys.readouterr().out
        assert moectl([*ep, "governor", "cap", "100", "--json"]) == 0  # 150 W measured: the controller paces
        assert json.loads(capsys.readouterr().out)["power_cap_w"] == 100.0
        while conn.result("governor_get")["limits"]["pace_steps_per_s"] is None:
            assert time.monotonic() < deadline + 20
            time.sleep(0.05)
        assert "power cap 100 W" in conn.result("governor_get")["reasons"]["pace_steps_per_s"]
        assert moectl([*ep, "governor", "cap", "lots"]) == 2
        capsys.readouterr()
        assert moectl([*ep, "governor", "auto", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["power_cap_w"] is None
        conn.close()


def test_a_daemon_without_its_governor_says_so(store):
    with InProcess(store) as d:
        conn = Conn(d.endpoint)
        final = conn.call("governor_get")[-1]
        assert final["error"]["code"] == "not_available" and "governor" in final["error"]["message"]
        assert "governor" not in conn.result("status")
        conn.close()
