"""The aiohttp application: routes (OpenAI, Ollama, /metrics, the status page) and the middlewares around them.

Middlewares, outermost first:
- cors (only when origins are configured): answers preflight requests; an on_response_prepare hook puts
  Access-Control-Allow-Origin on every other answer to an allowed origin, streamed ones included;
- errors: turns ApiError, aiohttp's HTTP errors (404, 405, 413) and unexpected exceptions into the API's error
  shape (OpenAI's `{"error": {...}}` off /api/, Ollama's `{"error": "..."}` under it) and counts every answer;
- auth (only with an API key): `Authorization: Bearer <key>`, compared in constant time; the status page's HTML,
  script and style files carry no data and are served without it (its JSON route needs it).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler, Middleware

from . import ollama_api, openai_api
from .config import GatewayConfig
from .errors import AUTH, SERVER, ApiError
from .metrics import CONTENT_TYPE, Metrics
from .status_page import StatusPage
from .upstream import Upstream
from .web import CONFIG, METRICS, STARTED, UPSTREAM, json_response

log = logging.getLogger("moed.gateway")


def build_app(config: GatewayConfig, upstream: Upstream) -> web.Application:
    """The application for one gateway; `upstream` must live on the loop that will serve it."""
    page = StatusPage()
    middlewares: list[Middleware] = [_errors, *([_auth(config.api_key, page.is_public)] if config.api_key else [])]
    if config.cors_origins:
        middlewares.insert(0, _cors(config.cors_origins))
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    if config.cors_origins:
        app.on_response_prepare.append(_cors_headers)
    app[CONFIG], app[UPSTREAM], app[STARTED] = config, upstream, time.time()
    app[METRICS] = Metrics(lambda: upstream.snapshot)
    app.add_routes(_every_route_expects([*page.routes(), web.get("/metrics", metrics), *openai_api.routes(),
                                         *ollama_api.routes()]))
    return app


def _every_route_expects(routes: list[web.RouteDef]) -> list[web.RouteDef]:
    """The routes with `_expect` as their Expect handler, and routes of our own for what aiohttp would answer itself
    (405 for another method on a known path, 404 for an unknown path): aiohttp's own answers would use its own
    Expect handler."""
    out: list[web.RouteDef] = []
    paths = list(dict.fromkeys(r.path for r in routes))
    for path in paths:
        mine = [r for r in routes if r.path == path]
        out += [web.RouteDef(r.method, r.path, r.handler, {"expect_handler": _expect, **r.kwargs}) for r in mine]
        out.append(web.route(hdrs.METH_ANY, path, _method_not_allowed, expect_handler=_expect))
    out.append(web.route(hdrs.METH_ANY, "/{unrouted:.*}", _not_found, expect_handler=_expect))
    return out


async def _method_not_allowed(request: web.Request) -> web.StreamResponse:
    allowed = {r.method for r in request.match_info.route.resource if r.method != hdrs.METH_ANY}
    raise web.HTTPMethodNotAllowed(request.method, allowed)


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


_UNROUTED = (_method_not_allowed, _not_found)


async def _expect(request: web.Request) -> None:
    """The `Expect` header, as aiohttp's own handler answers it (100 Continue, else 417), but with the unknown value
    written escaped: aiohttp put the raw value into its text, and a byte that is not UTF-8 made that a 500."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the body has not started
    else:
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {ascii(expect)}")


async def metrics(request: web.Request) -> web.Response:
    try:
        await request.app[UPSTREAM].status()  # refresh the snapshot if it is old
    except ApiError:
        pass  # moed_daemon_up says so
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE})


def _api(request: web.Request) -> str:
    path = request.path
    if path.startswith("/api/moed/"):  # the gateway's own JSON (the status page's)
        return "gateway"
    return "ollama" if path.startswith("/api/") else "openai" if path.startswith("/v1/") else "gateway"


def _error_response(request: web.Request, e: ApiError) -> web.Response:
    body = e.ollama_body() if _api(request) == "ollama" else e.openai_body()
    response = json_response(body, e.status)
    response.headers.update(e.headers())
    if e.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _from_http(e: web.HTTPException) -> ApiError:
    if e.status == 413:
        return ApiError(413, f"the request body is too large: {e.text}", code="too_large")
    if e.status == 404:
        return ApiError(404, "no such endpoint; see docs/gateway.md for the routes", code="not_found")
    if e.status == 405:
        return ApiError(405, "method not allowed on this endpoint", code="method_not_allowed")
    return ApiError(e.status, e.text or e.reason, SERVER if e.status >= 500 else "invalid_request_error")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    m = request.app[METRICS]
    route = request.match_info.route.resource
    label = route.canonical if route is not None and request.match_info.handler not in _UNROUTED else "unmatched"
    m.in_flight.inc()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except ApiError as e:
        code = e.status
        return _error_response(request, e)
    except web.HTTPException as e:
        if e.status < 400:  # a redirect or the like: aiohttp's own answer
            code = e.status
            raise
        code = e.status
        return _error_response(request, _from_http(e))
    except (ConnectionResetError, asyncio.CancelledError):
        code = 499  # the client went away (nginx's code for it): nothing can be sent
        raise
    except Exception as e:  # a bug here must not leave the client without an answer
        log.exception("gateway: %s %s failed", request.method, request.path)
        return _error_response(request, ApiError(500, f"internal gateway error: {e!r}", SERVER, code="internal"))
    finally:
        m.in_flight.dec()
        m.requests.labels(_api(request), label, str(code)).inc()


def _auth(key: str | None, public: Callable[[web.Request], bool]) -> Middleware:
    expected = (key or "").encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if public(request):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)):
            raise ApiError(401, "a valid API key is required: send `Authorization: Bearer <key>`", AUTH,
                           code="invalid_api_key")
        return await handler(request)

    return auth


def _cors(origins: tuple[str, ...]) -> Middleware:
    """Answers preflight requests from allowed origins; _cors_headers marks the other answers to them."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method == "OPTIONS" and _allowed_origin(request, origins) is not None
                and "Access-Control-Request-Method" in request.headers):
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600"})
        return await handler(request)

    return cors


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs before any response's headers go out, streamed ones included."""
    origin = _allowed_origin(request, request.app[CONFIG].cors_origins)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


def _allowed_origin(request: web.Request, origins: tuple[str, ...]) -> str | None:
    """The Access-Control-Allow-Origin value for this request, or None when its origin is not allowed."""
    origin = request.headers.get("Origin")
    if origin is None or not ("*" in origins or origin in origins):
        return None
    return "*" if "*" in origins else origin
