"""The Outbox against a scripted socket: contiguous seq while a slow client's chunks are merged, the slow_client
cap, and a vanished client (EHOSTUNREACH) cancelling its requests."""

from __future__ import annotations

import time

import zmq

from moed.clients import protocol as P
from moed.daemon.delivery import Outbox


class FakeSocket:
    """Accepts sends unless `blocked` (EAGAIN) or `gone` (EHOSTUNREACH); records what went out."""

    def __init__(self) -> None:
        self.blocked, self.gone, self.sent = False, False, []

    def send_multipart(self, frames, flags=0):
        if self.gone:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        if self.blocked:
            raise zmq.Again()
        self.sent.append(P.parse_reply(frames[1]))


def outbox(sock, **kw):
    calls = {"gone": [], "slow": []}
    box = Outbox(sock, on_gone=calls["gone"].append, on_slow=calls["slow"].append,
                 slow_bytes=kw.get("slow_bytes", 1 << 20), slow_s=kw.get("slow_s", 60.0))
    return box, calls


KEY = (b"client", "r1")


def test_slow_reader_gets_merged_chunks_with_contiguous_seq():
    sock = FakeSocket()
    box, calls = outbox(sock)
    box.open(KEY)
    box.post(KEY, "progress", {"state": "prefilling", "position": 0})
    box.post(KEY, "chunk", {"text": "a", "tokens": [1]})
    sock.blocked = True
    for i in range(2, 6):
        box.post(KEY, "chunk", {"text": chr(ord("a") + i - 1), "tokens": [i]})
    assert box.busy() and len(sock.sent) == 2
    sock.blocked = False
    box.retry()
    box.post(KEY, "ok", {"done_reason": "length"})
    assert [m["seq"] for m in sock.sent] == [0, 1, 2, 3]
    assert sock.sent[2]["text"] == "bcde" and sock.sent[2]["tokens"] == [2, 3, 4, 5]
    assert sock.sent[3]["type"] == "final" and not box.in_flight(KEY) and box.recently_finished(KEY)
    assert calls == {"gone": [], "slow": []}


def test_past_the_cap_the_request_fails_with_slow_client_once():
    sock = FakeSocket()
    box, calls = outbox(sock, slow_bytes=10)
    box.open(KEY)
    box.post(KEY, "chunk", {"text": "x", "tokens": [1]})
    sock.blocked = True
    box.post(KEY, "chunk", {"text": "y" * 20, "tokens": [2]})
    box.retry()
    assert calls["slow"] == [KEY]
    box.post(KEY, "chunk", {"text": "late", "tokens": [3]})  # dropped: the request is failing
    box.post(KEY, "error", {"code": "slow_client", "message": "from the scheduler"})  # swallowed
    sock.blocked = False
    box.retry()
    assert [m["seq"] for m in sock.sent] == [0, 1]
    assert sock.sent[1]["error"]["code"] == "slow_client" and not box.in_flight(KEY)


def test_blocked_too_long_fails_too():
    sock = FakeSocket()
    box, calls = outbox(sock, slow_s=0.05)
    box.open(KEY)
    sock.blocked = True
    box.post(KEY, "chunk", {"text": "x", "tokens": [1]})
    time.sleep(0.1)
    box.retry()
    assert calls["slow"] == [KEY]


def test_vanished_client_cancels_all_its_requests_and_only_its():
    sock = FakeSocket()
    box, calls = outbox(sock)
    other = (b"other", "r1")
    for key in (KEY, (b"client", "r2"), other):
        box.open(key)
    sock.gone = True
    box.post(KEY, "chunk", {"text": "x", "tokens": [1]})
    assert sorted(calls["gone"]) == [KEY, (b"client", "r2")]
    box.post(KEY, "ok", {"done_reason": "client_gone"})  # the scheduler's final retires the flight
    assert not box.in_flight(KEY) and box.in_flight(other) and box.in_flight((b"client", "r2"))
    sock.gone = False
    box.post(other, "ok", {"done_reason": "stop"})
    assert sock.sent[-1]["id"] == "r1" and not box.in_flight(other)


def test_one_shot_replies_wait_for_a_slow_reader():
    sock = FakeSocket()
    box, _ = outbox(sock)
    sock.blocked = True
    box.send_once(b"c", "s1", "ok", {"ok": True, "state": "ready"})
    box.send_once(b"c", None, "error", {"code": "malformed", "message": "bad"})
    sock.blocked = False
    box.retry()
    assert [(m["id"], m["seq"]) for m in sock.sent] == [("s1", 0), ("", 0)] and not box.busy()
