"""Headless Chromium for the status page tests, a status with every optional field for the fake daemon, and a
reader for the text of elements in a dumped DOM.

Run as a script to remake the committed screenshot (a gateway in front of the fake daemon with a full status):

    python tests/clients/gateway/browser.py bench/results/status-page.png
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_harness import gateway  # noqa: E402  (also puts tests/clients on the path)

from fakedaemon import STATUS, FakeDaemon, FakeRequest  # noqa: E402

NOT_REPORTED = "not reported by this daemon"
HOSTILE_ID = '<img src=x onerror="document.title=1">'  # a request id a client chose
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromium(url: str, *args: str, budget_ms: int = 6000) -> str:
    """Run headless Chromium on `url` with `args` after `budget_ms` of virtual time; returns its stdout."""
    exe = find_chromium()
    assert exe is not None, "no chromium"
    with tempfile.TemporaryDirectory(prefix="moed-chr-") as profile:
        proc = subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                               *args, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dump_dom(url: str, budget_ms: int = 6000) -> str:
    return chromium(url, "--dump-dom", budget_ms=budget_ms)


def screenshot(url: str, path: Path, size: str = "1280,900", budget_ms: int = 20000) -> None:
    chromium(url, f"--screenshot={path}", f"--window-size={size}", budget_ms=budget_ms)


class _Texts(HTMLParser):
    """Collects the text content of every element that has an id, and the tags of all elements."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.tags: list[str] = []
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("meta", "link", "input", "br", "img", "hr"):  # void elements: no end tag
            return
        ident = dict(attrs).get("id")
        self._open.append((tag, ident))
        if ident:
            self.texts.setdefault(ident, "")

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.texts[ident] += data


def parse(dom: str) -> _Texts:
    """The dumped DOM: `.texts[id]` is an element's text (entities decoded), `.tags` every tag seen."""
    p = _Texts()
    p.feed(dom)
    return p


# -- a daemon status with every optional field ------------------------------------------------------------------
def full_status(n: int, *, governor_state: str = "BALANCED", requests: list[dict[str, Any]] | None = None,
                layers: int = 48, experts: int = 128) -> dict[str, Any]:
    """The n-th status of a busy daemon: counters grow with n (1.5 s of uptime apart), experts resident with heat."""
    rnd = random.Random(7)
    grid = []
    for layer in range(layers):
        resident = sorted(rnd.sample(range(experts), experts * 3 // 10))
        hot = rnd.sample(range(experts), 6)  # a few hot experts per layer, the rest cooling
        heat = [min(1.0, 0.95 if e in hot else rnd.random() ** 3 + 0.04 * ((n + e) % 5)) for e in resident]
        grid.append({"layer": layer, "num_experts": experts, "resident": resident, "heat": heat})
    k = 1 + n
    tokens = int(46 * 1.5 * k + 9 * ((n * 7) % 5))
    lookups = tokens * 8 * layers
    misses = int(lookups * 0.2 + 900 * math.sin(n / 2.0))
    return {**STATUS, "uptime_s": 1.5 * k + 600, "active": 2, "queued": 1, "max_batch": 4,
            "cache": {"hits": lookups - misses, "misses": misses, "hit_rate": 1 - misses / lookups,
                      "budget_bytes": 6 << 30, "used_bytes": (6 << 30) - (37 << 20), "slots": sum(map(len, (
                          g["resident"] for g in grid))), "evictions": misses - 1800, "bytes_loaded": misses * (
                          3 << 20), "decode_tokens": tokens, "decode_bytes_read": misses * (3 << 20),
                      "prefill_bytes_read": 41 << 20},
            "finished": {"stop": 31, "length": 112, "cancelled": 4, "busy": 2},
            "experts": {"layers": grid},
            "requests": requests if requests is not None else [
                {"id": HOSTILE_ID, "client": "openai-python <b>1.x</b>", "state": "decoding", "prompt_tokens": 812,
                 "generated_tokens": 40 + 4 * n, "age_s": 14.2 + 1.5 * n},
                {"id": "c7-12", "client": "moectl", "state": "prefilling", "prompt_tokens": 4096,
                 "generated_tokens": 0, "age_s": 2.1},
                {"id": "ol-3", "client": "ollama", "state": "queued", "prompt_tokens": 57, "generated_tokens": 0,
                 "age_s": 0.4}],
            "governor": {"state": governor_state, "profile": "laptop-quiet",
                         "limits": {"batch_ceiling": 4, "prefetch_depth": 2, "cache_budget_bytes": 6 << 30,
                                    "pace_steps_per_s": None},
                         "reasons": {"batch_ceiling": "memory pressure: warn", "cache_budget_bytes":
                                     "available memory 7.1 GiB", "prefetch_depth": "thermal: nominal"},
                         "readings": {"memory_pressure": "warn", "available_bytes": 7.6e9, "cpu_temp_c": 71.5,
                                      "on_battery": False},
                         "last_change_s": 42.0 + 1.5 * n}}


class ScriptedStatus:
    """A fake daemon `status` handler: each request gets `make(n)` for the next n."""

    def __init__(self, make: Any) -> None:
        self.make, self.n = make, 0

    def __call__(self, req: FakeRequest) -> None:
        self.n += 1
        req.ok(self.make(self.n))


def main(out: str) -> None:
    with FakeDaemon() as fake, gateway(fake.endpoint, status_max_age_s=0.01) as gw:
        fake.on("status", ScriptedStatus(full_status))
        screenshot(gw.url + "/", Path(out).resolve())
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
