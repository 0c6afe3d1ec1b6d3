"""The endpoint lock has one owner at a time, also while a daemon stops and others start."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from daemon_harness import Conn, short_dir, spawn_daemon, wait_ready
from moed.daemon import runtime
from moed.daemon.runtime import EndpointInUse, EndpointLock


@pytest.fixture
def endpoint():
    folder = short_dir()
    yield f"ipc://{folder}/d.sock"
    shutil.rmtree(folder, ignore_errors=True)


def test_one_owner_when_a_starter_opened_the_file_before_the_holder_let_go(endpoint, monkeypatch):
    holder = EndpointLock(endpoint).acquire()
    real_flock = runtime.fcntl.flock
    opened, go = threading.Event(), threading.Event()

    def flock(fd: int, op: int) -> None:
        if threading.current_thread().name == "starter" and not opened.is_set():
            opened.set()  # the starter has the file open and is about to lock it
            go.wait(10)
        real_flock(fd, op)

    monkeypatch.setattr(runtime.fcntl, "flock", flock)
    starter = EndpointLock(endpoint)
    t = threading.Thread(target=starter.acquire, name="starter")
    t.start()
    assert opened.wait(10)
    holder.release()  # the holder stops between the starter's open and its flock
    go.set()
    t.join(10)
    assert starter._fd is not None and starter.path.exists()
    with pytest.raises(EndpointInUse):  # a third daemon is refused: the starter is the only owner
        EndpointLock(endpoint).acquire()
    starter.release()
    assert not starter.path.exists()
    EndpointLock(endpoint).acquire().release()


def test_release_keeps_a_lock_file_that_is_no_longer_its_own(endpoint):
    lock = EndpointLock(endpoint).acquire()
    os.unlink(lock.path)
    lock.path.write_text("someone else's\n")  # the name now leads to another file
    lock.release()
    assert lock.path.read_text() == "someone else's\n"


def test_two_daemons_racing_a_stopping_one(model_dir, tmp_path):
    """A stops while B starts; C starts once A is gone: exactly one of B and C ends up serving."""
    store = model_dir("qwen3_moe", "store-mlx")
    folder = short_dir()
    endpoint = f"ipc://{folder}/d.sock"
    procs = []
    try:
        a = spawn_daemon(store, folder, log="a.log")
        procs.append(a)
        wait_ready(endpoint, timeout=120)
        c = Conn(endpoint)
        c.call("shutdown", timeout=30)
        c.close()
        b = spawn_daemon(store, folder, log="b.log")  # races A's stop
        procs.append(b)
        a.wait(60)
        third = spawn_daemon(store, folder, log="c.log")
        procs.append(third)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and b.poll() is None and third.poll() is None:
            time.sleep(0.2)
        assert [b.poll() is None, third.poll() is None].count(True) == 1, "one of the two must have given up"
        loser, log = (b, "b.log") if b.poll() is not None else (third, "c.log")
        assert loser.returncode != 0
        assert "another moed daemon" in open(os.path.join(folder, log)).read()
        wait_ready(endpoint, timeout=120)  # the winner serves
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except Exception:  # noqa: BLE001 - a stuck child is killed, never left behind
                    p.kill()
        shutil.rmtree(folder, ignore_errors=True)
