"""LoopSocket (clients/loopsocket.py) against a plain ZeroMQ peer: bursts in order, multipart messages whole, a send
at the high-water mark that waits for room, and close() while a send waits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq
import zmq.asyncio

from moed.clients.loopsocket import LoopSocket


@pytest.fixture
def endpoint(tmp_path) -> str:
    return f"ipc://{tmp_path}/loop.sock"


@pytest.fixture
def peer(endpoint: str) -> Iterator[zmq.Socket[bytes]]:
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)  # before bind: the accepted connection's pipe takes it from the listener
    sock.bind(endpoint)
    yield sock
    sock.close()


def _owner(endpoint: str, hwm: int = 1000) -> zmq.asyncio.Socket:
    sock = zmq.asyncio.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.connect(endpoint)
    return sock


def _big(i: int) -> bytes:
    return bytes([i]) * (256 << 10)  # 20 of these (5 MiB) overflow the kernel's buffers of a unix socket


async def _until(predicate, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.005)


def test_a_burst_arrives_in_order_and_multipart_messages_whole(endpoint: str, peer: zmq.Socket[bytes]):
    got: list[list[bytes]] = []

    async def main() -> None:
        owner = _owner(endpoint)
        io = LoopSocket(owner, got.append)
        try:
            await io.send(b"hello")
            assert peer.recv() == b"hello"
            for i in range(50):
                peer.send(str(i).encode())
            peer.send_multipart([b"a", b"b"])
            await _until(lambda: len(got) == 51)
        finally:
            io.close()
            owner.close()

    asyncio.run(main())
    assert got == [[str(i).encode()] for i in range(50)] + [[b"a", b"b"]]


def test_a_send_at_the_high_water_mark_waits_for_room(endpoint: str, peer: zmq.Socket[bytes]):
    async def main() -> list[bytes]:
        owner = _owner(endpoint, hwm=1)
        io = LoopSocket(owner, lambda frames: None)
        try:
            await io.send(b"first")  # connects; then fill the pipes and the kernel's buffers, the peer reading nothing
            sends = [asyncio.ensure_future(io.send(_big(i))) for i in range(20)]
            await asyncio.sleep(0.2)
            assert not all(s.done() for s in sends)  # some wait: a few fit in the pipes and the kernel's buffers
            received = []
            while len(received) < 21:  # reading makes room, and the waiting sends go out, in order
                try:
                    received.append(peer.recv(zmq.NOBLOCK))
                except zmq.Again:
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(asyncio.gather(*sends), 5)
            return received
        finally:
            io.close()
            owner.close()

    assert asyncio.run(main()) == [b"first", *(_big(i) for i in range(20))]


def test_close_wakes_a_waiting_send_which_raises(endpoint: str, peer: zmq.Socket[bytes]):
    async def main() -> None:
        owner = _owner(endpoint, hwm=1)
        io = LoopSocket(owner, lambda frames: None)
        try:
            await io.send(b"first")
            sends = [asyncio.ensure_future(io.send(_big(i))) for i in range(20)]
            await asyncio.sleep(0.2)
            io.close()
            results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 5)
            assert any(isinstance(r, zmq.ZMQError) for r in results)
        finally:
            owner.close()

    asyncio.run(main())
