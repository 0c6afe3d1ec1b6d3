"""docs/protocol.md is the contract: parse its tables and hold clients/protocol.py (and the client's typed
results) to them, in both directions."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from moed.clients import errors, events, protocol

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
ENVELOPE = {"v", "id", "seq", "type"}


# -- parsing the document ----------------------------------------------------------------------------------------
@cache
def sections() -> dict[str, list[str]]:
    """Heading text -> the lines under it (code fences skipped)."""
    out: dict[str, list[str]] = {"": []}
    name, fence = "", False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            name = line.lstrip("#").strip()
            out[name] = []
        elif not fence:
            out[name].append(line)
    return out


def tables(section: str) -> list[list[dict[str, str]]]:
    """The markdown tables of a section, each a list of {header: cell} rows."""
    found: list[list[dict[str, str]]] = []
    rows: list[list[str]] = []
    for line in sections()[section] + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            header, body = rows[0], rows[2:]  # rows[1] is the |---| line
            found.append([dict(zip(header, r, strict=True)) for r in body])
            rows = []
    return found


def table(section: str, first_column: str) -> list[dict[str, str]]:
    """The table of `section` whose first column is named `first_column`."""
    matches = [t for t in tables(section) if t and next(iter(t[0])) == first_column]
    assert len(matches) == 1, f"section {section!r}: expected one table starting with {first_column!r}"
    return matches[0]


def lit(cell: str) -> str:
    """`x` -> x (a literal cell)."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    assert m, f"expected a `literal` cell, got {cell!r}"
    return m.group(1)


def names(cell: str) -> list[str]:
    """Every `literal` in a cell."""
    return re.findall(r"`([^`]*)`", cell)


def column(section: str, first_column: str) -> list[str]:
    return [lit(row[first_column]) for row in table(section, first_column)]


def line_value(prefix: str) -> str:
    hits = [ln[len(prefix):].strip() for ln in DOC.read_text().splitlines() if ln.startswith(prefix)]
    assert len(hits) == 1, f"expected one line starting with {prefix!r}"
    return hits[0]


def parse(type_: str, params: dict[str, Any]) -> dict[str, Any]:
    params_out: dict[str, Any] = protocol.parse_request(protocol.pack(protocol.request("t", type_, params)))["params"]
    return params_out


# -- version, limits, enumerations --------------------------------------------------------------------------------
def test_version_matches():
    assert int(line_value("Protocol version:")) == protocol.VERSION
    supported = tuple(int(v) for v in line_value("Supported versions:").split(","))
    assert supported == protocol.SUPPORTED_VERSIONS


def test_limits_match_both_ways():
    doc = {lit(r["constant"]): int(r["value"]) for r in table("Limits", "constant")}
    code = {n: getattr(protocol, n) for n in dir(protocol) if n.startswith("MAX_")}
    assert doc == code
    assert protocol.LIMITS == {k.lower(): v for k, v in code.items()}


def test_request_types_match():
    assert column("Requests", "type") == list(protocol.REQUEST_TYPES)


def test_reply_types_and_their_fields_match():
    rows = table("Messages", "type")
    assert [lit(r["type"]) for r in rows] == list(protocol.REPLY_TYPES)
    built = {"progress": [protocol.progress("i", 0, "queued", 1)], "chunk": [protocol.chunk("i", 0, "x", [1])],
             "final": [protocol.ok("i", 0, {}), protocol.error("i", 0, "internal", "m")]}
    for r in rows:
        t = lit(r["type"])
        assert set(names(r["fields"])) == set().union(*(m.keys() for m in built[t])) - ENVELOPE, t


def test_progress_states_done_reasons_daemon_states_match():
    assert column("Messages", "state") == list(protocol.PROGRESS_STATES)
    assert column("generate result", "reason") == list(protocol.DONE_REASONS)
    assert column("status result", "state") == list(protocol.DAEMON_STATES)


def test_error_codes_match_with_meanings_and_client_exceptions():
    rows = table("Errors", "code")
    assert {lit(r["code"]): r["meaning"] for r in rows} == protocol.ERROR_CODES
    for r in rows:
        assert errors.error_class(lit(r["code"])).__name__ == lit(r["client raises"])


# -- params --------------------------------------------------------------------------------------------------------
def test_generate_params_table_matches_fields_and_defaults():
    rows = table("generate params", "name")
    assert [lit(r["name"]) for r in rows] == list(protocol.GENERATE_FIELDS)
    defaults = {lit(r["name"]): json.loads(lit(r["default"])) for r in rows}
    from_prompt = parse("generate", {"prompt": "x"})
    from_messages = parse("generate", {"messages": [{"role": "user", "content": "x"}]})
    assert set(from_prompt) == set(defaults)
    for name, default in defaults.items():
        filled = from_messages[name] if name == "prompt" else from_prompt[name]
        assert filled == default and type(filled) is type(default), name


RANGE = r"`\[(\S+), (\S+)\]`"
NUMERIC = [r for r in table("generate params", "name") if re.fullmatch(RANGE, r["range"])]


def test_numeric_params_are_the_documented_ones():
    assert [lit(r["name"]) for r in NUMERIC] == ["max_tokens", "temperature", "top_p", "top_k", "min_p", "seed"]


@pytest.mark.parametrize("row", NUMERIC, ids=lambda r: lit(r["name"]))
def test_generate_numeric_ranges_are_enforced(row: dict[str, str]):
    m = re.fullmatch(RANGE, row["range"])
    assert m
    name, is_int = lit(row["name"]), row["type"].startswith("int")
    lo, hi = (int(g) if is_int else float(g) for g in m.groups())
    for ok in (lo, hi):
        assert parse("generate", {"prompt": "x", name: ok})[name] == ok
    below, above = (lo - 1, hi + 1) if is_int else (math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf))
    for bad in (below, above):
        with pytest.raises(protocol.ProtocolError) as e:
            parse("generate", {"prompt": "x", name: bad})
        assert e.value.code == "invalid_params" and name in e.value.message


def test_hello_cancel_and_status_params_match():
    hello = {lit(r["name"]): json.loads(lit(r["default"])) for r in table("hello params", "name")}
    assert parse("hello", {}) == hello
    cancel = {lit(r["name"]): json.loads(lit(r["default"])) for r in table("cancel params", "name")}
    assert parse("cancel", {"target": "x"}) == cancel | {"target": "x"}
    assert parse("cancel", {"job": "7"}) == cancel | {"job": "7"}
    for both_or_none in ({}, {"target": "x", "job": "7"}):
        with pytest.raises(protocol.ProtocolError, match="exactly one of `target`"):
            parse("cancel", both_or_none)
    with pytest.raises(protocol.ProtocolError, match="job"):
        parse("cancel", {"job": "x" * (protocol.JOB_ID_CHARS + 1)})
    status = {lit(r["name"]): json.loads(lit(r["default"])) for r in table("status params", "name")}
    assert parse("status", {}) == status
    assert column("status params", "detail") == list(protocol.STATUS_DETAILS)
    assert parse("status", {"detail": ["experts", "experts"]}) == {"detail": ["experts"]}
    with pytest.raises(protocol.ProtocolError, match="detail"):
        parse("status", {"detail": ["everything"]})


def test_version_additions_match_and_are_refused_in_older_versions():
    added = column("Version 2", "since") + column("Version 3", "since")
    assert added == [k if isinstance(k, str) else ".".join(k) for k in protocol.SINCE]
    assert [protocol.SINCE[k] for k in protocol.SINCE] == [2] * len(column("Version 2", "since")) + [3] * len(
        column("Version 3", "since"))
    older = {"ps": ("ps", {}, "unknown_type"), "clear_quarantine": ("clear_quarantine", {}, "unknown_type"),
             ("cancel", "job"): ("cancel", {"job": "1"}, "invalid_params"),
             ("status", "detail"): ("status", {"detail": []}, "invalid_params"),
             ("generate", "speculate"): ("generate", {"prompt": "x", "speculate": False}, "invalid_params")}
    assert set(older) == set(protocol.SINCE)
    for since, (type_, params, code) in older.items():
        for v in range(1, protocol.SINCE[since]):
            with pytest.raises(protocol.ProtocolError) as e:
                protocol.parse_request(protocol.pack(protocol.request("r", type_, params, v=v)))
            assert e.value.code == code and e.value.request_id == "r", since
            assert f"version {protocol.SINCE[since]}" in e.value.message, since
    assert parse("cancel", {"target": "a"}) == protocol.parse_request(
        protocol.pack(protocol.request("t", "cancel", {"target": "a"}, v=1)))["params"]


def test_request_fields_and_states_match_the_client_view():
    fields = {lit(r["key"]): r["type"] for r in table("ps result", "key")}
    assert column("ps result", "request state") == list(protocol.REQUEST_STATES)
    sample = {k: SAMPLES[t] for k, t in fields.items()} | {"state": "decoding"}
    info = events.RequestInfo.from_wire(sample)
    assert info.as_dict() == sample and [f.name for f in dataclasses.fields(info)] == list(fields)
    for k in fields:
        with pytest.raises(errors.ProtocolViolation, match=k):
            events.RequestInfo.from_wire({x: v for x, v in sample.items() if x != k})
    with pytest.raises(errors.ProtocolViolation, match="state"):
        events.RequestInfo.from_wire(sample | {"state": "sleeping"})


def test_replies_carry_the_version_they_are_given():
    for v in protocol.SUPPORTED_VERSIONS:
        for msg in (protocol.progress("i", 0, "queued", v=v), protocol.chunk("i", 1, "x", [1], v=v),
                    protocol.ok("i", 2, {}, v=v), protocol.error("i", 3, "internal", "m", v=v)):
            assert protocol.parse_reply(protocol.pack(msg))["v"] == v


def test_requests_without_params_take_none():
    for r in table("Requests", "type"):
        if r["params"] == "none":
            assert parse(lit(r["type"]), {}) == {}
            with pytest.raises(protocol.ProtocolError):
                parse(lit(r["type"]), {"x": 1})


# -- results -------------------------------------------------------------------------------------------------------
RESULT_SECTIONS = {"hello": "hello result", "generate": "generate result", "cancel": "cancel result",
                   "status": "status result", "health": "health result", "ps": "ps result",
                   "clear_quarantine": "clear_quarantine result"}


def test_result_fields_match_both_ways():
    documented = {t: [r for r in table(s, "field") if r.get("when", "always") == "always"]
                  for t, s in RESULT_SECTIONS.items()}
    assert {t: [lit(r["field"]) for r in rows] for t, rows in documented.items()} == \
        {t: list(protocol.RESULT_FIELDS[t]) for t in RESULT_SECTIONS}
    assert protocol.RESULT_FIELDS["shutdown"] == ()
    assert set(protocol.RESULT_FIELDS) == set(RESULT_SECTIONS) | {"shutdown"}
    for r in table("Requests", "type"):  # the summary table agrees where it lists fields
        if lit(r["type"]) in RESULT_SECTIONS and names(r["ok result"]):
            assert names(r["ok result"]) == list(protocol.RESULT_FIELDS[lit(r["type"])])


SAMPLES: dict[str, Any] = {"int": 7, "string": "s", "float": 1.5, "bool": True, "map": {}}
VALID: dict[str, Any] = {"state": "ready", "done_reason": "stop", "version": 1}
VIEWS: dict[str, Any] = {"hello": events.Hello, "status": events.Status, "health": events.Health}


def _sample(section: str) -> dict[str, Any]:
    rows = [r for r in table(section, "field") if r.get("when", "always") == "always"]
    out = {lit(r["field"]): SAMPLES[r["type"]] for r in rows}
    return out | {k: v for k, v in VALID.items() if k in out and isinstance(v, type(out[k]))}


@pytest.mark.parametrize("type_", ["hello", "status", "health", "generate"])
def test_client_views_accept_documented_types_and_reject_others(type_: str):
    sample = _sample(RESULT_SECTIONS[type_])

    def build(raw: dict[str, Any]) -> Any:
        return events.Result.from_wire(raw, "") if type_ == "generate" else VIEWS[type_].from_wire(raw)

    view = build(sample)
    assert {f.name for f in dataclasses.fields(view)} >= set(protocol.RESULT_FIELDS[type_])
    for field in sample:
        with pytest.raises(errors.ProtocolViolation, match=field):
            build(sample | {field: []})  # no documented field is a list
        with pytest.raises(errors.ProtocolViolation, match=field):
            build({k: v for k, v in sample.items() if k != field})


def test_generate_text_only_when_not_streamed():
    row = {lit(r["field"]): r for r in table("generate result", "field")}["text"]
    assert row["when"] == "stream false" and row["type"] == "string"
    raw = _sample("generate result")
    assert events.Result.from_wire(raw | {"text": "whole"}, None).text == "whole"
    with pytest.raises(errors.ProtocolViolation, match="text"):
        events.Result.from_wire(raw, None)
