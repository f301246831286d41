"""JSON bodies in, JSON errors out: the one place requests are parsed and errors rendered."""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from msting.daemon.requests import ApiError, bad_request

log = logging.getLogger("msting.http")


async def read_json_object(request: Request) -> dict:
    """Read the body as JSON whatever the Content-Type says (`curl -d` sends a form type)."""
    raw = await request.body()
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", "invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", "invalid_body")
    return body


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = ApiError(404, "not_found_error", "route_not_found", f"no route {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = ApiError(405, "invalid_request_error", "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
    else:
        err = ApiError(exc.status_code, "invalid_request_error", "http_error", str(exc.detail))
    return error_response(err)


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "server_error", "internal_error", f"internal error: {exc}"))


class Fields:
    """Typed access to a JSON body that reports every problem with its key, and unknown keys."""

    def __init__(self, body: dict, allowed: set[str], status: int = 422):
        """`status`: 422 on the native routes; the OpenAI routes answer 400, as OpenAI does."""
        self.body = body
        self.status = status
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise self.error(unknown[0], f"unsupported parameter(s): {', '.join(unknown)}; supported: {', '.join(sorted(allowed))}")

    def error(self, key: str | None, message: str) -> ApiError:
        return ApiError(self.status, "invalid_request_error", "invalid_parameter", message, extra={"param": key})

    def _problem(self, key: str, want: str) -> ApiError:
        return self.error(key, f"'{key}' must be {want}, got {json.dumps(self.body[key])}")

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        if key not in self.body or self.body[key] is None:
            if required:
                raise self.error(key, f"'{key}' is required")
            return default
        value = self.body[key]
        if not isinstance(value, str):
            raise self._problem(key, "a string")
        return value

    def integer(self, key: str, default: int | None, *, minimum: int | None = None) -> int | None:
        value = self.body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._problem(key, "an integer")
        if minimum is not None and value < minimum:
            raise self._problem(key, f"an integer >= {minimum}")
        return value

    def number(self, key: str, default: float | None, *, minimum: float | None = None, maximum: float | None = None) -> float | None:
        value = self.body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._problem(key, "a number")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self._problem(key, f"a number between {minimum} and {maximum}" if maximum is not None else f"a number >= {minimum}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.body.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._problem(key, "true or false")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self.body.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._problem(key, "a string or a list of strings")
        return value
