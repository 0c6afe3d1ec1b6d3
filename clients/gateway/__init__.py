"""The moed HTTP gateway: the OpenAI and Ollama APIs and Prometheus metrics, as a client of the daemon.

It speaks the documented ZeroMQ protocol through moed.clients' AsyncClient (never MLX, never moed.daemon) and
serves HTTP with aiohttp. Run it with `moed gateway --endpoint ENDPOINT --http [HOST:]PORT`, or in a process
with `start_in_thread(GatewayConfig(...))`, which returns a handle with `.stop()`. docs/gateway.md describes the
endpoints, the parameter mapping, the errors and the access rules.

    config.py      GatewayConfig (validated: off loopback needs an API key), parse_bind, read_api_key
    server.py      Gateway, run (blocking), start_in_thread / GatewayHandle
    app.py         the aiohttp application: routes, error / auth / CORS middlewares, /metrics
    status_page.py the status page at / (static/: HTML, JS, CSS) and /api/moed/status, the JSON it polls
    openai_api.py  /v1/models, /v1/chat/completions, /v1/completions (SSE streaming)
    ollama_api.py  /api/version, /api/tags, /api/show, /api/generate, /api/chat (NDJSON streaming)
    upstream.py    the shared AsyncClient, status snapshots, the model name, Generation
    metrics.py     prometheus_client registry and the daemon-status Collector
    errors.py      ApiError and the moed error -> HTTP status mapping
    web.py         app keys, JSON bodies, EventStream (SSE / NDJSON)
"""

from __future__ import annotations

from .config import GatewayConfig, GatewayConfigError, is_loopback, parse_bind, read_api_key
from .server import Gateway, GatewayHandle, run, start_in_thread

__all__ = ["Gateway", "GatewayConfig", "GatewayConfigError", "GatewayHandle", "is_loopback", "parse_bind",
           "read_api_key", "run", "start_in_thread"]
