"""moectl: talk to a running moed daemon from the shell (status, health, generate, chat, cancel, shutdown).

    moectl [--endpoint E] [--timeout S] COMMAND [options]      (the two options may also follow COMMAND)

Each command is one `cmd_*` function below; its docstring gives the request it sends, the reply it prints and
its usage. Text goes to stdout, statistics and errors to stderr; --json prints one JSON object instead.
Exit codes: 0 ok, 1 request error (any error final, a protocol violation), 2 usage, 3 daemon unavailable,
4 busy, 5 timeout, 130 interrupted (a stream in progress is cancelled first).
Needs only pyzmq and msgpack (no MLX).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import Busy, DaemonUnavailable, MoedError, RequestError, Timeout
from .events import Chunk, Result
from .sync import Client, SyncStream

EXIT_OK, EXIT_REQUEST, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_BUSY, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5, 130
ROLES = ("system", "user", "assistant")

Command = Callable[[Client, argparse.Namespace], int]


# -- commands -----------------------------------------------------------------------------------------------------
def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """Show the daemon's state, model, load and cache.

    Request: status {}.  Reply: ok {state, model_type, store, active, queued, max_batch, queue_limit, cache,
    uptime_s, version}.  Usage: moectl status [--json]
    """
    st = client.status()
    if args.json:
        return _print_json(st.raw)
    rows = [("state", st.state), ("model", st.model_type), ("store", st.store),
            ("active", f"{st.active} of max_batch {st.max_batch}"), ("queued", f"{st.queued} of {st.queue_limit}"),
            ("uptime", f"{st.uptime_s:.1f} s"), ("version", st.version),
            ("cache", " ".join(f"{k}={_num(v)}" for k, v in sorted(st.cache.items())))]
    for name, value in rows:
        print(f"{name:<8} {value}")
    return EXIT_OK


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    """Print the daemon's state; exit 0 only if it admits work (ok), else 1.

    Request: health {}.  Reply: ok {ok, state}.  Usage: moectl health [--json]
    """
    h = client.health()
    if args.json:
        _print_json({"ok": h.ok, "state": h.state})
    else:
        print(h.state)
    return EXIT_OK if h.ok else EXIT_REQUEST


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    """Complete a prompt: text streams to stdout as it comes, stats go to stderr.

    Request: generate {prompt, max_tokens, temperature, top_p, top_k, min_p, seed, stop} (only the options given).
    Replies: progress*, chunk*, then final ok {done_reason, prompt_tokens, generated_tokens, ..._ns, cache_hits,
    cache_misses, bytes_read}.  --no-stream prints the text only at the end (the request still streams, so
    --timeout stays a silence limit); --json prints the result with its text as one JSON object.
    Usage: moectl generate PROMPT [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--min-p P]
           [--seed S] [--stop S ...] [--no-stream] [--json]
    """
    result = _run_stream(client.generate(args.prompt, **_sampling(args)), args)
    if args.json:
        return _print_json(result.as_dict())
    _print_stats(result)
    return EXIT_OK


def cmd_chat(client: Client, args: argparse.Namespace) -> int:
    """Chat: one reply to the messages given, or an interactive session that keeps the history.

    Request: generate {messages: [{role, content}, ...], sampling options}; replies as for generate.
    MESSAGE is `TEXT` (a user message) or `ROLE:TEXT` with ROLE system|user|assistant. Without messages, reads one
    user message per line from stdin and answers each (/reset forgets the history, /exit or end of input stops;
    Ctrl-C during a reply cancels just that reply).
    Usage: moectl chat [MESSAGE ...] [--system TEXT] [sampling options as generate] [--no-stream] [--json]
    """
    history = [{"role": "system", "content": args.system}] if args.system else []
    if args.messages:
        result = _run_stream(client.chat(history + [_message(m) for m in args.messages], **_sampling(args)), args)
        if args.json:
            return _print_json(result.as_dict())
        _print_stats(result)
        return EXIT_OK
    return _repl(client, args, history)


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """Cancel a request by id (only requests of the same connection can be cancelled).

    The daemon scopes request ids to the connection that sent them, so this reaches only requests of this
    moectl's own connection: for a request of another process it reports not_found (see docs/protocol.md).

    Request: cancel {target}.  Reply: ok {cancelled} or error not_found.  Usage: moectl cancel ID
    """
    cancelled = client.cancel(args.id)
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
    with stream:  # leaving early (Ctrl-C, an error) cancels the request on the daemon
        for event in stream:
            if echo and isinstance(event, Chunk):
                sys.stdout.write(event.text)
                sys.stdout.flush()
    assert stream.result is not None  # the stream ended with its final
    if not args.json:
        if not echo:
            sys.stdout.write(stream.result.text)
        if not stream.result.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    return stream.result


def _repl(client: Client, args: argparse.Namespace, history: list[dict[str, str]]) -> int:
    system, rc = list(history), EXIT_OK
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return rc
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            history = list(system)
            continue
        if not text.strip():
            continue
        try:
            result = _run_stream(client.chat(history + [{"role": "user", "content": text}], **_sampling(args)), args)
        except KeyboardInterrupt:
            print("\n[cancelled]", file=sys.stderr)
            continue
        except RequestError as e:  # one failed turn (busy, context overflow) does not end the session
            print(f"moectl: {e}", file=sys.stderr)
            rc = exit_code(e)
            continue
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.text}]
        if args.json:
            _print_json(result.as_dict())
        else:
            _print_stats(result)


def _print_stats(r: Result) -> None:
    n = r.cache_hits + r.cache_misses
    print(f"[{r.done_reason}] {r.prompt_tokens} prompt + {r.generated_tokens} generated tokens | "
          f"queue {_ms(r.queue_ns)} | prefill {_ms(r.prefill_ns)} ({r.prefill_tps:.1f} tok/s) | "
          f"decode {_ms(r.decode_ns)} ({r.decode_tps:.1f} tok/s) | cache {r.hit_rate:.0%} hits of {n} | "
          f"{_bytes(r.bytes_read)} read", file=sys.stderr)


def _print_json(obj: Any) -> int:
    print(json.dumps(obj, default=str))
    return EXIT_OK


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def _bytes(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size, units = n / 1000, ["kB", "MB", "GB", "TB"]
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{size:.1f} {units[0]}"


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _message(arg: str) -> dict[str, str]:
    role, sep, text = arg.partition(":")
    if sep and role in ROLES:
        return {"role": role, "content": text.lstrip()}
    return {"role": "user", "content": arg}


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line (the daemon's defaults apply to the others)."""
    names = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


# -- parser and entry point -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moectl", description="Talk to a running moed daemon.",
                                epilog="exit codes: 0 ok, 1 request error, 2 usage, 3 daemon unavailable, 4 busy, "
                                       "5 timeout")
    _connection_options(p, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, fn in COMMANDS.items():
        doc = (fn.__doc__ or "").strip()
        sp = sub.add_parser(name, parents=[common], help=doc.splitlines()[0],
                            description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(run=fn)
        if name in ("status", "health"):
            sp.add_argument("--json", action="store_true", help="print the result as JSON")
        elif name in ("generate", "chat"):
            _generate_options(sp, chat=name == "chat")
        elif name == "cancel":
            sp.add_argument("id", help="the request id to cancel")
    return p


def _connection_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    # Given before the command they set the default; after it they override (SUPPRESS keeps the first one).
    p.add_argument("--endpoint", default=None if defaults else argparse.SUPPRESS,
                   help="daemon endpoint (default: $MOED_ENDPOINT, else the per-user ipc socket)")
    p.add_argument("--timeout", type=float, default=30.0 if defaults else argparse.SUPPRESS,
                   help="seconds to wait for a reply; for streams, the longest silence (default 30)")


def _generate_options(p: argparse.ArgumentParser, chat: bool) -> None:
    if chat:
        p.add_argument("messages", nargs="*", metavar="MESSAGE", help="TEXT or ROLE:TEXT; none: read stdin")
        p.add_argument("--system", help="a system message to start the conversation with")
    else:
        p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", metavar="S", help="a stop string (repeat for several)")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of as it comes")
    p.add_argument("--json", action="store_true", help="print the result (text and stats) as one JSON object")


COMMANDS: dict[str, Command] = {
    "status": cmd_status, "health": cmd_health, "generate": cmd_generate, "chat": cmd_chat,
    "cancel": cmd_cancel, "shutdown": cmd_shutdown,
}


def exit_code(e: BaseException) -> int:
    """The exit code for an exception from a command."""
    for cls, code in ((Busy, EXIT_BUSY), (DaemonUnavailable, EXIT_UNAVAILABLE), (Timeout, EXIT_TIMEOUT),
                      (KeyboardInterrupt, EXIT_INTERRUPTED)):
        if isinstance(e, cls):
            return code
    return EXIT_REQUEST


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2); returned so tests can call main()
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        with Client(args.endpoint, timeout=args.timeout, name="moectl") as client:
            rc: int = args.run(client, args)
            return rc
    except (MoedError, KeyboardInterrupt) as e:
        print(f"moectl: {_describe(e)}", file=sys.stderr)
        return exit_code(e)


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, Busy) and e.position is not None:
        return f"{e} (the queue is full; position {e.position})"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
