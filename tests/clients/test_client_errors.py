"""How the client maps what goes wrong to its exceptions: error finals, deadlines, missing daemons and daemons
that break the protocol (bad frames, seq gaps, second finals, wrong fields)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakedaemon import FakeDaemon, FakeRequest, Handler, arun, gen_result, wait_until
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients import protocol
from moed.clients import (
    AsyncClient,
    Busy,
    Chunk,
    ContextOverflow,
    DaemonUnavailable,
    InvalidParams,
    MoedError,
    ProtocolViolation,
    RequestError,
    Timeout,
    UnsupportedVersion,
)


def call(endpoint: str, fn: Callable[[AsyncClient], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Run fn(client) on a fresh AsyncClient and return its result (or raise its exception)."""
    async def main() -> Any:
        async with AsyncClient(endpoint, timeout=timeout) as c:
            return await fn(c)

    return arun(main())


# -- error finals ---------------------------------------------------------------------------------------------------
def test_busy_carries_the_position(fake: FakeDaemon):
    fake.on("generate", lambda r: r.error("busy", "the queue is full", position=64))
    with pytest.raises(Busy) as e:
        call(fake.endpoint, lambda c: c.complete("hi"))
    assert (e.value.code, e.value.position, e.value.message) == ("busy", 64, "the queue is full")
    assert isinstance(e.value, RequestError) and e.value.request_id == fake.requests[-1]["id"]


@pytest.mark.parametrize("code, cls", [("context_overflow", ContextOverflow), ("store_error", RequestError),
                                       ("invalid_params", InvalidParams)])
def test_error_finals_map_to_their_exception(fake: FakeDaemon, code: str, cls: type[RequestError]):
    fake.on("generate", lambda r: r.error(code, "it went wrong"))
    with pytest.raises(cls) as e:
        call(fake.endpoint, lambda c: c.complete("hi"))
    assert type(e.value) is cls and e.value.code == code


def test_unknown_error_code_is_a_plain_request_error(fake: FakeDaemon):
    fake.on("status", lambda r: r.send({"v": 1, "id": r.id, "seq": 0, "type": "final", "status": "error",
                                        "error": {"code": "from_the_future", "message": "m", "hint": 1}}))
    with pytest.raises(RequestError) as e:
        call(fake.endpoint, lambda c: c.status())
    assert type(e.value) is RequestError and e.value.details == {"hint": 1}


def test_error_after_chunks_raises_mid_stream_without_cancelling(fake: FakeDaemon):
    def handler(req: FakeRequest) -> None:
        req.chunk("part")
        req.error("store_error", "expert 3 of layer 2 failed its checksum")

    fake.on("generate", handler)

    async def main(c: AsyncClient) -> None:
        stream = c.generate("hi")
        seen = []
        with pytest.raises(RequestError, match="checksum"):
            async for event in stream:
                seen.append(event)
        assert seen == [Chunk("part", (1,))] and stream.done and stream.text == "part"

    call(fake.endpoint, main)
    assert "cancel" not in fake.types()


def test_bad_params_are_refused_before_sending(fake: FakeDaemon):
    async def main(c: AsyncClient) -> None:
        for kwargs in ({"max_token": 5}, {"temperature": -1}, {"stop": "x"}, {"seed": 1.5}):
            with pytest.raises(InvalidParams):
                c.generate("hi", **kwargs)
        with pytest.raises(InvalidParams):
            c.generate("")
        with pytest.raises(InvalidParams, match="encode"):
            c.generate("hi", stop=[object()])
        with pytest.raises(InvalidParams):
            await c.governor_set()
        with pytest.raises(RequestError) as e:
            c.generate("x" * (protocol.MAX_MESSAGE_BYTES + 1))
        assert e.value.code in ("too_large", "invalid_params")

    call(fake.endpoint, main)
    assert "generate" not in fake.types()


def test_governor_is_not_available_yet(fake: FakeDaemon):
    with pytest.raises(RequestError) as e:
        call(fake.endpoint, lambda c: c.governor_get())
    assert e.value.code == "not_available"


# -- deadlines and missing daemons -----------------------------------------------------------------------------------
def test_no_answer_times_out_and_the_late_answer_is_dropped(fake: FakeDaemon):
    fake.on("status", lambda r: r.later(0.5, lambda: r.ok({})))

    async def main(c: AsyncClient) -> None:
        start = time.monotonic()
        with pytest.raises(Timeout):
            await c.status(timeout=0.2)
        assert 0.15 < time.monotonic() - start < 5  # loose: test machines may be loaded
        await asyncio.sleep(0.5)  # the late reply arrives for a request given up on
        assert not c.violations
        assert (await c.health()).ok  # the client is still usable

    call(fake.endpoint, main)


def test_a_silent_stream_times_out_and_is_cancelled(fake: FakeDaemon):
    fake.on("generate", lambda r: r.progress("queued", 0))

    async def main(c: AsyncClient) -> str:
        stream = c.generate("hi", timeout=0.3)
        with pytest.raises(Timeout):
            await stream.collect()
        return stream.request_id

    rid = call(fake.endpoint, main)
    wait_until(lambda: any(r["type"] == "cancel" and r["params"]["target"] == rid for r in fake.requests))


def test_missing_socket_file_is_daemon_unavailable_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="does not exist"):
        call(f"ipc://{tmp_path}/nothing.sock", lambda c: c.status(), timeout=10)
    assert time.monotonic() - start < 5


def test_no_hello_answer_is_daemon_unavailable():
    with FakeDaemon() as fake:
        fake.on("hello", lambda r: None)
        with pytest.raises(DaemonUnavailable, match="no daemon answered"):
            call(fake.endpoint, lambda c: c.status(), timeout=0.3)


def test_a_refused_connection_is_daemon_unavailable_at_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_UNIX) as u:  # a stale socket file: the daemon died without removing it
        u.bind(str(tmp_path / "stale.sock"))
    for endpoint in (f"tcp://127.0.0.1:{port}", f"ipc://{tmp_path}/stale.sock"):
        start = time.monotonic()
        with pytest.raises(DaemonUnavailable, match="nothing is listening"):
            call(endpoint, lambda c: c.health(), timeout=10)
        assert time.monotonic() - start < 5


def test_a_client_left_open_does_not_stall_the_others(fake: FakeDaemon):
    # Regression: its monitor kept reporting reconnect attempts after the monitor's reader was gone, which
    # blocked the shared ZeroMQ I/O thread and with it every other client in the process.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def leave_open() -> None:
        c = AsyncClient(f"tcp://127.0.0.1:{port}", timeout=1)
        with pytest.raises(DaemonUnavailable):
            await c.health()
        # not closed: asyncio.run cancels its tasks, its socket keeps retrying the refused port

    arun(leave_open())
    time.sleep(0.5)  # several reconnect attempts, each a monitor event
    assert call(fake.endpoint, lambda c: c.health()).ok


def test_daemon_exit_mid_stream_is_daemon_unavailable_before_the_deadline():
    fake = FakeDaemon().__enter__()
    fake.on("generate", lambda r: r.chunk("first"))

    async def main(c: AsyncClient) -> None:
        stream = c.generate("hi")
        assert isinstance(await stream.__anext__(), Chunk)
        fake.__exit__(None, None, None)
        start = time.monotonic()
        with pytest.raises(DaemonUnavailable):
            await stream.__anext__()
        assert time.monotonic() - start < 5
        with pytest.raises(DaemonUnavailable):  # next call: says hello again, finds nobody
            await c.status(timeout=0.3)

    call(fake.endpoint, main, timeout=30)


def test_unsupported_version(fake: FakeDaemon):
    fake.on("hello", lambda r: r.error("unsupported_version", "no", versions=[2]))
    with pytest.raises(UnsupportedVersion) as e:
        call(fake.endpoint, lambda c: c.status())
    assert e.value.details == {"versions": [2]}


def test_client_closed(fake: FakeDaemon):
    async def main() -> None:
        c = AsyncClient(fake.endpoint, timeout=5)
        await c.status()
        await c.close()
        with pytest.raises(MoedError, match="closed"):
            await c.status()

    arun(main())


# -- protocol violations ----------------------------------------------------------------------------------------------
def reply(req: FakeRequest, **fields: Any) -> None:
    req.send({"v": 1, "id": req.id, **fields})


VIOLATIONS: dict[str, Handler] = {
    "seq gap": lambda r: (r.progress("queued"), reply(r, seq=2, type="chunk", text="x", tokens=[])),
    "seq repeat": lambda r: (r.chunk("a"), reply(r, seq=0, type="chunk", text="b", tokens=[])),
    "bad chunk": lambda r: reply(r, seq=0, type="chunk", text=5, tokens=[]),
    "bad progress": lambda r: reply(r, seq=0, type="progress", state="thinking", position=0),
    "bad status": lambda r: reply(r, seq=0, type="final", status="maybe"),
    "missing stats": lambda r: r.ok({"done_reason": "stop"}),
    "bad done reason": lambda r: r.ok(gen_result("tired")),
    "two frames": lambda r: r.send_frames([b"", protocol.pack(protocol.ok(r.id, 0, gen_result()))]),
    "wrong version": lambda r: reply(r, v=9, seq=0, type="final", status="ok", result=gen_result()),
}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_protocol_violations_fail_the_request(fake: FakeDaemon, case: str):
    fake.on("generate", VIOLATIONS[case])
    with pytest.raises(ProtocolViolation):
        call(fake.endpoint, lambda c: c.complete("hi"))


def test_a_chunk_for_a_unary_request_is_a_violation(fake: FakeDaemon):
    fake.on("status", lambda r: r.chunk("?"))
    with pytest.raises(ProtocolViolation, match="chunk reply to a status request"):
        call(fake.endpoint, lambda c: c.status())


def test_a_bad_hello_result_is_a_violation(fake: FakeDaemon):
    fake.on("hello", lambda r: r.ok({"version": 9, "server": "x", "model_type": "m", "limits": {}}))
    with pytest.raises(ProtocolViolation, match="version 9"):
        call(fake.endpoint, lambda c: c.health())


def test_an_unreadable_frame_fails_every_request_in_flight(fake: FakeDaemon):
    waiting: list[FakeRequest] = []

    def handler(req: FakeRequest) -> None:
        waiting.append(req)
        if len(waiting) == 2:
            req.send_frames([b"\xc1 not msgpack"])

    fake.on("generate", handler)

    async def main(c: AsyncClient) -> Any:
        return await asyncio.gather(c.complete("a"), c.complete("b"), return_exceptions=True)

    outcomes = call(fake.endpoint, main)
    assert [type(o) for o in outcomes] == [ProtocolViolation, ProtocolViolation]


def test_a_bad_reply_fails_only_its_own_request(fake: FakeDaemon):
    def handler(req: FakeRequest) -> None:
        if req.params["prompt"] == "bad":
            reply(req, seq=0, type="chunk", text=None, tokens=[])
        else:
            req.later(0.1, lambda: (req.chunk("fine"), req.ok(gen_result())))

    fake.on("generate", handler)

    async def main(c: AsyncClient) -> Any:
        return await asyncio.gather(c.complete("bad"), c.complete("good"), return_exceptions=True)

    bad, good = call(fake.endpoint, main)
    assert isinstance(bad, ProtocolViolation) and good.text == "fine"


def test_a_second_final_and_an_unknown_id_are_recorded(fake: FakeDaemon):
    def twice(req: FakeRequest) -> None:
        req.ok({"ok": True, "state": "ready"})
        req.ok({"ok": True, "state": "ready"})
        reply(req, id="never-sent", seq=0, type="final", status="ok", result={})

    fake.on("health", twice)

    async def main(c: AsyncClient) -> list[str]:
        assert (await c.health()).ok
        for _ in range(100):
            if len(c.violations) == 2:
                break
            await asyncio.sleep(0.02)
        return [str(v) for v in c.violations]

    recorded = call(fake.endpoint, main)
    assert len(recorded) == 2
    assert "after the final of request" in recorded[0] and "unknown request 'never-sent'" in recorded[1]
