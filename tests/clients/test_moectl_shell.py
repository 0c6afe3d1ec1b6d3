"""moectl as a person meets it in a shell: --version, stdin prompts, --temp, a closed pipe, --wait, the progress
line, and `moectl chat` driven through a pseudo-terminal (type, read the screen, Ctrl-C mid-reply, commands)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import pytest
from fakedaemon import FakeDaemon, FakeRequest, gen_result, slow_generate
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients.cli import main
from moed.clients.cli_output import ProgressLine
from moed.clients.events import Progress

MOECTL = [sys.executable, "-m", "moed.clients.cli"]


def run(fake: FakeDaemon, *argv: str) -> int:
    return main(["--endpoint", fake.endpoint, *argv])


def test_version(capsys: pytest.CaptureFixture[str]):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("moectl ")


def test_prompt_from_stdin_with_dash_or_a_pipe(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a prompt\nover two lines\n"))
    assert run(fake, "generate", "-") == 0
    assert fake.requests[-1]["params"]["prompt"] == "a prompt\nover two lines\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("piped"))
    assert run(fake, "generate") == 0
    assert fake.requests[-1]["params"]["prompt"] == "piped"
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert run(fake, "generate", "-") == 2


def test_temp_is_the_same_option_as_temperature(fake: FakeDaemon):
    assert run(fake, "generate", "hi", "--temp", "0.5") == 0
    assert fake.requests[-1]["params"]["temperature"] == 0.5


def test_a_closed_pipe_ends_quietly_and_cancels_the_stream(fake: FakeDaemon):
    fake.on("generate", slow_generate(n=100000, interval=0.001))
    for argv in (["generate", "hi"], ["status"]):
        proc = subprocess.run(["bash", "-c", " ".join(MOECTL + ["--endpoint", fake.endpoint] + argv)
                               + " | head -c 3; echo \" ${PIPESTATUS[0]}\""], capture_output=True, text=True,
                              timeout=60)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
        assert proc.stdout.split()[-1] in ("141", "0")  # status may fit in the pipe before head closes it
    assert any(r["type"] == "cancel" for r in fake.requests)  # leaving the stream cancelled it on the daemon


def test_wait_for_ready(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]):
    states = iter(["loading", "loading", "ready"])
    fake.on("health", lambda r: (lambda s: r.ok({"ok": s == "ready", "state": s}))(next(states, "ready")))
    assert run(fake, "--wait", "10", "health") == 0
    fake.on("health", lambda r: r.ok({"ok": False, "state": "loading"}))
    assert run(fake, "--wait", "0.5", "status") == 5
    assert "still loading" in capsys.readouterr().err


def test_wait_without_a_daemon_is_unavailable(tmp_path: Any, capsys: pytest.CaptureFixture[str]):
    assert main(["--endpoint", f"ipc://{tmp_path}/none.sock", "--wait", "0.5", "status"]) == 3


def test_progress_line_shows_then_disappears():
    err = io.StringIO()
    line = ProgressLine(err, enabled=True)
    line.show(Progress("queued", 2))
    line.show(Progress("prefilling", 0))
    line.clear()
    assert "[queued (position 2)]" in err.getvalue() and "[prefilling]" in err.getvalue()
    assert err.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    ProgressLine(quiet, enabled=False).show(Progress("queued", 0))
    assert quiet.getvalue() == ""


# -- chat in a pseudo-terminal --------------------------------------------------------------------------------------
class Screen:
    """A child process on a pseudo-terminal: type into it, read what it shows."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its stdin, stdout and stderr are the terminal
            os.execv(argv[0], argv)
        self.text = ""

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def expect(self, what: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while what not in self.text:
            left = end - time.monotonic()
            assert left > 0, f"{what!r} never showed; the screen:\n{self.text}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.text += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
        assert what in self.text, self.text
        return self.text

    def exit_code(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:
                self.expect("\x00", timeout=0.1)
            except AssertionError:
                pass
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


def test_chat_at_a_terminal(fake: FakeDaemon):
    turns: list[list[str]] = []

    def handler(req: FakeRequest) -> None:
        turns.append([m["content"] for m in req.params["messages"]])
        if "long" in turns[-1][-1]:
            slow_generate(n=100000, interval=0.01)(req)
        else:
            req.chunk("Hello there.")
            req.ok(gen_result())

    fake.on("generate", handler)
    screen = Screen(MOECTL + ["--endpoint", fake.endpoint, "chat", "--system", "S"])
    screen.expect("chatting with qwen3_moe")
    screen.expect("/help lists the commands")
    screen.expect("> ")
    screen.type("/help\r")
    screen.expect("/reset")
    screen.type("hi\r")
    screen.expect("Hello there.")
    screen.type("tell me something long\r")
    screen.expect("t3 ")  # the reply is streaming
    screen.type("\x03")  # Ctrl-C, as a person presses it
    screen.expect("[reply cancelled]")
    screen.type("/reset\r")
    screen.expect("[conversation forgotten]")
    screen.type("again\r")
    screen.expect("Hello there.", timeout=30)
    screen.type("/exit\r")
    assert screen.exit_code() == 0
    assert turns[0] == ["S", "hi"] and turns[1][:3] == ["S", "hi", "Hello there."]
    assert turns[-1] == ["S", "again"]  # /help and /reset never reached the model; the cancelled turn was dropped
    assert not any(t[-1].startswith("/") for t in turns)
    assert any(r["type"] == "cancel" for r in fake.requests)
