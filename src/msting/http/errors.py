"""Errors out: the one mapping from msting.api.errors to HTTP statuses and bodies, typed
field access with its 400s, and the guard that turns anything unexpected into a 500
with an error id.

Bodies come in through :mod:`msting.http.body` (the strict JSON parser); the limits
are in :mod:`msting.api.limits`.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from msting.api.durations import parse_duration
from msting.api.errors import (Conflict, InvalidRequest, MstingError, NotAllowed, NotFound, RateLimited, ServerError, Timeout, TooLarge,
                               Unavailable, UpstreamError)

log = logging.getLogger("msting.http")

# Each error class's HTTP status and OpenAI-style error type; a subclass not listed
# takes its nearest listed base's.
STATUS: dict[type[MstingError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    TooLarge: (413, "invalid_request_error"),
    NotFound: (404, "not_found_error"),
    NotAllowed: (405, "invalid_request_error"),
    Conflict: (409, "invalid_request_error"),
    RateLimited: (429, "rate_limit_error"),
    Unavailable: (503, "unavailable_error"),
    Timeout: (504, "timeout_error"),
    UpstreamError: (502, "upstream_error"),
    ServerError: (500, "server_error"),
    MstingError: (500, "server_error"),
}


class HttpStatusError(MstingError):
    """An HTTP-level failure Starlette reported with a status of its own."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(code, message)
        self.status = status


def status_of(error: MstingError) -> tuple[int, str]:
    if isinstance(error, HttpStatusError):
        return error.status, "invalid_request_error"
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return STATUS[MstingError]


def error_body(error: MstingError) -> dict:
    """The OpenAI-shaped error body: message, type, param, code, and the error's details."""
    _, kind = status_of(error)
    return {"error": {"message": error.message, "type": kind, "param": None, "code": error.code, **error.details}}


def error_response(error: MstingError) -> JSONResponse:
    status, _ = status_of(error)
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return JSONResponse(error_body(error), status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MstingError)
    return error_response(exc)


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    err: MstingError
    if exc.status_code == 404:
        err = NotFound("route_not_found", f"no route {request.method} {cut(request.url.path)}")
    elif exc.status_code == 405:
        err = NotAllowed("method_not_allowed", f"{request.method} is not allowed on {cut(request.url.path)}")
    else:
        err = HttpStatusError(exc.status_code, "http_error", str(exc.detail))
    return error_response(err)


# ---- unexpected errors -------------------------------------------------------------


def internal_error(exc: BaseException, where: str) -> ServerError:
    """Log `exc` with its traceback under a new error id, and the 500 that names the id
    (never the exception's own text: it is for the operator, in the daemon log)."""
    error_id = f"err-{uuid.uuid4().hex[:12]}"
    log.error("internal error %s on %s: %s: %s", error_id, where, exc.__class__.__name__, exc, exc_info=exc)
    return ServerError("internal_error", f"internal error; see the daemon log, error id {error_id}", error_id=error_id)


class ErrorGuard:
    """Pure ASGI middleware, just inside Starlette's ServerErrorMiddleware: nothing
    raised below it goes further up.

    An exception before the response started is logged (with an error id) and answered
    with the 500 JSON, and the connection stays open for the client's next request
    (Starlette's own handler re-raises after its 500, and uvicorn then drops the
    keep-alive connection). After the response started there is nothing to answer
    with: the error is logged and the response is left unfinished, so uvicorn closes
    the connection and the client sees a broken reply, never a complete-looking one.
    A client that disconnected while its body was read gets nothing.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            return await self.app(scope, receive, send)
        started = False

        async def guarded_send(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except ClientDisconnect:
            return
        except Exception as exc:
            where = f"{scope.get('method', 'WEBSOCKET')} {scope.get('path')}"
            err = internal_error(exc, where)
            try:
                if kind == "websocket":
                    await send({"type": "websocket.close", "code": 1011})  # before or after accept
                elif not started:
                    body = json.dumps(error_body(err)).encode()
                    await send({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
            except Exception:  # the connection is gone or already closed
                pass


# ---- showing client values in messages -----------------------------------------------


def cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def shown(value: object, limit: int = 80) -> str:
    """A client value for an error message: JSON, cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return cut(text, limit)


# ---- fields ------------------------------------------------------------------------


class Fields:
    """Typed access to a JSON body (already strictly parsed) that reports every problem
    as a 400 with the key in `param`, and rejects unknown keys."""

    def __init__(self, body: dict, allowed: set[str] | frozenset[str]):
        self.body = body
        unknown = [k for k in body if k not in allowed]
        if unknown:
            listed = ", ".join(cut(k, 40) for k in sorted(unknown)[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise self.error(unknown[0] if len(unknown[0]) <= 100 else None,
                             f"unsupported parameter(s): {listed}; supported: {', '.join(sorted(allowed))}")

    def error(self, key: str | None, message: str) -> InvalidRequest:
        return InvalidRequest("invalid_parameter", message, param=key)

    def _problem(self, key: str, want: str) -> InvalidRequest:
        return self.error(key, f"'{key}' must be {want}, got {shown(self.body[key])}")

    def string(self, key: str, *, required: bool = False, default: str | None = None, max_chars: int | None = None) -> str | None:
        if key not in self.body or self.body[key] is None:
            if required:
                raise self.error(key, f"'{key}' is required")
            return default
        value = self.body[key]
        if not isinstance(value, str):
            raise self._problem(key, "a string")
        if max_chars is not None and len(value) > max_chars:
            raise self.error(key, f"'{key}' must be at most {max_chars} characters, got {len(value)}")
        return value

    def integer(self, key: str, default: int | None, limits: tuple[int, int]) -> int | None:
        value = self.body.get(key)
        if value is None:
            return default
        lo, hi = limits
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._problem(key, f"an integer from {lo} to {hi}")
        if not lo <= value <= hi:
            raise self._problem(key, f"an integer from {lo} to {hi}")
        return value

    def number(self, key: str, default: float | None, limits: tuple[float, float]) -> float | None:
        value = self.body.get(key)
        if value is None:
            return default
        lo, hi = limits
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._problem(key, f"a number from {lo:g} to {hi:g}")
        if isinstance(value, float) and not math.isfinite(value) or not lo <= value <= hi:
            raise self._problem(key, f"a number from {lo:g} to {hi:g}")
        return float(value)

    def duration(self, key: str, *, max_sec: float, max_chars: int) -> float | None:
        """Seconds, from a number or a duration string (msting.api.durations: "5m", "1h30m");
        any negative value is math.inf (kept for ever, as Ollama's keep_alive); None when left out."""
        value = self.body.get(key)
        if value is None:
            return None
        want = f"a number of seconds or a duration such as \"5m\" or \"1h30m\" (at most {max_sec:g} s; negative: for ever)"
        if isinstance(value, str) and len(value) <= max_chars:
            try:
                value = parse_duration(value)
            except ValueError:
                raise self._problem(key, want) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, float) and not math.isfinite(value):
            raise self._problem(key, want)
        if value < 0:
            return math.inf
        if value > max_sec:
            raise self._problem(key, want)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.body.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._problem(key, "true or false")
        return value

    def string_list(self, key: str, max_items: int | None = None) -> list[str]:
        value = self.body.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._problem(key, "a string or a list of strings")
        if max_items is not None and len(value) > max_items:
            raise self.error(key, f"'{key}' may hold at most {max_items} strings, got {len(value)}")
        return value
