"""Property test: a thousand malformed, odd and valid frames against one running daemon.

Whatever arrives — bytes that are not msgpack, msgpack that is not a map, maps with wrong or missing fields,
wrong types, unknown request types, oversize frames, several frames, prompts over the context limit — the daemon
answers with exactly one final whose error code is the one protocol.parse_request (the documented validation)
gives for that frame, or serves it when it is valid. Afterwards it still generates the same tokens as before.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon_harness import Conn, InProcess, check_sequence, tokens_of
from moed.clients import protocol as P

CONTEXT = 64  # small, so most random max_tokens overflow it (fast) and valid requests stay short

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                      max_leaves=12)
good_params = {
    "prompt": st.text(min_size=1, max_size=40), "max_tokens": st.integers(1, 3) | st.integers(-5, 2**21),
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "top_k": st.integers(0, 50),
    "min_p": st.floats(0, 1), "seed": st.none() | st.integers(0, 2**63 - 1),
    "stop": st.lists(st.text(min_size=1, max_size=5), max_size=3), "stream": st.booleans(),
}


@st.composite
def generate_params(draw) -> dict:
    """Mostly well-formed generate params, with a field dropped, replaced by a random value, or added."""
    p = {k: draw(s) for k, s in good_params.items() if draw(st.booleans()) or k == "prompt"}
    if draw(st.booleans()):
        p["messages"] = draw(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]),
                                                             "content": st.text(max_size=20)}), max_size=3))
        if draw(st.booleans()):
            p.pop("prompt")
    mutation = draw(st.sampled_from(["none", "replace", "add", "drop"]))
    key = draw(st.sampled_from(sorted(good_params)))
    if mutation == "replace":
        p[key] = draw(values)
    elif mutation == "add":
        p[draw(st.text(max_size=8))] = draw(values)
    elif mutation == "drop":
        p.pop(key, None)
    return p


@st.composite
def requests(draw) -> dict:
    msg = {"v": 1, "id": draw(st.text(min_size=1, max_size=12)),
           "type": draw(st.sampled_from([t for t in P.REQUEST_TYPES if t != "shutdown"]))}
    msg["params"] = draw(generate_params()) if msg["type"] == "generate" else draw(
        st.dictionaries(st.sampled_from(["versions", "client", "target", "x"]), values, max_size=2))
    for field in draw(st.sets(st.sampled_from(["v", "id", "type", "params"]), max_size=2)):
        if draw(st.booleans()):
            msg.pop(field)
        else:
            msg[field] = draw(values)
    return msg


frames = st.one_of(
    st.binary(max_size=64).map(lambda b: [b]),
    values.map(lambda v: [msgpack.packb(v, use_bin_type=True)]),
    requests().map(lambda m: [msgpack.packb(m, use_bin_type=True)]),
    requests().map(lambda m: [msgpack.packb(m, use_bin_type=True)] * 2),  # two frames
    st.integers(1, 1 << 20).map(lambda extra: [P.pack(P.request("big", "status", {"pad": "x" * (
        P.MAX_MESSAGE_BYTES + extra)}))]),
    st.integers(2 * CONTEXT, 400).map(lambda n: [P.pack(P.request("long", "generate", {
        "prompt": "word " * n, "max_tokens": 1}))]),
)


def expected(parts: list[bytes]) -> tuple[str, str | None, dict | None]:
    """(id the final goes to, error code or None if valid, parsed request) as the protocol module decides."""
    if len(parts) != 1:
        return "", "malformed", None
    try:
        req = P.parse_request(parts[0])
    except P.ProtocolError as e:
        return e.request_id or "", e.code, None
    return req["id"], None, req


@pytest.fixture(scope="module")
def served(model_dir):
    with InProcess(model_dir("qwen3_moe", "store-mlx"), context_limit=CONTEXT, max_batch=4) as d:
        c = Conn(d.endpoint)
        before = tokens_of(c.call("generate", {"prompt": "Reference prompt", "max_tokens": 12}))
        yield d, c, before
        c.close()


@settings(max_examples=1000, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(parts=frames)
def test_every_frame_gets_exactly_its_documented_final(served, parts):
    _, conn, _ = served
    rid, code, req = expected(parts)
    if req is not None and req["type"] == "cancel":
        code = "not_found"  # nothing of this connection is in flight between examples
    if req is not None and req["id"] == "long" and req["type"] == "generate":
        code = "context_overflow"
    conn.send_raw(*parts)
    replies = conn.wait(rid, timeout=30)
    final = check_sequence(replies)
    event(f"{req['type'] if req else 'refused'}: {final['status']} {final.get('error', {}).get('code', '')}")
    assert not conn.inbox, f"replies to other ids: {dict(conn.inbox)}"
    if code is not None:
        assert final["status"] == "error" and final["error"]["code"] == code, (parts[0][:80], final)
        return
    t = req["type"]
    if t in ("governor_get", "governor_set"):
        assert final["error"]["code"] == "not_available"
    elif t == "generate":
        # valid on the wire; the model may still refuse it (context, or a chat template that rejects the roles)
        assert final["status"] == "ok" or final["error"]["code"] in ("context_overflow", "invalid_params"), final
        if final["status"] == "ok":
            assert set(P.RESULT_FIELDS["generate"]) <= set(final["result"])
    elif t == "hello":
        assert final["status"] == "ok" or final["error"]["code"] == "unsupported_version"
    else:
        assert final["status"] == "ok" and set(P.RESULT_FIELDS[t]) <= set(final["result"]), final


def test_still_serves_the_same_tokens_afterwards(served):
    d, conn, before = served
    after = conn.call("generate", {"prompt": "Reference prompt", "max_tokens": 12})
    assert check_sequence(after)["status"] == "ok"
    assert tokens_of(after) == before
    status = conn.result("status")
    assert status["state"] == "ready" and status["active"] == 0 and status["queued"] == 0
