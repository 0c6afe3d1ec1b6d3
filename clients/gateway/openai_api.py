"""The OpenAI API: GET /v1/models, POST /v1/chat/completions and POST /v1/completions, streamed or not.

A request becomes one daemon `generate` (messages for chat, prompt for completions; the daemon applies the chat
template). Parameters map one to one (docs/gateway.md); the daemon and the client library validate them, and an
`invalid_params` error names the field as the HTTP request called it. Parameters moed cannot honour are accepted
only at their neutral value (`n` 1, penalties 0, no tools, ...), anything else is a 400 naming them; keys this
gateway does not know are ignored, as tools send many.

Streaming writes server-sent events: one `chat.completion.chunk` (or `text_completion`) per daemon chunk, as it
arrives, then a chunk with `finish_reason`, the `usage` chunk when `stream_options.include_usage`, and
`data: [DONE]`. Headers go out only once the daemon has admitted the request, so a full queue is still a 503.
Per chunk the work is small: the event's JSON comes from a template with only the text encoded, chunks that
arrived together go out in one write, and the closing events go out with the end of the response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..events import Result
from .errors import ApiError, invalid
from .upstream import Generation
from .web import METRICS, STARTED, UPSTREAM, EventStream, dumps, json_response, new_id, read_json, template, unix_now

# Parameters moed has no equivalent for, with the values that mean "off" (accepted and ignored).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logit_bias": (None, {}), "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
    "suffix": (None, ""), "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/models", list_models), web.get("/v1/models/{model}", get_model),
            web.post("/v1/chat/completions", chat_completions), web.post("/v1/completions", completions)]


async def list_models(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    return json_response({"object": "list", "data": [_model(request, upstream.model_id(await upstream.status()))]})


async def get_model(request: web.Request) -> web.Response:
    return json_response(_model(request, await request.app[UPSTREAM].resolve_model(request.match_info["model"])))


def _model(request: web.Request, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(request.app[STARTED]), "owned_by": "moed"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    params, rename = _sampling(body)
    params["messages"] = _messages(body.get("messages"))
    return await _complete(request, body, params, rename, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    params, rename = _sampling(body)
    params["prompt"] = _prompt(body.get("prompt"))
    return await _complete(request, body, params, rename, chat=False)


# -- request parsing ---------------------------------------------------------------------------------------------
def _sampling(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The daemon's sampling params from an OpenAI body, and the renames for error messages."""
    for key, neutral in _NEUTRAL.items():
        if key in body and body[key] not in neutral:
            raise invalid(f"`{key}` = {body[key]!r} is not supported by moed; leave it out", key,
                          "unsupported_parameter")
    params: dict[str, Any] = {}
    rename: dict[str, str] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            params["max_tokens"], rename["max_tokens"] = body[key], key
            break
    for key in ("temperature", "top_p", "top_k", "min_p", "seed"):  # top_k, min_p: extensions, as in vLLM
        if body.get(key) is not None:
            params[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else stop
    return params, rename


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("`messages` must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"`{where}` must be an object with `role` and `content`", where)
        role = _ROLES.get(m.get("role"))  # type: ignore[arg-type]  # any JSON value; None when not a known role
        if role is None:
            raise invalid(f"`{where}.role` {m.get('role')!r} is not supported: moed takes system, developer, user "
                          f"and assistant messages", f"{where}.role")
        out.append({"role": role, "content": _text(m.get("content"), f"{where}.content")})
    return out


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise invalid(f"`{where}` must be a string or a list of text parts (moed serves text only)", where)


def _prompt(raw: Any) -> str:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        return raw[0]
    if not isinstance(raw, str):
        raise invalid("`prompt` must be a string (one prompt per request; token arrays are not supported)",
                      "prompt")
    return raw


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream, options = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("`stream` must be a boolean", "stream")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise invalid("`stream_options` must be an object, and only with `stream` true", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("`stream_options.include_usage` must be a boolean", "stream_options.include_usage")
    return bool(stream), include_usage


# -- responses ---------------------------------------------------------------------------------------------------
async def _complete(request: web.Request, body: dict[str, Any], params: dict[str, Any], rename: dict[str, str],
                    chat: bool) -> web.StreamResponse:
    stream, include_usage = _stream_flags(body)
    upstream = request.app[UPSTREAM]
    model = await upstream.resolve_model(body.get("model"))
    shape = _Shape(chat, model, new_id("chatcmpl" if chat else "cmpl"))
    async with await upstream.generate(params, rename) as gen:
        if stream:
            return await _stream(request, gen, shape, include_usage)
        result = await gen.collect()
        request.app[METRICS].observe("openai", result)
        return json_response(shape.whole(result))


async def _stream(request: web.Request, gen: Generation, shape: _Shape, include_usage: bool) -> web.StreamResponse:
    out = EventStream(request, "sse")
    await out.open()
    if shape.chat:
        await out.send(shape.chunk({"role": "assistant", "content": ""}, None, include_usage))
    piece = shape.piece_template(include_usage)  # per piece only its text is encoded
    frame = out.frame
    try:
        async for texts in gen.batches():  # pieces that arrived together go out in one write
            await out.write(b"".join([frame(piece(text)) for text in texts]))
    except ApiError as e:  # after the headers: the error goes out as an event, as OpenAI's streams do
        return await out.close(frame(dumps(e.openai_body())))
    result = gen.result
    request.app[METRICS].observe("openai", result)
    last = [shape.chunk({} if shape.chat else "", result.done_reason, include_usage)]
    if include_usage:
        last.append({**shape.head("chunk"), "choices": [], "usage": _usage(result)})
    return await out.close(b"".join([*(frame(dumps(obj)) for obj in last), frame("[DONE]")]))


class _Shape:
    """How one response looks: chat or text completion, its id, model and creation time."""

    def __init__(self, chat: bool, model: str, rid: str) -> None:
        self.chat, self.model, self.id, self.created = chat, model, rid, unix_now()

    def head(self, kind: str) -> dict[str, Any]:
        obj = ("chat.completion" if self.chat else "text_completion") + (".chunk" if kind == "chunk" and self.chat
                                                                          else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def chunk(self, delta: Any, finish: str | None, include_usage: bool) -> dict[str, Any]:
        choice = ({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish} if self.chat
                  else {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish})
        return {**self.head("chunk"), "choices": [choice], **({"usage": None} if include_usage else {})}

    def piece_template(self, include_usage: bool) -> Callable[[str], str]:
        """The JSON of `chunk(text)` (chat: `chunk({"content": text})`) for any text, from a template."""
        return template(lambda text: self.chunk({"content": text} if self.chat else text, None, include_usage))

    def whole(self, result: Result) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": result.done_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return {**self.head("whole"), "choices": [choice], "usage": _usage(result)}


def _usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.generated_tokens,
            "total_tokens": result.prompt_tokens + result.generated_tokens}

