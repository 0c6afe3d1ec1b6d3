"""HTTP errors of the gateway: ApiError, and how each moed client exception maps to an HTTP status.

One ApiError serves both APIs: the OpenAI routes write it as `{"error": {"message", "type", "param", "code"}}`,
the Ollama routes as `{"error": message}`, with the same status code (and `Retry-After` when retrying helps).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DaemonUnavailable, MoedError, ProtocolViolation, RequestError, Timeout

INVALID = "invalid_request_error"
AUTH = "authentication_error"
SERVER = "server_error"

_FIELD = re.compile(r"^`([^`]+)`")  # invalid_params messages start with the field they concern

# moed error code -> (HTTP status, OpenAI error type, code shown to the HTTP client, Retry-After seconds)
_BY_CODE: dict[str, tuple[int, str, str, int | None]] = {
    "invalid_params": (400, INVALID, "invalid_params", None),
    "context_overflow": (400, INVALID, "context_length_exceeded", None),
    "too_large": (413, INVALID, "too_large", None),
    "busy": (503, SERVER, "busy", 1),
    "loading": (503, SERVER, "loading", 5),
    "shutting_down": (503, SERVER, "shutting_down", 5),
}


@dataclass
class ApiError(Exception):
    """An HTTP error response: status, a message for a person, and OpenAI's type / param / code."""

    status: int
    message: str
    type: str = INVALID
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    """A 400 for a request the gateway itself rejects."""
    return ApiError(400, message, INVALID, param, code)


def from_moed(e: MoedError, params: Mapping[str, str] | None = None) -> ApiError:
    """The ApiError for a moed client exception. params renames moed fields to the HTTP request's names
    (e.g. max_tokens -> max_completion_tokens) for the `param` of an invalid_params error."""
    if isinstance(e, RequestError):
        status, kind, code, retry = _BY_CODE.get(e.code, (500, SERVER, e.code, None))
        param = None
        if e.code == "invalid_params" and (m := _FIELD.match(e.message)):
            param = (params or {}).get(m.group(1), m.group(1))
        if e.code == "busy":
            retry = max(1, retry or 1)
        return ApiError(status, e.message, kind, param, code, retry)
    if isinstance(e, DaemonUnavailable):
        return ApiError(503, f"the moed daemon is not reachable: {e}", SERVER, None, "daemon_unavailable", 5)
    if isinstance(e, Timeout):
        return ApiError(504, f"the moed daemon did not answer in time: {e}", SERVER, None, "timeout")
    if isinstance(e, ProtocolViolation):
        return ApiError(502, f"the moed daemon broke its protocol: {e}", SERVER, None, "bad_gateway")
    return ApiError(500, str(e), SERVER, None, "internal")
