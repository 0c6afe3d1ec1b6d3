"""`moectl chat` without messages: an interactive conversation that keeps its history.

At a terminal it opens with a line saying whom it talks to and how to leave, reads each message with line
editing (readline), streams the reply, and understands a few slash commands that never reach the model:

    /help           these commands
    /reset          forget the conversation (a --system message stays)
    /system TEXT    set the system message and forget the conversation
    /exit, /quit    leave (so do Ctrl-D and end of input)

Ctrl-C during a reply cancels that reply only; Ctrl-C at the prompt reminds how to leave. Piped input is read a
line per message, with no banner or prompt.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from . import exitcodes
from .errors import MoedError, RequestError
from .events import Result
from .sync import Client

HELP = """commands (never sent to the model):
  /help           this list
  /reset          forget the conversation (a --system message stays)
  /system TEXT    set the system message and forget the conversation
  /exit, /quit    leave (Ctrl-D too)
Ctrl-C stops a reply in progress."""

Turn = Callable[[list[dict[str, str]]], Result]


class ChatSession:
    """The conversation and its commands; `turn(messages)` runs one request and returns its Result."""

    def __init__(self, turn: Turn, system: str | None, interactive: bool) -> None:
        self._turn, self._system, self.interactive = turn, system, interactive
        self.history: list[dict[str, str]] = self._start()
        self.rc = exitcodes.OK

    def _start(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self._system}] if self._system else []

    def handle(self, line: str) -> bool:
        """One line typed: a command or a message. False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self._command(text)
        try:
            result = self._turn(self.history + [{"role": "user", "content": text}])
        except KeyboardInterrupt:
            print("\n[reply cancelled]", file=sys.stderr)
            return True
        except RequestError as e:  # one failed turn (busy, context overflow) does not end the session
            print(f"moectl: {e}", file=sys.stderr)
            self.rc = exitcodes.BUSY if e.code == "busy" else exitcodes.FAILED
            return True
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.text}]
        return True

    def _command(self, text: str) -> bool:
        name, _, arg = text.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            print(HELP, file=sys.stderr)
        elif name == "/reset":
            self.history = self._start()
            print("[conversation forgotten]", file=sys.stderr)
        elif name == "/system":
            self._system = arg.strip() or None
            self.history = self._start()
            print("[system message set; conversation forgotten]", file=sys.stderr)
        else:
            print(f"unknown command {name}: /help lists the commands", file=sys.stderr)
        return True


def run_repl(client: Client, args: argparse.Namespace, turn: Turn) -> int:
    interactive = sys.stdin.isatty()
    session = ChatSession(turn, args.system, interactive)
    if interactive:
        _banner(client)
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:  # Ctrl-D at the prompt
            print(file=sys.stderr)
            return session.rc
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D leaves)", file=sys.stderr)
            continue
        if not interactive and line == "":  # end of piped input
            return session.rc
        if not session.handle(line.rstrip("\n")):
            return session.rc


def _banner(client: Client) -> None:
    model: Any = "the model"
    try:
        model = client.status().model_type or model
    except MoedError:
        pass
    print(f"chatting with {model} at {client.endpoint}. Type a message and press Enter.\n"
          f"/help lists the commands; Ctrl-C stops a reply; /exit or Ctrl-D leaves.", file=sys.stderr)
