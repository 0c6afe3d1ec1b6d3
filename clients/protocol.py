"""The moed wire protocol, version 2: message types, fields, limits and error codes (docs/protocol.md).

Transport: the daemon binds one ZeroMQ ROUTER socket; a client connects a DEALER socket and may have several
requests in flight. Every message is ONE frame holding a msgpack map (packed with use_bin_type=True, unpacked with
raw=False and the size limits below; never pickle). tests/clients/test_protocol_doc.py holds this module and the
document to each other.

Client -> daemon (a request):
    {"v": 1, "id": str, "type": REQUEST_TYPE, "params": {...}}
Daemon -> client (replies to request `id`; `seq` counts 0, 1, 2, ... per request):
    {"v": 1, "id": str, "seq": int, "type": "progress", "state": "queued"|"prefilling", "position": int}
    {"v": 1, "id": str, "seq": int, "type": "chunk", "text": str, "tokens": [int, ...]}
    {"v": 1, "id": str, "seq": int, "type": "final", "status": "ok", "result": {...}}
    {"v": 1, "id": str, "seq": int, "type": "final", "status": "error", "error": {"code": str, "message": str, ...}}
Every request gets exactly one `final`; progress and chunks come only before it, and only for `generate`.
A reply carries the `v` of its request. Version 2 adds the `ps` request, `cancel`'s `job` param and `status`'s
`detail` param; version 3 adds `generate`'s `speculate` param (SINCE below); an older request never uses them.

This module needs only the standard library and msgpack: clients import it without MLX.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

import msgpack  # type: ignore[import-untyped]  # no stubs; wrapped in pack/unpack below

VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
HELLO_VERSION = 1  # every daemon accepts hello with v 1, so negotiation always works

# -- limits --------------------------------------------------------------------------------------------------
MAX_MESSAGE_BYTES = 1 << 20  # one frame, either direction (also set as the socket's MAXMSGSIZE)
MAX_ID_CHARS = 128
MAX_PROMPT_CHARS = 512 * 1024
MAX_MESSAGES = 256
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_TOKENS_LIMIT = 1 << 20
# The limits as a map, as the daemon's `hello` result carries them (`limits`, with lower-case names).
LIMITS = {name.lower(): value for name, value in (
    ("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES), ("MAX_ID_CHARS", MAX_ID_CHARS), ("MAX_PROMPT_CHARS", MAX_PROMPT_CHARS),
    ("MAX_MESSAGES", MAX_MESSAGES), ("MAX_STOP_STRINGS", MAX_STOP_STRINGS), ("MAX_STOP_CHARS", MAX_STOP_CHARS),
    ("MAX_TOKENS_LIMIT", MAX_TOKENS_LIMIT))}

# -- message types -------------------------------------------------------------------------------------------
REQUEST_TYPES = ("hello", "generate", "cancel", "status", "health", "shutdown", "governor_get", "governor_set", "ps",
                 "clear_quarantine")
# What a version added: request types, and (type, param) pairs; a request of an older `v` may not use them.
SINCE: dict[str | tuple[str, str], int] = {"ps": 2, "clear_quarantine": 2, ("cancel", "job"): 2,
                                           ("status", "detail"): 2, ("generate", "speculate"): 3}
STATUS_DETAILS = ("experts",)  # what `status` can be asked to add with `detail`
REQUEST_STATES = ("queued", "prefilling", "decoding")  # a request's state in `ps` and status `requests`
JOB_ID_CHARS = 64  # a daemon-wide request id (ps `id`, cancel `job`)
REPLY_TYPES = ("progress", "chunk", "final")
PROGRESS_STATES = ("queued", "prefilling")
DONE_REASONS = ("stop", "length", "cancelled", "client_gone", "shutdown")
DAEMON_STATES = ("loading", "ready", "degraded", "draining")

# Fields every `ok` final's `result` carries, per request type (a daemon may add more; clients ignore extras).
# A generate result also carries `text` when the request had stream=false. governor_* results belong to the governor.
RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "hello": ("version", "server", "model_type", "limits"),
    "generate": ("done_reason", "prompt_tokens", "generated_tokens", "queue_ns", "prefill_ns", "decode_ns",
                 "total_ns", "cache_hits", "cache_misses", "bytes_read"),
    "cancel": ("cancelled",),
    "ps": ("requests",),
    "status": ("state", "model_type", "store", "active", "queued", "max_batch", "queue_limit", "cache", "uptime_s",
               "version"),
    "health": ("ok", "state"),
    "shutdown": (),
    "clear_quarantine": ("cleared",),
}

# -- error codes (stable: clients match on them) ---------------------------------------------------------------
ERROR_CODES: dict[str, str] = {
    "malformed": "the frame is not a msgpack map, or not a single frame",
    "too_large": "the frame exceeds MAX_MESSAGE_BYTES",
    "unsupported_version": "the message's `v` is not a version this daemon speaks",
    "unknown_type": "`type` is not a request type",
    "invalid_params": "a field is missing, of the wrong type, or out of range; the message names it",
    "duplicate_id": "a request with this id from this client is still in flight",
    "context_overflow": "prompt plus max_tokens exceed the model's context limit",
    "busy": "the admission queue is full; `position` says where the request would have been",
    "not_found": "cancel named a request id this client has not in flight",
    "not_available": "the feature is not available in this daemon (e.g. the governor)",
    "loading": "the model is still loading; retry when status says ready",
    "shutting_down": "the daemon is stopping and admits no new work",
    "forbidden": "a control request from a connection not allowed to control the daemon (tcp: a key without the "
                 "admin role)",
    "slow_client": "the client did not read its stream fast enough and its request was failed",
    "store_error": "an expert could not be read or failed its checksum",
    "internal": "an unexpected error in the daemon; the message says what, the daemon keeps serving",
}


class ProtocolError(Exception):
    """A message that breaks the protocol; `code` is one of ERROR_CODES, `request_id` is set when known."""

    def __init__(self, code: str, message: str, request_id: str | None = None, **extra: Any):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code, self.message, self.request_id, self.extra = code, message, request_id, extra


# -- framing ---------------------------------------------------------------------------------------------------
def pack(msg: dict[str, Any]) -> bytes:
    frame: bytes = msgpack.packb(msg, use_bin_type=True)
    return frame


def unpack(frame: bytes) -> dict[str, Any]:
    """Decode one frame into a map, with size limits. Raises ProtocolError (malformed / too_large)."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {len(frame)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        # unpackb bounds every container by the frame size; the frame itself was bounded above
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for bad input
        raise ProtocolError("malformed", f"not a msgpack message: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", f"a message must be a msgpack map, got {type(obj).__name__}")
    return obj


# -- requests --------------------------------------------------------------------------------------------------
def request(req_id: str, type_: str, params: dict[str, Any] | None = None, v: int = VERSION) -> dict[str, Any]:
    return {"v": v, "id": req_id, "type": type_, "params": params or {}}


def parse_request(frame: bytes) -> dict[str, Any]:
    """Decode and validate one request frame; returns {"v", "id", "type", "params"} with params normalised.

    Raises:
        ProtocolError: with the request id when it could be read, so the error reply can be routed to it.
    """
    msg = unpack(frame)
    rid = msg.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_CHARS:
        raise ProtocolError("invalid_params", f"`id` must be a string of 1..{MAX_ID_CHARS} characters")
    if not _is_int(msg.get("v")) or msg["v"] not in SUPPORTED_VERSIONS:  # True == 1 and 1.0 == 1 in Python
        raise ProtocolError("unsupported_version", f"version {msg.get('v')!r} is not supported "
                            f"(this daemon speaks {list(SUPPORTED_VERSIONS)})", rid,
                            versions=list(SUPPORTED_VERSIONS))
    type_ = msg.get("type")
    if type_ not in REQUEST_TYPES:
        raise ProtocolError("unknown_type", f"unknown request type {type_!r}; expected one of {list(REQUEST_TYPES)}",
                            rid)
    v = int(msg["v"])
    if SINCE.get(type_, 1) > v:
        raise ProtocolError("unknown_type", f"{type_!r} needs protocol version {SINCE[type_]}; this request has "
                            f"version {v} (say hello with versions {list(SUPPORTED_VERSIONS)})", rid)
    params = msg.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("invalid_params", f"`params` must be a map, got {type(params).__name__}", rid)
    newer = sorted(str(k) for k in params if SINCE.get((type_, k), 1) > v)
    if newer:
        need = max(SINCE[(type_, k)] for k in newer)
        raise ProtocolError("invalid_params", f"unknown field(s) {newer} in version {v}: they need protocol "
                            f"version {need}", rid)
    try:
        params = _VALIDATORS[type_](params)
    except ProtocolError as e:
        e.request_id = rid
        raise
    return {"v": v, "id": rid, "type": type_, "params": params}


def _fail(field: str, want: str, got: Any) -> ProtocolError:
    return ProtocolError("invalid_params", f"`{field}` must be {want}, got {_show(got)}")


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(p: dict[str, Any], name: str, default: int | None, lo: int, hi: int, nullable: bool = False) -> int | None:
    v = p.get(name, default)
    if v is None and (nullable or default is None):
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(name, f"an integer in [{lo}, {hi}]", v)
    return v


def _float(p: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = p.get(name, default)
    # the range test comes first: math.isfinite raises OverflowError on huge integers
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or not math.isfinite(v):
        raise _fail(name, f"a number in [{lo}, {hi}]", v)
    return float(v)


def _known(p: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(p) - set(allowed), key=str)
    if extra:
        raise ProtocolError("invalid_params", f"unknown field(s) {extra}; allowed: {list(allowed)}")


GENERATE_FIELDS = ("prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                   "stream", "speculate")


def _generate(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, GENERATE_FIELDS)
    prompt, messages = p.get("prompt"), p.get("messages")
    if (prompt is None) == (messages is None):
        raise ProtocolError("invalid_params", "give exactly one of `prompt` (a string) or `messages` (chat)")
    if prompt is not None and (not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT_CHARS):
        raise _fail("prompt", f"a non-empty string of at most {MAX_PROMPT_CHARS} characters", prompt)
    if messages is not None:
        messages = _messages(messages)
    stop = p.get("stop", [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop):
        raise _fail("stop", f"a list of at most {MAX_STOP_STRINGS} non-empty strings of <= {MAX_STOP_CHARS} chars",
                    stop)
    stream = p.get("stream", True)
    if not isinstance(stream, bool):
        raise _fail("stream", "a boolean", stream)
    speculate = p.get("speculate")
    if speculate is not None and not isinstance(speculate, bool):
        raise _fail("speculate", "a boolean or null", speculate)
    return {
        "prompt": prompt, "messages": messages,
        "max_tokens": _int(p, "max_tokens", 256, 1, MAX_TOKENS_LIMIT),
        "temperature": _float(p, "temperature", 0.0, 0.0, 100.0),
        "top_p": _float(p, "top_p", 1.0, 0.0, 1.0),
        "top_k": _int(p, "top_k", 0, 0, 1 << 20),
        "min_p": _float(p, "min_p", 0.0, 0.0, 1.0),
        "seed": _int(p, "seed", None, 0, 2**63 - 1, nullable=True),
        "stop": stop, "stream": stream, "speculate": speculate,
    }


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise _fail("messages", f"a list of 1..{MAX_MESSAGES} {{role, content}} maps", messages)
    total = 0
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["role"], str)
                and isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant")):
            raise _fail(f"messages[{i}]", "a map {role: system|user|assistant, content: string}", m)
        total += len(m["content"])
    if total > MAX_PROMPT_CHARS:
        raise _fail("messages", f"at most {MAX_PROMPT_CHARS} characters of content in all", f"{total} characters")
    return messages


def _hello(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, ("versions", "client"))
    versions = p.get("versions", [HELLO_VERSION])  # a client that lists none speaks version 1
    if not isinstance(versions, list) or not versions or not all(_is_int(v) for v in versions):
        raise _fail("versions", "a non-empty list of integers", versions)
    client = p.get("client", "")
    if not isinstance(client, str) or len(client) > 256:
        raise _fail("client", "a string of at most 256 characters", client)
    return {"versions": versions, "client": client}


def negotiate(versions: list[int]) -> int:
    """The version a hello settles on: the highest one both sides speak.

    Raises:
        ProtocolError: unsupported_version (with `versions`, what this side speaks) when there is none.
    """
    common = set(versions) & set(SUPPORTED_VERSIONS)
    if not common:
        raise ProtocolError("unsupported_version", f"no common protocol version: the client speaks {versions}, "
                            f"this daemon {list(SUPPORTED_VERSIONS)}", versions=list(SUPPORTED_VERSIONS))
    return max(common)


def _cancel(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, ("target", "job"))
    target, job = p.get("target"), p.get("job")
    if (target is None) == (job is None):
        raise ProtocolError("invalid_params", "give exactly one of `target` (a request id of this connection) or "
                            "`job` (a daemon-wide id from ps)")
    if target is not None and (not isinstance(target, str) or not 0 < len(target) <= MAX_ID_CHARS):
        raise _fail("target", "the id of a request in flight", target)
    if job is not None and (not isinstance(job, str) or not 0 < len(job) <= JOB_ID_CHARS):
        raise _fail("job", f"a daemon-wide request id from ps (1..{JOB_ID_CHARS} characters)", job)
    return {"target": target, "job": job}


def _status(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, ("detail",))
    detail = p.get("detail", [])
    if not isinstance(detail, list) or not all(d in STATUS_DETAILS for d in detail):
        raise _fail("detail", f"a list of {list(STATUS_DETAILS)}", detail)
    return {"detail": sorted(set(detail))}


def _empty(p: dict[str, Any]) -> dict[str, Any]:
    _known(p, ())
    return {}


def _governor_set(p: dict[str, Any]) -> dict[str, Any]:
    if not p:
        raise ProtocolError("invalid_params", "governor_set needs at least one setting")
    return dict(p)  # validated by the governor, which owns its settings


_VALIDATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hello": _hello, "generate": _generate, "cancel": _cancel, "status": _status, "health": _empty,
    "shutdown": _empty, "governor_get": _empty, "governor_set": _governor_set, "ps": _empty,
    "clear_quarantine": _empty,
}


# -- replies ---------------------------------------------------------------------------------------------------
def progress(req_id: str, seq: int, state: str, position: int = 0, v: int = VERSION) -> dict[str, Any]:
    return {"v": v, "id": req_id, "seq": seq, "type": "progress", "state": state, "position": position}


def chunk(req_id: str, seq: int, text: str, tokens: list[int], v: int = VERSION) -> dict[str, Any]:
    return {"v": v, "id": req_id, "seq": seq, "type": "chunk", "text": text, "tokens": tokens}


def ok(req_id: str, seq: int, result: dict[str, Any], v: int = VERSION) -> dict[str, Any]:
    return {"v": v, "id": req_id, "seq": seq, "type": "final", "status": "ok", "result": result}


def error(req_id: str | None, seq: int, code: str, message: str, v: int = VERSION, **extra: Any) -> dict[str, Any]:
    assert code in ERROR_CODES, code
    return {"v": v, "id": req_id or "", "seq": seq, "type": "final", "status": "error",
            "error": {"code": code, "message": message, **extra}}


def parse_reply(frame: bytes) -> dict[str, Any]:
    """Decode and check one reply frame (client side): envelope, then the fields of its type.

    Raises:
        ProtocolError: code malformed (or too_large); `request_id` is set when the reply's id could be read, so a
            client can fail just that request.
    """
    msg = unpack(frame)
    rid = msg.get("id") if isinstance(msg.get("id"), str) else None
    t, seq, v = msg.get("type"), msg.get("seq"), msg.get("v")
    if rid is None or t not in REPLY_TYPES or not _is_int(seq) or seq < 0 or not _is_int(v) \
            or v not in SUPPORTED_VERSIONS:
        raise ProtocolError("malformed", f"not a moed reply: {_show(msg)}", rid)
    problem = _REPLY_CHECKS[t](msg)
    if problem:
        raise ProtocolError("malformed", f"bad {t} reply: {problem}: {_show(msg)}", rid)
    return msg


def _check_progress(m: dict[str, Any]) -> str | None:
    if m.get("state") not in PROGRESS_STATES:
        return f"`state` must be one of {list(PROGRESS_STATES)}"
    return None if _is_int(m.get("position")) and m["position"] >= 0 else "`position` must be an integer >= 0"


def _check_chunk(m: dict[str, Any]) -> str | None:
    if not isinstance(m.get("text"), str):
        return "`text` must be a string"
    tokens = m.get("tokens")
    return None if isinstance(tokens, list) and all(_is_int(t) for t in tokens) else "`tokens` must be integers"


def _check_final(m: dict[str, Any]) -> str | None:
    status = m.get("status")
    if status == "ok":
        return None if isinstance(m.get("result"), dict) else "an ok final needs a `result` map"
    if status == "error":
        err = m.get("error")
        if isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str):
            return None
        return "an error final needs an `error` map with string `code` and `message`"
    return "`status` must be ok or error"


_REPLY_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "progress": _check_progress, "chunk": _check_chunk, "final": _check_final,
}
