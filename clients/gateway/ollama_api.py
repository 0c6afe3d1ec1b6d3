"""The Ollama API: GET /api/version, GET /api/tags, POST /api/show, POST /api/generate and POST /api/chat.

generate and chat stream NDJSON by default (`"stream": false` for one object): a line `{"done": false, ...}` per
daemon chunk as it arrives, then one with `done: true`, `done_reason`, the token counts and the durations in
nanoseconds. As in Ollama, /api/generate applies the model's chat template (a user message, with `system` before
it) unless `raw` is true; the daemon applies it. `options` map to the daemon's sampling params (num_predict ->
max_tokens; a negative num_predict leaves the daemon's default); runner options (num_ctx, num_thread, ...) and
`keep_alive` are accepted and ignored, since the daemon owns its model and memory. The model is listed as
`<name>:latest`, and both names are accepted. Errors are `{"error": message}` with the HTTP status of docs/gateway.md.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..events import Result, Status
from .errors import ApiError, invalid
from .upstream import Upstream
from .web import METRICS, STARTED, UPSTREAM, EventStream, dumps, json_response, read_json, template

TAG = ":latest"
_OPTIONS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "min_p": "min_p", "seed": "seed", "stop": "stop"}
_RENAME = {wire: f"options.{name}" for name, wire in _OPTIONS.items()}
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "format": (None, ""), "images": (None, []), "template": (None, ""), "suffix": (None, ""), "context": (None, []),
    "think": (None, False), "tools": (None, []), "logprobs": (None, False), "top_logprobs": (None, 0),
    "width": (None,), "height": (None,), "steps": (None,),
}


def routes() -> list[web.RouteDef]:
    return [web.get("/api/version", version), web.get("/api/tags", tags), web.post("/api/show", show),
            web.post("/api/generate", generate), web.post("/api/chat", chat)]


async def version(request: web.Request) -> web.Response:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return json_response({"version": package_version("moed")})
    except PackageNotFoundError:
        return json_response({"version": "0.0.0"})


async def tags(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    status = await upstream.status()
    name = upstream.model_id(status) + TAG
    return json_response({"models": [{
        "name": name, "model": name, "modified_at": _time(request.app[STARTED]), "size": 0,
        "digest": hashlib.sha256(status.store.encode()).hexdigest(), "details": _details(status)}]})


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    upstream = request.app[UPSTREAM]
    await upstream.resolve_model(body.get("model", body.get("name")), aliases=(TAG,))
    status = await upstream.status()
    info: dict[str, Any] = {"general.architecture": status.model_type}
    if (context := await upstream.context_length()) is not None:
        info[f"{status.model_type}.context_length"] = context
    return json_response({"modelfile": "", "parameters": "", "template": "", "details": _details(status),
                          "model_info": info, "capabilities": ["completion"],
                          "modified_at": _time(request.app[STARTED])})


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    params = _params(body)
    model = await _model(request.app[UPSTREAM], body)
    prompt, system = body.get("prompt") or "", body.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str):
        raise invalid("`prompt` and `system` must be strings", "prompt")
    if not prompt:  # Ollama's "load the model" request: the daemon has it loaded already
        return json_response({"model": model, "created_at": _time(), "response": "", "done": True,
                              "done_reason": "unload" if body.get("keep_alive") == 0 else "load"})
    if body.get("raw"):
        params["prompt"] = prompt
    else:
        params["messages"] = [{"role": "system", "content": system}] * bool(system) + [
            {"role": "user", "content": prompt}]
    return await _respond(request, body, params, lambda text: {"response": text})


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    params = _params(body)
    model = await _model(request.app[UPSTREAM], body)
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise invalid("`messages` must be a list", "messages")
    if not messages:  # Ollama's "load the model" request
        return json_response({"model": model, "created_at": _time(), "message": {"role": "assistant", "content": ""},
                              "done": True, "done_reason": "load"})
    params["messages"] = [_message(i, m) for i, m in enumerate(messages)]
    return await _respond(request, body, params, lambda text: {"message": {"role": "assistant", "content": text}})


# -- request parsing ---------------------------------------------------------------------------------------------
def _params(body: dict[str, Any]) -> dict[str, Any]:
    for key, neutral in _NEUTRAL.items():
        if key in body and body[key] not in neutral:
            raise invalid(f"`{key}` is not supported by moed; leave it out", key, "unsupported_parameter")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise invalid("`options` must be an object", "options")
    params: dict[str, Any] = {}
    for name, wire in _OPTIONS.items():
        value = options.get(name)
        if value is None or (name == "num_predict" and isinstance(value, int) and value < 0):
            continue  # num_predict -1 (no limit) / -2 (fill the context): the daemon's default
        params[wire] = [value] if name == "stop" and isinstance(value, str) else value
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise invalid("`stream` must be a boolean", "stream")
    return params


async def _model(upstream: Upstream, body: dict[str, Any]) -> str:
    await upstream.resolve_model(body.get("model"), aliases=(TAG,))
    return str(body["model"])


def _message(i: int, m: Any) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
        raise invalid(f"`{where}` must be an object with `role` system, user or assistant", where)
    if m.get("images") or m.get("tool_calls"):
        raise invalid(f"`{where}`: images and tool calls are not supported by moed", where,
                      "unsupported_parameter")
    if not isinstance(m.get("content", ""), str):
        raise invalid(f"`{where}.content` must be a string", f"{where}.content")
    return {"role": m["role"], "content": m.get("content", "")}


# -- responses ---------------------------------------------------------------------------------------------------
async def _respond(request: web.Request, body: dict[str, Any], params: dict[str, Any],
                   piece: Any) -> web.StreamResponse:
    """Run the generation and answer it: NDJSON lines as the text comes, or one object."""
    model = str(body["model"])
    async with await request.app[UPSTREAM].generate(params, _RENAME) as gen:
        if not body.get("stream", True):
            result = await gen.collect()
            request.app[METRICS].observe("ollama", result)
            return json_response({"model": model, "created_at": _time(), **piece(result.text), **_final(result)})
        out = EventStream(request, "ndjson")
        await out.open()
        line = template(lambda when, text: {"model": model, "created_at": when, **piece(text), "done": False}, 2)
        try:
            async for texts in gen.batches():  # pieces that arrived together go out in one write
                when = _time()
                await out.write(b"".join([out.frame(line(when, text)) for text in texts]))
        except ApiError as e:  # after the headers: the error goes out as a line, as Ollama's streams do
            return await out.close(out.frame(dumps(e.ollama_body())))
        request.app[METRICS].observe("ollama", gen.result)
        return await out.close(out.frame(dumps({"model": model, "created_at": _time(), **piece(""),
                                                **_final(gen.result)})))


def _final(result: Result) -> dict[str, Any]:
    return {"done": True, "done_reason": result.done_reason, "total_duration": result.total_ns,
            "load_duration": 0, "prompt_eval_count": result.prompt_tokens, "prompt_eval_duration": result.prefill_ns,
            "eval_count": result.generated_tokens, "eval_duration": result.decode_ns}


def _details(status: Status) -> dict[str, Any]:
    return {"parent_model": "", "format": "moed", "family": status.model_type, "families": [status.model_type],
            "parameter_size": "", "quantization_level": ""}


def _time(unix: float | None = None) -> str:
    """RFC 3339 UTC, as Ollama writes timestamps."""
    when = datetime.now(UTC) if unix is None else datetime.fromtimestamp(unix, UTC)
    return when.isoformat().replace("+00:00", "Z")
