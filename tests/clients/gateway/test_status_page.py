"""The status page: the gateway's JSON route (the daemon's status passed through, optional fields included), the
page's files and who may fetch them, and the page itself in headless Chromium (skipped without it): it draws a
full status, redraws when the status changes, shows client strings as text, says "not reported" for the optional
fields a daemon does not send, and a screenshot is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from browser import HOSTILE_ID, NOT_REPORTED, ScriptedStatus, dump_dom, find_chromium, full_status, parse, screenshot
from gateway_harness import gateway, http  # also puts tests/clients on the path

from fakedaemon import STATUS, FakeDaemon, fake_daemon  # noqa: F401

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="needs chromium (apt-get install -y chromium)")
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}  # as a browser sends it


def test_status_json_passes_the_daemon_status_through(fake):
    status = full_status(1)
    status["experts"]["layers"][0]["heat"][0] = math.nan  # JSON has no NaN: the browser's JSON.parse would fail
    status["governor"]["readings"]["skew"] = math.inf
    fake.on("status", lambda r: r.ok(status))
    with gateway(fake.endpoint) as gw:
        r = http("GET", gw.url + "/api/moed/status")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()  # json.loads accepts NaN, so check the text too
    assert "NaN" not in r.body.decode() and "Infinity" not in r.body.decode()
    assert body["up"] is True and body["error"] is None and body["gateway"]["model"] == "tiny.moe"
    got = body["status"]
    assert got["experts"]["layers"][0]["heat"][0] is None and got["governor"]["readings"]["skew"] is None
    assert got["experts"]["layers"][1] == status["experts"]["layers"][1]
    assert got["requests"] == status["requests"] and got["requests"][0]["id"] == HOSTILE_ID
    assert got["governor"]["limits"] == status["governor"]["limits"]
    assert got["cache"] == status["cache"] and got["finished"] == status["finished"]


def test_status_json_without_the_optional_fields(fake):
    with gateway(fake.endpoint) as gw:
        body = http("GET", gw.url + "/api/moed/status").json()
    assert body["status"] == STATUS  # exactly what the daemon sent, nothing added
    assert body["gateway"]["http_in_flight"] == 0  # the status request itself is not counted


def test_status_json_when_the_daemon_is_away():
    with gateway("ipc:///tmp/moed-no-such-dir/d.sock") as gw:
        r = http("GET", gw.url + "/api/moed/status")
    body = r.json()
    assert r.status == 503 and body["up"] is False and body["status"] is None
    assert body["error"]["code"] == "daemon_unavailable" and body["error"]["message"]


def test_root_serves_the_page_to_browsers_only(fake):
    with gateway(fake.endpoint) as gw:
        assert http("GET", gw.url + "/").body == b"moed gateway is running"  # tools that probe /
        assert http("GET", gw.url + "/", headers={"Accept": "*/*"}).body == b"moed gateway is running"
        page = http("GET", gw.url + "/", headers=HTML)
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b'src="/static/status.js"' in page.body
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
        js = http("GET", gw.url + "/static/status.js")
        assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
        unsafe = (b".innerHTML", b".outerHTML", b"insertAdjacentHTML", b"document.write", b"eval(", b"new Function")
        assert b"textContent" in js.body and not [u for u in unsafe if u in js.body]
        css = http("GET", gw.url + "/static/status.css")
        assert css.headers["Content-Type"].startswith("text/css")
        assert all(b"://" not in f.body for f in (page, js, css))  # nothing from elsewhere: no CDN, no fonts
        for name in ("nope.js", "..%2Fapp.py", "%2E%2E%2F%2E%2E%2Fpyproject.toml", "../app.py"):
            assert http("GET", gw.url + "/static/" + name).status == 404, name


def test_the_page_needs_no_key_its_data_does(fake):
    with gateway(fake.endpoint, api_key="k3y") as gw:
        assert http("GET", gw.url + "/", headers=HTML).status == 200
        assert http("GET", gw.url + "/static/status.js").status == 200
        denied = http("GET", gw.url + "/api/moed/status")
        assert denied.status == 401 and denied.json()["error"]["type"] == "authentication_error"  # not Ollama's shape
        assert http("GET", gw.url + "/metrics").status == 401
        ok = http("GET", gw.url + "/api/moed/status", headers={"Authorization": "Bearer k3y"})
        assert ok.status == 200 and ok.json()["up"] is True


# -- in a browser --------------------------------------------------------------------------------------------------
@needs_chromium
def test_the_page_draws_a_full_status_and_redraws_on_change(fake):
    script = ScriptedStatus(full_status)
    fake.on("status", script)
    with gateway(fake.endpoint, status_max_age_s=0.01) as gw:
        first = parse(dump_dom(gw.url + "/"))
        script.make = lambda n: full_status(n, governor_state="CRITICAL", layers=4, experts=8, requests=[
            {"id": "r-2", "client": "curl", "state": "queued", "prompt_tokens": 5, "generated_tokens": 0,
             "age_s": 0.1}])
        second = parse(dump_dom(gw.url + "/"))
    t = first.texts
    assert t["state"] == "ready" and t["model"] == "model: tiny.moe" and "updated" in t["updated"]
    assert t["govstate"] == "BALANCED" and "laptop-quiet" in t["governor"] and "memory pressure" in t["governor"]
    assert "48 layers × 128 experts" in t["experts-summary"] and t["experts-none"] == ""
    assert HOSTILE_ID in t["requests"] and "1 queued · 1 prefilling · 1 decoding" in t["requests-summary"]
    assert "img" not in first.tags and t["requests-none"] == ""  # the hostile id stayed text
    assert "tok/s" in t["v-tok"] and "%" in t["v-hit"] and "/s" in t["v-read"]  # rates from two or more polls
    assert "length" in t["finished"] and "112" in t["finished"]
    assert NOT_REPORTED not in " ".join(t.values())
    u = second.texts
    assert u["govstate"] == "CRITICAL" and "4 layers × 8 experts" in u["experts-summary"]
    assert "r-2" in u["requests"] and HOSTILE_ID not in u["requests"] and u["requests-summary"] == "1 queued"
    assert u != t


@needs_chromium
def test_the_page_says_what_the_daemon_does_not_report(fake):
    with gateway(fake.endpoint) as gw:
        t = parse(dump_dom(gw.url + "/", budget_ms=2500)).texts
    assert t["state"] == "ready" and "3 · 1" in t["cache"]  # hits · misses of the plain status
    for ident in ("governor", "experts-none", "requests-none", "finished"):
        assert t[ident].strip() == NOT_REPORTED, ident
    assert t["experts-summary"] == "" and t["requests-summary"] == ""


@needs_chromium
def test_the_page_when_the_daemon_is_away_and_with_a_key():
    with gateway("ipc:///tmp/moed-no-such-dir/d.sock") as gw:
        t = parse(dump_dom(gw.url + "/", budget_ms=2500)).texts
    assert t["state"] == "daemon down" and "does not answer" in t["problem"]
    with FakeDaemon() as fake, gateway(fake.endpoint, api_key="k3y") as gw:
        dom = dump_dom(gw.url + "/", budget_ms=2500)
    assert '<form id="keyform" class="problem">' in dom  # no longer hidden: the page asks for the key
    assert parse(dom).texts["state"] == "connecting"


@needs_chromium
def test_a_screenshot_is_written(fake, tmp_path: Path):
    fake.on("status", ScriptedStatus(full_status))
    with gateway(fake.endpoint, status_max_age_s=0.01) as gw:
        screenshot(gw.url + "/", tmp_path / "page.png", budget_ms=4000)
    png = (tmp_path / "page.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a drawn page, not a blank one


@needs_chromium
@pytest.mark.slow
def test_the_page_in_front_of_a_real_daemon(model_dir):
    pytest.importorskip("mlx.core")
    from daemon_harness import InProcess
    from moed.clients import Client

    with InProcess(model_dir("qwen3_moe", "store-mlx"), max_batch=2, queue_limit=4) as d, \
            gateway(d.endpoint, model_name="tiny", status_max_age_s=0.01) as gw:
        with Client(d.endpoint, timeout=60) as c:
            c.generate("Once upon a time", max_tokens=8).collect()  # counters that are not all zero
        status = http("GET", gw.url + "/api/moed/status").json()["status"]
        t = parse(dump_dom(gw.url + "/", budget_ms=4000)).texts
    assert t["state"] == "ready" and t["model"] == "model: tiny" and t["problem"] == ""
    assert "hit rate (all time)" in t["cache"] and "uptime" in t["load"]
    for field, ident in (("governor", "governor"), ("experts", "experts-none"), ("requests", "requests-none")):
        assert (t[ident].strip() == NOT_REPORTED) == (field not in status), field  # drawn exactly when reported
