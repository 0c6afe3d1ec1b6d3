"""The exceptions a moed client raises, one hierarchy under MoedError.

    MoedError
    ├── DaemonUnavailable   no daemon at the endpoint, no answer to hello in time, or the connection dropped
    ├── Timeout             no reply within the call's deadline (for streams: the longest silence allowed)
    ├── ProtocolViolation   the daemon sent something the protocol forbids (bad frame, seq gap, second final, ...)
    └── RequestError        an `error` final: `.code` (protocol.ERROR_CODES), `.message`, `.details`
        ├── Busy                 code busy; `.position` is where the request would have queued
        ├── InvalidParams        code invalid_params (also raised locally, before sending)
        ├── ContextOverflow      code context_overflow
        ├── NotFound             code not_found (cancel of a request that is not in flight)
        ├── NotAvailable         code not_available (e.g. no governor)
        ├── Loading              code loading
        ├── ShuttingDown         code shutting_down
        ├── Forbidden            code forbidden (a control request without the admin role)
        └── UnsupportedVersion   code unsupported_version
Any other code (or one this client does not know) raises plain RequestError, so a person still sees the message.
"""

from __future__ import annotations

from typing import Any


class MoedError(Exception):
    """Base of every error this client raises."""


class DaemonUnavailable(MoedError, ConnectionError):
    """No daemon answers at the endpoint (or it went away while requests were in flight)."""


class Timeout(MoedError, TimeoutError):
    """A call's deadline passed without the reply it waited for."""


class ProtocolViolation(MoedError):
    """The daemon broke the wire protocol; the message says how. The request it concerned is over."""


class RequestError(MoedError):
    """The daemon answered the request with an error final."""

    def __init__(self, code: str, message: str, request_id: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id
        self.details: dict[str, Any] = details or {}


class Busy(RequestError):
    """The daemon's admission queue is full; retry later."""

    @property
    def position(self) -> int | None:
        pos = self.details.get("position")
        return pos if isinstance(pos, int) else None


class InvalidParams(RequestError):
    """A parameter is missing, of the wrong type or out of range; the message names it."""


class ContextOverflow(RequestError):
    """The prompt plus max_tokens do not fit the model's context."""


class NotFound(RequestError):
    """cancel named a request this client has not in flight."""


class NotAvailable(RequestError):
    """The feature is not available in this daemon."""


class Loading(RequestError):
    """The model is still loading."""


class ShuttingDown(RequestError):
    """The daemon is stopping and admits no new work."""


class Forbidden(RequestError):
    """A control request (shutdown, governor_set, clear_quarantine, cancel by job) from a connection that may not
    control the daemon: on tcp, a CURVE key without the admin role."""


class UnsupportedVersion(RequestError):
    """The daemon speaks none of this client's protocol versions."""


ERROR_CLASSES: dict[str, type[RequestError]] = {
    "busy": Busy, "invalid_params": InvalidParams, "context_overflow": ContextOverflow, "not_found": NotFound,
    "not_available": NotAvailable, "loading": Loading, "shutting_down": ShuttingDown,
    "unsupported_version": UnsupportedVersion, "forbidden": Forbidden,
}


def error_class(code: str) -> type[RequestError]:
    """The exception class raised for an error final with this code."""
    return ERROR_CLASSES.get(code, RequestError)


def from_wire(error: dict[str, Any], request_id: str | None = None) -> RequestError:
    """Build the exception for an error final's `error` map ({code, message, ...extra})."""
    code, message = str(error.get("code")), str(error.get("message"))
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    return error_class(code)(code, message, request_id, details)
