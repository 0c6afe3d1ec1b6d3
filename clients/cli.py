"""moectl: talk to a running moed daemon from the shell (status, health, ps, generate, chat, cancel, shutdown).

    moectl [--endpoint E] [--key-file F] [--timeout S] [--wait S] COMMAND [options]   (these may also follow COMMAND)

Each command is one `cmd_*` function below; its docstring gives the request it sends, the reply it prints and
its usage. Text goes to stdout, statistics, progress and errors to stderr; --json prints one JSON object instead.
Exit codes are moed's and moectl's one scheme (exitcodes.py, docs/cli.md). Needs only pyzmq and msgpack (no MLX).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import exitcodes
from .chat_repl import run_repl
from .cli_governor import GovernorUsage, add_arguments as governor_arguments, cmd_governor
from .cli_output import ProgressLine, print_json, ps_table, stats_line, status_rows, table
from .errors import Busy, DaemonUnavailable, MoedError, Timeout
from .events import Chunk, Progress, Result
from .keys import KeyFileError, load_client_key
from .sync import Client, SyncStream

EXIT_OK, EXIT_REQUEST, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_BUSY, EXIT_TIMEOUT, EXIT_INTERRUPTED = (
    exitcodes.OK, exitcodes.FAILED, exitcodes.USAGE, exitcodes.UNAVAILABLE, exitcodes.BUSY, exitcodes.TIMEOUT,
    exitcodes.INTERRUPTED)
ROLES = ("system", "user", "assistant")

Command = Callable[[Client, argparse.Namespace], int]


# -- commands -----------------------------------------------------------------------------------------------------
def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """Show the daemon's state, model, load, cache and reads.

    Request: status {}.  Reply: ok {state, model_type, store, active, queued, max_batch, queue_limit, cache,
    uptime_s, version}.  Usage: moectl status [--json]
    """
    st = client.status()
    if args.json:
        print_json(st.raw)
    else:
        table(status_rows(st))
    return EXIT_OK


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    """Print the daemon's state; exit 0 only if it admits work (ok), else 1.

    Request: health {}.  Reply: ok {ok, state}.  Usage: moectl health [--json]
    """
    h = client.health()
    if args.json:
        print_json({"ok": h.ok, "state": h.state, **({"reason": h.reason} if h.reason else {})})
    else:
        print(f"{h.state}: {h.reason}" if h.reason else h.state)
    return EXIT_OK if h.ok else EXIT_REQUEST


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    """Complete a prompt: text streams to stdout as it comes, stats go to stderr.

    Request: generate {prompt, max_tokens, temperature, top_p, top_k, min_p, seed, stop} (only the options given).
    Replies: progress*, chunk*, then final ok {done_reason, prompt_tokens, generated_tokens, ..._ns, cache_hits,
    cache_misses, bytes_read}.  PROMPT `-`, or no PROMPT with piped input, reads the prompt from stdin. While the
    request is queued or prefilling, a progress line shows on stderr (at a terminal). --no-stream prints the text
    only at the end (the request still streams, so --timeout stays a silence limit); --json prints the result
    with its text as one JSON object.
    --no-speculate turns speculative decoding off for this request, --speculate asks for it where the daemon allows
    it (param `speculate`, protocol version 3; the tokens are the same either way); the stats then add the drafts
    accepted per pass.
    Usage: moectl generate [PROMPT | -] [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--min-p P]
           [--seed S] [--stop S ...] [--speculate | --no-speculate] [--no-stream] [--json]
    """
    result = _run_stream(client.generate(_prompt(args), **_sampling(args, client)), args)
    if args.json:
        print_json(result.as_dict())
    else:
        print(stats_line(result) + _speculation_note(result), file=sys.stderr)
    return EXIT_OK


def cmd_chat(client: Client, args: argparse.Namespace) -> int:
    """Chat: one reply to the messages given, or an interactive session that keeps the history.

    Request: generate {messages: [{role, content}, ...], sampling options}; replies as for generate.
    MESSAGE is `TEXT` (a user message) or `ROLE:TEXT` with ROLE system|user|assistant. Without messages, an
    interactive session (chat_repl.py): at a terminal it says whom it talks to and how to leave; /help lists its
    commands (/reset, /system TEXT, /exit), which never reach the model; Ctrl-C during a reply cancels just that
    reply. Piped input is one user message per line.
    Usage: moectl chat [MESSAGE ...] [--system TEXT] [sampling options as generate] [--no-stream] [--json]
    """
    history = [{"role": "system", "content": args.system}] if args.system else []
    if args.messages:
        messages = history + [_message(m) for m in args.messages]
        result = _run_stream(client.chat(messages, **_sampling(args, client)), args)
        if args.json:
            print_json(result.as_dict())
        else:
            print(stats_line(result) + _speculation_note(result), file=sys.stderr)
        return EXIT_OK

    def turn(messages: list[dict[str, str]]) -> Result:
        result = _run_stream(client.chat(messages, **_sampling(args, client)), args)
        if args.json:
            print_json(result.as_dict())
        else:
            print(stats_line(result) + _speculation_note(result), file=sys.stderr)
        return result

    return run_repl(client, args, turn)


def cmd_ps(client: Client, args: argparse.Namespace) -> int:
    """List the requests the daemon holds, from every client: id, client, state, tokens, age.

    Request: ps {}.  Reply: ok {requests: [{id, client, state, prompt_tokens, generated_tokens, age_s}, ...]}.
    The id is daemon-wide: `moectl cancel ID` stops that request, whichever process sent it.
    Usage: moectl ps [--json]
    """
    rows = client.ps()
    if args.json:
        print_json([r.as_dict() for r in rows])
    else:
        ps_table(rows)
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """Cancel a request by the id `moectl ps` shows, whichever client sent it.

    The request's own client gets its final with done_reason cancelled (the tokens so far stay with it). Any
    connection to the daemon's socket may do this: the socket is private to the user who runs the daemon.

    Request: cancel {job}.  Reply: ok {cancelled} or error not_found.  Usage: moectl cancel ID
    """
    cancelled = client.cancel_job(args.id)
    print("cancelled" if cancelled else "not running (already finished)")
    return EXIT_OK


def cmd_shutdown(client: Client, args: argparse.Namespace) -> int:
    """Ask the daemon to drain (finish or stop its streams) and exit.

    Request: shutdown {}.  Reply: ok {}.  Usage: moectl shutdown
    """
    client.shutdown()
    print("the daemon is shutting down")
    return EXIT_OK


# -- streaming and output -------------------------------------------------------------------------------------------
def _run_stream(stream: SyncStream, args: argparse.Namespace) -> Result:
    """Read a stream to its end, echoing chunks to stdout unless --no-stream / --json; returns the Result."""
    echo = not (args.no_stream or args.json)
    progress = ProgressLine()
    with stream:  # leaving early (Ctrl-C, an error, a closed stdout) cancels the request on the daemon
        for event in stream:
            if isinstance(event, Progress):
                progress.show(event)
                continue
            progress.clear()
            if echo and isinstance(event, Chunk):
                sys.stdout.write(event.text)
                sys.stdout.flush()
    progress.clear()
    assert stream.result is not None  # the stream ended with its final
    if not args.json:
        if not echo:
            sys.stdout.write(stream.result.text)
        if not stream.result.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    return stream.result


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        text = sys.stdin.read()
        if not text.strip():
            raise UsageError("the prompt read from stdin is empty")
        return text
    if args.prompt is None:
        raise UsageError("no prompt: give PROMPT, or `-` (or a pipe) to read it from stdin")
    return str(args.prompt)


class UsageError(Exception):
    """A command line that makes no sense once parsed (exit 2)."""


def _message(arg: str) -> dict[str, str]:
    role, sep, text = arg.partition(":")
    if sep and role in ROLES:
        return {"role": role, "content": text.lstrip()}
    return {"role": "user", "content": arg}


def _sampling(args: argparse.Namespace, client: Client) -> dict[str, Any]:
    """The sampling options given on the command line (the daemon's defaults apply to the others). With
    --speculate / --no-speculate, hello comes first: the request is checked against the version the daemon
    speaks (`speculate` needs version 3), not the version 1 of a request framed before hello."""
    names = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "speculate")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if "speculate" in given and client.async_client.server is None:
        client.hello()
    return given


def _speculation_note(r: Result) -> str:
    """The stats line's speculation part: drafts accepted and tokens per decode pass (none if it never drafted)."""
    drafted, accepted, passes = (r.raw.get(k) for k in ("draft_tokens", "accepted_tokens", "verify_passes"))
    if not isinstance(drafted, int) or not drafted or not isinstance(accepted, int) or not isinstance(passes, int):
        return ""
    return (f" | speculation: {accepted} of {drafted} drafts accepted, "
            f"{r.generated_tokens / max(passes, 1):.2f} tokens per pass")


# -- parser and entry point -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moectl", description="Talk to a running moed daemon.", epilog=exitcodes.SUMMARY)
    p.add_argument("--version", action="version", version=f"moectl {_version()}")
    _connection_options(p, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, fn in COMMANDS.items():
        doc = (fn.__doc__ or "").strip()
        sp = sub.add_parser(name, parents=[common], help=doc.splitlines()[0], epilog=exitcodes.SUMMARY,
                            description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(run=fn)
        if name in ("status", "health", "ps", "clear-quarantine"):
            sp.add_argument("--json", action="store_true", help="print the result as JSON")
        elif name in ("generate", "chat"):
            _generate_options(sp, chat=name == "chat")
        elif name == "cancel":
            sp.add_argument("id", help="the request's id, as `moectl ps` shows it")
        elif name == "governor":
            governor_arguments(sp)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moed")
    except PackageNotFoundError:
        return "unknown"


def _connection_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    # Given before the command they set the default; after it they override (SUPPRESS keeps the first one).
    p.add_argument("--endpoint", default=None if defaults else argparse.SUPPRESS,
                   help="daemon endpoint (default: $MOED_ENDPOINT, else the per-user ipc socket)")
    p.add_argument("--timeout", type=float, default=30.0 if defaults else argparse.SUPPRESS,
                   help="seconds to wait for a reply; for streams, the longest silence (default 30)")
    p.add_argument("--key-file", default=None if defaults else argparse.SUPPRESS, metavar="FILE",
                   help="CURVE key file for a tcp endpoint (`moed keys client NAME`; default: $MOED_CLIENT_KEY)")
    p.add_argument("--wait", type=float, default=0.0 if defaults else argparse.SUPPRESS, metavar="S",
                   help="first wait up to S seconds for the daemon to be ready (default 0: don't wait)")


def _generate_options(p: argparse.ArgumentParser, chat: bool) -> None:
    if chat:
        p.add_argument("messages", nargs="*", metavar="MESSAGE", help="TEXT or ROLE:TEXT; none: read stdin")
        p.add_argument("--system", help="a system message to start the conversation with")
    else:
        p.add_argument("prompt", nargs="?", help="the prompt; `-` or none with piped input: read stdin")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", "--temp", type=float, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", metavar="S", help="a stop string (repeat for several)")
    p.add_argument("--speculate", action=argparse.BooleanOptionalAction, default=None,
                   help="speculative decoding for this request: --no-speculate turns it off, --speculate asks for it "
                        "where the daemon allows it (default: the daemon's setting; the tokens are the same)")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of as it comes")
    p.add_argument("--json", action="store_true", help="print the result (text and stats) as one JSON object")


def cmd_clear_quarantine(client: Client, args: argparse.Namespace) -> int:
    """Put experts quarantined after failed reads back in service (re-read and re-verified on next use).

    Request: clear_quarantine {}.  Reply: ok {cleared}.  Usage: moectl clear-quarantine [--json]
    """
    n = client.clear_quarantine()
    if args.json:
        print_json({"cleared": n})
    else:
        print(f"{n} expert(s) back in service")
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "status": cmd_status, "health": cmd_health, "ps": cmd_ps, "generate": cmd_generate, "chat": cmd_chat,
    "cancel": cmd_cancel, "shutdown": cmd_shutdown, "governor": cmd_governor,
    "clear-quarantine": cmd_clear_quarantine,
}


def exit_code(e: BaseException) -> int:
    """The exit code for an exception from a command."""
    for cls, code in ((Busy, EXIT_BUSY), (DaemonUnavailable, EXIT_UNAVAILABLE), (Timeout, EXIT_TIMEOUT),
                      (KeyboardInterrupt, EXIT_INTERRUPTED), (UsageError, EXIT_USAGE), (GovernorUsage, EXIT_USAGE),
                      (KeyFileError, EXIT_USAGE)):
        if isinstance(e, cls):
            return code
    return EXIT_REQUEST


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2); returned so tests can call main()
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        curve = load_client_key(args.key_file) if args.key_file else None
        with Client(args.endpoint, timeout=args.timeout, name="moectl", curve=curve) as client:
            if args.wait > 0:
                wait_ready(client, args.wait)
            rc: int = args.run(client, args)
            return rc
    except (MoedError, KeyboardInterrupt, UsageError, GovernorUsage, KeyFileError) as e:
        print(f"moectl: {_describe(e)}", file=sys.stderr)
        return exit_code(e)
    except BrokenPipeError:  # `moectl status | head`: the reader left; end quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush finds nothing to complain about
        return exitcodes.BROKEN_PIPE


def wait_ready(client: Client, seconds: float) -> None:
    """Poll health until the daemon admits work; Timeout (or DaemonUnavailable if it never answered) after
    `seconds`."""
    deadline, state, last = time.monotonic() + seconds, None, None
    while True:
        try:
            h = client.health()
            if h.ok:
                return
            state = h.state
        except (DaemonUnavailable, Timeout) as e:
            last = e
        if time.monotonic() >= deadline:
            if state is None and last is not None:
                raise DaemonUnavailable(f"no daemon answered within --wait {seconds:g} s ({last})")
            raise Timeout(f"the daemon was still {state} after --wait {seconds:g} s")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, Busy) and e.position is not None:
        return f"{e} (the queue is full; position {e.position})"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
