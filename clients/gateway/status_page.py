"""The status page: `GET /` for a browser, its files under `/static/`, and `GET /api/moed/status`, the JSON it polls.

How it runs: the page (static/index.html, status.js, status.css: package data, no build step, nothing fetched from
elsewhere) polls /api/moed/status every 1.5 s and draws what it gets. That route answers from the daemon's
`status` reply (the shared snapshot, at most status_max_age_s old), passed through as the daemon sent it (optional
fields such as `experts`, `requests` and `governor` included when the daemon reports them), plus a few facts of the
gateway's own. `GET /` serves the page to clients that accept HTML (browsers) and the plain "moed gateway is
running" to everything else (tools that probe it, as they probe Ollama's /).

The page and its files hold no data, so they are served without the API key; the JSON route needs it like every
other route, and the page asks for the key when it gets 401. The page gets a strict Content-Security-Policy (its
own scripts and styles only, fetches to this origin only), so even a string that escaped the page's own escaping
(it shows every string with textContent) could not run script.
"""

from __future__ import annotations

import math
import time
from importlib import resources
from typing import Any

from aiohttp import web

from .errors import ApiError
from .web import CONFIG, METRICS, UPSTREAM, dumps

STATUS_ROUTE = "/api/moed/status"
STATIC_PREFIX = "/static/"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def load_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by name (from the package's static/ folder), with their content types."""
    folder = resources.files(__package__).joinpath("static")
    out: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            out[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return out


class StatusPage:
    """The page's three routes; the files are read once, when the application is built."""

    def __init__(self) -> None:
        self.files = load_files()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.root), web.get(STATIC_PREFIX + "{name}", self.static),
                web.get(STATUS_ROUTE, status_json)]

    @staticmethod
    def is_public(request: web.Request) -> bool:
        """Whether the request is for the page or its files, which carry no data and need no API key."""
        return request.method in ("GET", "HEAD") and (request.path == "/" or request.path.startswith(STATIC_PREFIX))

    async def root(self, request: web.Request) -> web.Response:
        if not wants_html(request) or "index.html" not in self.files:
            return web.Response(text="moed gateway is running")  # Ollama answers / so; some tools probe it
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.files:  # only the files the package ships: no path ever reaches the file system
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        body, content_type = self.files[name]
        headers = {**_HEADERS, **({"Content-Security-Policy": _CSP} if content_type == "text/html" else {})}
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


def wants_html(request: web.Request) -> bool:
    """True when the client's Accept header names HTML (a browser), not for `*/*` or no header (curl, probes)."""
    return any(part.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml")
               for part in request.headers.get("Accept", "").split(","))


async def status_json(request: web.Request) -> web.Response:
    """The daemon's status and the gateway's view of it; 503 (same shape, `up` false) when the daemon is away.

    `{"up", "time", "error", "status", "gateway": {"model", "http_in_flight", "status_max_age_s"}}`: `status` is
    the daemon's reply as sent (the last one received when the daemon does not answer now, else null), with
    non-finite numbers as null and bytes as text so that any browser can parse it."""
    upstream = request.app[UPSTREAM]
    error: dict[str, str] | None = None
    try:
        await upstream.status()
    except ApiError as e:
        error = {"code": e.code or "daemon_unavailable", "message": e.message}
    status, fresh = upstream.snapshot
    body = {"up": error is None and fresh, "time": time.time(), "error": error,
            "status": jsonable(status.raw) if status is not None else None,
            "gateway": {"model": upstream.model_id(status) if status is not None else None,
                        "http_in_flight": request.app[METRICS].http_in_flight() - 1,  # less this one
                        "status_max_age_s": request.app[CONFIG].status_max_age_s}}
    return web.Response(text=dumps(body), status=200 if error is None else 503, content_type="application/json",
                        headers=_HEADERS)


def jsonable(value: Any, depth: int = 0) -> Any:
    """`value` (decoded msgpack) as strict JSON: NaN and infinities become null (JSON.parse rejects them), bytes
    are decoded, keys become strings, anything nested absurdly deep is cut."""
    if depth > 32:
        return None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    return value if value is None or isinstance(value, bool | int | str) else str(value)
