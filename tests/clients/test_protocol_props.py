"""Property tests of clients/protocol.py: valid generate params round-trip through parse_request; invalid ones
always raise ProtocolError(invalid_params) and never anything else; no input makes the parsers raise anything but
ProtocolError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from moed.clients import protocol
from moed.clients.protocol import ProtocolError

# per test, not a global profile: other test modules keep their own settings
PROPERTY = settings(max_examples=500, deadline=None)  # 6 properties: 3000 cases, a few seconds

FLOATS = {"temperature": (0.0, 100.0), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0)}
INTS = {"max_tokens": (1, protocol.MAX_TOKENS_LIMIT), "top_k": (0, 1 << 20)}
DEFAULTS: dict[str, Any] = {"prompt": None, "messages": None, "max_tokens": 256, "temperature": 0.0, "top_p": 1.0,
                             "top_k": 0, "min_p": 0.0, "seed": None, "stop": [], "stream": True,
                             "speculate": None}

text = st.text(min_size=1, max_size=40)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                 "content": st.text(max_size=40)})
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    **{n: st.floats(lo, hi) | st.integers(int(lo), int(hi)) for n, (lo, hi) in FLOATS.items()},
    **{n: st.integers(lo, hi) for n, (lo, hi) in INTS.items()},
    "seed": st.none() | st.integers(0, 2**63 - 1),
    "stop": st.lists(st.text(min_size=1, max_size=protocol.MAX_STOP_CHARS), max_size=protocol.MAX_STOP_STRINGS),
    "stream": st.booleans(),
    "speculate": st.none() | st.booleans(),
}


@st.composite
def generate_params(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {"prompt": draw(text)} if draw(st.booleans()) else {"messages": draw(st.lists(message,
                                                                                                     min_size=1,
                                                                                                     max_size=4))}
    for name, strategy in OPTIONAL.items():
        if draw(st.booleans()):
            p[name] = draw(strategy)
    return p


def parse(params: Any, type_: str = "generate") -> dict[str, Any]:
    out: dict[str, Any] = protocol.parse_request(protocol.pack(protocol.request("id-1", type_, params)))
    return out


@PROPERTY
@given(generate_params())
def test_valid_generate_params_round_trip(p: dict[str, Any]) -> None:
    parsed = parse(p)
    assert parsed["id"] == "id-1" and parsed["type"] == "generate"
    expected = DEFAULTS | {k: float(v) if k in FLOATS else v for k, v in p.items()}
    assert parsed["params"] == expected
    assert all(type(parsed["params"][k]) is float for k in FLOATS)
    assert parse(parsed["params"])["params"] == parsed["params"]  # normalised params are a fixed point


# -- invalid params --------------------------------------------------------------------------------------------
wire_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
not_number = st.text(max_size=3) | st.booleans() | st.none() | st.lists(wire_ints, max_size=2)
not_int = not_number | st.floats()
too_long = "x" * (protocol.MAX_PROMPT_CHARS + 1)


def outside(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: not lo <= v <= hi  # also true for NaN


BAD: dict[str, st.SearchStrategy[Any]] = {
    **{n: not_number | st.floats().filter(outside(lo, hi)) | wire_ints.filter(outside(lo, hi))
       for n, (lo, hi) in FLOATS.items()},
    **{n: not_int.filter(lambda v: v is not None) | wire_ints.filter(outside(lo, hi)) for n, (lo, hi) in INTS.items()},
    "seed": st.integers(-(2**63), -1) | st.just(2**63) | not_int.filter(lambda v: v is not None),
    "stop": st.sampled_from([[""], ["x" * (protocol.MAX_STOP_CHARS + 1)], ["a"] * (protocol.MAX_STOP_STRINGS + 1),
                             "stop", [1], [None], {"a": "b"}]),
    "stream": wire_ints | st.text(max_size=2) | st.none() | st.floats(),
    "prompt": st.sampled_from(["", too_long, 1, ["a"], b"bytes"]),
    "messages": st.sampled_from([[], "hi", [{"role": "user"}], [{"role": "robot", "content": "x"}],
                                 [{"role": "user", "content": 1}], [{"role": "user", "content": "x", "name": "n"}],
                                 [{"role": "user", "content": "x"}] * (protocol.MAX_MESSAGES + 1),
                                 [{"role": "user", "content": too_long}], ["user: hi"]]),
}


@st.composite
def invalid_generate_params(draw: st.DrawFn) -> dict[str, Any]:
    p = draw(generate_params())
    how = draw(st.sampled_from([*BAD, "unknown", "both", "neither"]))
    if how == "unknown":
        p[draw(st.text(max_size=8).filter(lambda k: k not in protocol.GENERATE_FIELDS))] = 1
    elif how == "both":
        p |= {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}
    elif how == "neither":
        p.pop("prompt", None), p.pop("messages", None)
    else:
        if how in ("prompt", "messages"):  # replace the one given, so exactly-one still holds
            p.pop("prompt", None), p.pop("messages", None)
        p[how] = draw(BAD[how])
    return p


@PROPERTY
@given(invalid_generate_params())
def test_invalid_generate_params_raise_invalid_params(p: dict[str, Any]) -> None:
    try:
        parse(p)
    except ProtocolError as e:
        assert e.code == "invalid_params" and e.request_id == "id-1"
    else:
        raise AssertionError(f"accepted invalid params {p!r}")


# -- nothing but ProtocolError, whatever comes in ----------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
           | st.binary(max_size=8))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                      max_size=3), max_leaves=8)


@PROPERTY
@given(st.dictionaries(st.sampled_from(protocol.GENERATE_FIELDS) | st.text(max_size=6), values, max_size=6))
def test_any_params_map_is_accepted_or_invalid_params(p: dict[str, Any]) -> None:
    try:
        parse(p)
    except ProtocolError as e:
        assert e.code == "invalid_params"


@PROPERTY
@given(st.sampled_from(protocol.REQUEST_TYPES), st.dictionaries(st.text(max_size=6), values, max_size=4))
def test_other_request_types_never_raise_anything_else(type_: str, p: dict[str, Any]) -> None:
    try:
        parse(p, type_)
    except ProtocolError as e:
        assert e.code == "invalid_params"


@PROPERTY
@given(st.binary(max_size=64) | st.builds(protocol.pack, st.dictionaries(
    st.sampled_from(["v", "id", "type", "params", "seq", "status"]), values, max_size=5)))
def test_any_frame_parses_or_raises_protocol_error(frame: bytes) -> None:
    for parser in (protocol.parse_request, protocol.parse_reply):
        try:
            parser(frame)
        except ProtocolError as e:
            assert e.code in protocol.ERROR_CODES


@PROPERTY
@given(st.text(min_size=1, max_size=20), st.integers(0, 2**32), st.sampled_from(protocol.PROGRESS_STATES),
       st.integers(0, 1000), st.text(max_size=20), st.lists(st.integers(0, 2**31), max_size=5))
def test_reply_builders_round_trip(rid: str, seq: int, state: str, pos: int, txt: str, tokens: list[int]) -> None:
    for msg in (protocol.progress(rid, seq, state, pos), protocol.chunk(rid, seq, txt, tokens),
                protocol.ok(rid, seq, {"a": 1}), protocol.error(rid, seq, "busy", "full", position=pos)):
        assert protocol.parse_reply(protocol.pack(msg)) == msg


def test_unsupported_version_and_negotiation() -> None:
    for v in (0, protocol.VERSION + 1, True, 1.0, "1", None):
        frame = protocol.pack({"v": v, "id": "x", "type": "status", "params": {}})
        try:
            protocol.parse_request(frame)
        except ProtocolError as e:
            assert e.code == "unsupported_version" and e.request_id == "x"
            assert e.extra == {"versions": list(protocol.SUPPORTED_VERSIONS)}
        else:
            raise AssertionError(v)
    assert protocol.negotiate([1, 2, 3, 4]) == 3 and protocol.negotiate([1, 2]) == 2 and protocol.negotiate([1]) == 1
    try:
        protocol.negotiate([7])
    except ProtocolError as e:
        assert e.code == "unsupported_version"
    else:
        raise AssertionError("negotiated without a common version")
