"""ps, cancel by daemon-wide id, and status's `requests` and `experts`, against a real daemon on the tiny model.

One connection streams a long (paced) generation; another lists it, watches the expert map, and cancels it by
the id ps gave; the first connection's stream ends with done reason cancelled. moectl does the same from "a
shell" (its own connection).
"""

from __future__ import annotations

import json
import time

import pytest

from daemon_harness import Conn, InProcess, check_sequence
from moed.clients import protocol as P
from moed.clients.cli import main as moectl

ROW_KEYS = {"id", "client", "state", "prompt_tokens", "generated_tokens", "age_s", "speculating", "verify_passes",
            "accepted_tokens"}


@pytest.fixture(scope="module")
def daemon(model_dir):
    with InProcess(model_dir("qwen3_moe", "store-mlx"), max_batch=4, context_limit=512,
                   cache_budget="30%") as d:
        yield d


def _start_paced(daemon: InProcess, conn: Conn, rid: str, name: str) -> None:
    """A generation that runs long enough to be listed and cancelled: the daemon is paced to 20 steps/s."""
    assert daemon.daemon.controls is not None
    daemon.daemon.controls.set_pace(20.0)
    assert conn.result("hello", {"versions": [1, 2], "client": name})["version"] == 2
    conn.send(rid, "generate", {"prompt": "Once upon a time", "max_tokens": 400})


def _poll(conn: Conn, what: str, until, timeout: float = 30.0, **params) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        result = conn.result(what, params or None)
        if until(result):
            return result
        assert time.monotonic() < deadline, f"{what} never showed what was expected: {result}"
        time.sleep(0.05)


def test_ps_lists_another_connections_request_and_cancel_by_its_id_ends_it(daemon: InProcess):
    owner, shell = Conn(daemon.endpoint), Conn(daemon.endpoint)
    try:
        _start_paced(daemon, owner, "mine-1", "alpha")
        decoding = _poll(shell, "ps", lambda r: any(x["state"] == "decoding" and x["generated_tokens"] > 0
                                                    for x in r["requests"]))
        (row,) = decoding["requests"]
        assert set(row) == ROW_KEYS and row["client"] == "alpha" and row["prompt_tokens"] > 0
        assert row["age_s"] >= 0 and row["id"] != "mine-1"  # daemon-wide, not the connection's own id
        status = shell.result("status")
        assert [r["id"] for r in status["requests"]] == [row["id"]]

        # another connection's id is not this connection's request: target still means "mine"
        refused = shell.call("cancel", {"target": "mine-1"})[-1]
        assert refused["status"] == "error" and refused["error"]["code"] == "not_found"

        assert shell.result("cancel", {"job": row["id"]}) == {"cancelled": True}
        final = check_sequence(owner.wait("mine-1"))
        assert final["status"] == "ok" and final["result"]["done_reason"] == "cancelled"
        assert final["v"] == P.VERSION and final["result"]["generated_tokens"] >= row["generated_tokens"]

        gone = shell.call("cancel", {"job": row["id"]})[-1]
        assert gone["status"] == "error" and gone["error"]["code"] == "not_found"
        assert shell.result("ps") == {"requests": []}
    finally:
        owner.close()
        shell.close()
        daemon.daemon.controls.set_pace(None)


def test_status_experts_map_is_published_when_asked(daemon: InProcess):
    conn = Conn(daemon.endpoint)
    try:
        assert conn.result("generate", {"prompt": "The king", "max_tokens": 4, "stream": False})["done_reason"]
        assert "experts" not in conn.result("status")
        status = _poll(conn, "status", lambda r: r["experts"]["layers"], detail=["experts"])
        layers = status["experts"]["layers"]
        assert [set(x) for x in layers] == [{"layer", "num_experts", "resident", "heat"}] * len(layers)
        resident = [e for x in layers for e in x["resident"]]
        heat = [h for x in layers for h in x["heat"]]
        assert resident and len(resident) == len(heat)
        assert all(0.0 <= h <= 1.0 for h in heat) and max(heat) == 1.0
        for x in layers:
            assert x["resident"] == sorted(set(x["resident"])) and all(0 <= e < x["num_experts"] for e in x["resident"])
        # a 30 % budget cannot hold every expert
        assert len(resident) < sum(x["num_experts"] for x in layers)
    finally:
        conn.close()


def test_version_1_requests_get_version_1_replies_and_no_version_2_features(daemon: InProcess):
    conn = Conn(daemon.endpoint)
    try:
        conn.sock.send(P.pack(P.request("old-ps", "ps", v=1)))
        (final,) = conn.wait("old-ps")
        assert final["v"] == 1 and final["error"]["code"] == "unknown_type"
        conn.sock.send(P.pack(P.request("old-st", "status", v=1)))
        (final,) = conn.wait("old-st")
        assert final["v"] == 1 and final["result"]["requests"] == []  # a new result field reaches v1 too
        conn.sock.send(P.pack(P.request("old-gen", "generate", {"prompt": "Hi", "max_tokens": 2}, v=1)))
        replies = conn.wait("old-gen")
        assert check_sequence(replies)["status"] == "ok" and {m["v"] for m in replies} == {1}
    finally:
        conn.close()


def test_moectl_ps_and_cancel_from_a_shell(daemon: InProcess, capsys: pytest.CaptureFixture[str]):
    owner = Conn(daemon.endpoint)
    try:
        _start_paced(daemon, owner, "job", "beta")
        deadline = time.monotonic() + 30
        while True:
            assert moectl(["--endpoint", daemon.endpoint, "ps", "--json"]) == 0
            rows = json.loads(capsys.readouterr().out)
            if rows and rows[0]["state"] == "decoding":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert moectl(["--endpoint", daemon.endpoint, "ps"]) == 0
        header, line = capsys.readouterr().out.splitlines()
        assert header.split()[:3] == ["ID", "CLIENT", "STATE"] and line.split()[:3] == [rows[0]["id"], "beta",
                                                                                         "decoding"]
        assert moectl(["--endpoint", daemon.endpoint, "cancel", rows[0]["id"]]) == 0
        assert capsys.readouterr().out == "cancelled\n"
        assert owner.wait("job")[-1]["result"]["done_reason"] == "cancelled"
        assert moectl(["--endpoint", daemon.endpoint, "cancel", rows[0]["id"]]) == 1
        assert "not_found" in capsys.readouterr().err
    finally:
        owner.close()
        daemon.daemon.controls.set_pace(None)
