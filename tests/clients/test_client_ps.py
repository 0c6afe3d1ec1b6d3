"""The client's version 2 calls against the fake daemon: ps, cancel_job, status(detail=...), each sent in the
version hello settled on, and refused locally (NotAvailable) when the daemon speaks only version 1."""

from __future__ import annotations

import pytest
from fakedaemon import STATUS, FakeDaemon, slow_generate
from fakedaemon import fake_daemon  # noqa: F401  (the `fake` fixture)

from moed.clients import Client, NotAvailable, NotFound, RequestInfo, protocol


def test_status_detail_and_ps_go_out_as_version_2(fake: FakeDaemon):
    fake.on("status", lambda r: r.ok({**STATUS, "experts": {"layers": []}} if r.params["detail"] else dict(STATUS)))
    with Client(fake.endpoint, timeout=5) as c:
        assert c.status(detail=["experts"]).raw["experts"] == {"layers": []}
        assert "experts" not in c.status().raw
        assert c.ps() == []
        with pytest.raises(NotFound):
            c.cancel_job("99")
    sent = [(r["type"], r["v"], r["params"]) for r in fake.requests]
    v = protocol.VERSION
    assert sent == [("hello", 1, {"versions": list(protocol.SUPPORTED_VERSIONS), "client": "moed-client"}),
                    ("status", v, {"detail": ["experts"]}), ("status", v, {"detail": []}), ("ps", v, {}),
                    ("cancel", v, {"target": None, "job": "99"})]


def test_ps_rows_are_typed_and_cancel_job_reaches_another_connection(fake: FakeDaemon):
    fake.on("generate", slow_generate(interval=0.02))
    with Client(fake.endpoint, timeout=5, name="a") as a, Client(fake.endpoint, timeout=5, name="b") as b:
        stream = a.generate("hi")
        assert stream.next_event() is not None  # running
        (row,) = b.ps()
        assert isinstance(row, RequestInfo) and row.state == "decoding" and row.id == "1"
        assert b.cancel_job(row.id) is True
        assert stream.collect().done_reason == "cancelled"


def test_a_version_1_daemon_gets_none_of_it(fake: FakeDaemon):
    fake.on("hello", lambda r: r.ok({"version": 1, "server": "old/1", "model_type": "m", "limits": {}}))
    with Client(fake.endpoint, timeout=5) as c:
        for call in (c.ps, lambda: c.cancel_job("1"), lambda: c.status(detail=["experts"])):
            with pytest.raises(NotAvailable, match="protocol version 2"):
                call()
        assert c.status().state == "ready"
    assert [(r["type"], r["v"]) for r in fake.requests] == [("hello", 1), ("status", 1)]
