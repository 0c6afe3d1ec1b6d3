"""Typed views of what the daemon sends: stream events (Progress, Chunk) and call results (Result, Status, ...).

Each `from_wire` checks the fields docs/protocol.md promises (name and type) and raises ProtocolViolation when one
is missing or wrong; fields it does not know are kept in `.raw`, so a newer daemon can add some.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .errors import ProtocolViolation

_Spec = dict[str, type | tuple[type, ...]]


def _check(raw: dict[str, Any], what: str, spec: _Spec) -> dict[str, Any]:
    """The fields named in spec, each checked against its type (bool is never an int; an int is a float)."""
    out: dict[str, Any] = {}
    for name, typ in spec.items():
        v = raw.get(name)
        types = typ if isinstance(typ, tuple) else (typ,)
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if float in types and isinstance(v, int) and not isinstance(v, bool):
            ok, v = True, float(v)
        if not ok:
            want = "|".join(t.__name__ for t in types)
            raise ProtocolViolation(f"{what} result: `{name}` must be {want}, got {v!r}")
        out[name] = v
    return out


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ProtocolViolation(f"{what} must be one of {list(allowed)}, got {value!r}")
    return value


# -- stream events ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """The request waits: `queued` at `position` (0 = next), or `prefilling` its prompt."""

    state: str
    position: int


@dataclass(frozen=True)
class Chunk:
    """Generated text and the token ids it came from (text may be empty while a character is incomplete)."""

    text: str
    tokens: tuple[int, ...]


Event = Progress | Chunk


def event_from_wire(msg: dict[str, Any]) -> Event:
    """A progress or chunk reply (already checked by protocol.parse_reply) as its dataclass."""
    if msg["type"] == "progress":
        return Progress(msg["state"], msg["position"])
    return Chunk(msg["text"], tuple(msg["tokens"]))


# -- results -----------------------------------------------------------------------------------------------------
_GENERATE_SPEC: _Spec = {name: (str if name == "done_reason" else int) for name in protocol.RESULT_FIELDS["generate"]}


@dataclass(frozen=True)
class Result:
    """The outcome of a generate request: the whole text and the daemon's stats (durations in nanoseconds)."""

    text: str
    done_reason: str
    prompt_tokens: int
    generated_tokens: int
    queue_ns: int
    prefill_ns: int
    decode_ns: int
    total_ns: int
    cache_hits: int
    cache_misses: int
    bytes_read: int
    request_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, raw: dict[str, Any], streamed_text: str | None, request_id: str = "") -> Result:
        """streamed_text: the chunks' text joined, or None when the request had stream=false (text in `raw`)."""
        fields = _check(raw, "generate", _GENERATE_SPEC)
        _one_of(fields["done_reason"], protocol.DONE_REASONS, "done_reason")
        text = streamed_text if streamed_text is not None else _check(raw, "generate", {"text": str})["text"]
        return cls(text=text, request_id=request_id, raw=raw, **fields)

    @property
    def prefill_tps(self) -> float:
        """Prompt tokens per second of prefill."""
        return self.prompt_tokens / (self.prefill_ns / 1e9) if self.prefill_ns else 0.0

    @property
    def decode_tps(self) -> float:
        """Generated tokens per second of decode."""
        return self.generated_tokens / (self.decode_ns / 1e9) if self.decode_ns else 0.0

    @property
    def hit_rate(self) -> float:
        """Fraction of expert lookups served from the cache."""
        n = self.cache_hits + self.cache_misses
        return self.cache_hits / n if n else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Everything the daemon sent, plus the text and the request id (for JSON output)."""
        return {**self.raw, "request_id": self.request_id, "text": self.text}


@dataclass(frozen=True)
class Hello:
    """The daemon's answer to hello: the protocol version both sides now speak, and what it serves."""

    version: int
    server: str
    model_type: str
    limits: dict[str, int]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Hello:
        f = _check(raw, "hello", {"version": int, "server": str, "model_type": str, "limits": dict})
        if f["version"] not in protocol.SUPPORTED_VERSIONS:
            raise ProtocolViolation(f"hello chose version {f['version']}, which this client did not offer "
                                    f"({list(protocol.SUPPORTED_VERSIONS)})")
        return cls(raw=raw, **f)


@dataclass(frozen=True)
class Status:
    """A snapshot of the daemon: state, model, load (active/queued against max_batch/queue_limit), cache."""

    state: str
    model_type: str
    store: str
    active: int
    queued: int
    max_batch: int
    queue_limit: int
    cache: dict[str, Any]
    uptime_s: float
    version: str
    quarantine: dict[str, Any] = field(default_factory=dict)  # failed experts; absent from older daemons
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Status:
        f = _check(raw, "status", {
            "state": str, "model_type": str, "store": str, "active": int, "queued": int, "max_batch": int,
            "queue_limit": int, "cache": dict, "uptime_s": float, "version": str})
        _one_of(f["state"], protocol.DAEMON_STATES, "status state")
        quarantine = raw.get("quarantine", {})
        if not isinstance(quarantine, dict):
            raise ProtocolViolation(f"status result: `quarantine` must be a map, got {quarantine!r}")
        return cls(raw=raw, quarantine=quarantine, **f)


@dataclass(frozen=True)
class RequestInfo:
    """One request the daemon holds (ps, status `requests`): its daemon-wide id, the client that sent it (the name
    from hello), its state (queued|prefilling|decoding), prompt tokens (0 until tokenized), tokens generated so
    far, and seconds since it arrived."""

    id: str
    client: str
    state: str
    prompt_tokens: int
    generated_tokens: int
    age_s: float

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> RequestInfo:
        f = _check(raw, "ps", {"id": str, "client": str, "state": str, "prompt_tokens": int,
                               "generated_tokens": int, "age_s": float})
        _one_of(f["state"], protocol.REQUEST_STATES, "request state")
        return cls(**f)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "client": self.client, "state": self.state, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens, "age_s": self.age_s}


@dataclass(frozen=True)
class Health:
    """ok is true when the daemon admits work (state ready or degraded); `reason` says why it is degraded."""

    ok: bool
    state: str
    reason: str = ""

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Health:
        f = _check(raw, "health", {"ok": bool, "state": str})
        _one_of(f["state"], protocol.DAEMON_STATES, "health state")
        reason = raw.get("reason", "")
        if not isinstance(reason, str):
            raise ProtocolViolation(f"health field 'reason' must be a string, got {type(reason).__name__}")
        return cls(**f, reason=reason)
