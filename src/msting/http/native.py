"""The native routes: /health, /health/ready, /models/load, /generate, /llm."""

from __future__ import annotations

import json
from typing import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.api import limits
from msting.api.errors import MstingError
from msting.api.events import Done, Failed, Token
from msting.api.tools import ToolCallDelta
from msting.api.requests import CompletionRequest
from msting.http.body import read_json_object
from msting.http.calls import ClientGone, answer, route_headers, stream_headers
from msting.http.control import Control
from msting.http.errors import Fields, error_body, internal_error, status_of
from msting.http.parsing import model_name, request_meta, sampling
from msting.http.sse import EventStream
from msting.providers.base import Stream
from msting.providers.router import Router

GENERATE_KEYS = {"prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "model", "stream", "keep_alive"}
LLM_KEYS = {"prompt", "max_tokens", "temperature"}
LOAD_KEYS = frozenset({"model", "timeout"})


def router_of(request: Request) -> Router:
    return request.app.state.router


def control_of(request: Request) -> Control:
    return request.app.state.control


async def health(request: Request) -> Response:
    return JSONResponse(control_of(request).health())


async def health_ready(request: Request) -> Response:
    status, reason, models = control_of(request).readiness()
    body = {"status": status, "reason": reason, "models": models}
    return JSONResponse(body, status_code=200 if status == "ready" else 503, headers=None if status == "ready" else {"Retry-After": "1"})


async def load_model(request: Request) -> Response:
    control = control_of(request)
    fields = Fields(await read_json_object(request), LOAD_KEYS)
    name = fields.string("model", default="default", max_chars=limits.MAX_NAME_CHARS)
    timeout = fields.number("timeout", control.default_load_timeout, limits.LOAD_TIMEOUT_SEC)
    return JSONResponse(await control.load(name, timeout))


def completion(request: Request, fields: Fields) -> CompletionRequest:
    prompt = fields.string("prompt", required=True)
    assert prompt is not None
    params = sampling(fields)
    return CompletionRequest(prompt, model_name(fields), params, request_meta(request.scope, fields))


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def native_events(stream: Stream) -> AsyncIterator[str]:
    """The native SSE format: `event: token|tool_call|done|error` with a JSON `data:`
    line (a tool_call's is the piece of a call, as OpenAI's delta.tool_calls entry)."""
    async with stream:
        async for event in stream:
            if isinstance(event, Token):
                yield _sse("token", {"text": event.text})
            elif isinstance(event, ToolCallDelta):
                yield _sse("tool_call", event.as_openai())
            elif isinstance(event, Done):
                yield _sse("done", {"model": event.model, **event.summary()})
            elif isinstance(event, Failed):
                yield _sse("error", error_body(event.error))


async def generate(request: Request) -> Response:
    router = router_of(request)
    fields = Fields(await read_json_object(request), GENERATE_KEYS)
    req = completion(request, fields)
    if fields.boolean("stream", False):
        routed = router.stream(req)  # errors (unknown model, full queue) surface before the 200
        return EventStream(native_events(routed), stream_headers(routed))
    try:
        done = await answer(request, router.generate(req))
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse({"text": done.text, "model": done.model, "finish_reason": done.finish_reason,
                         "usage": done.usage.as_dict(), "timings": done.timings}, headers=route_headers(done))


async def llm(request: Request) -> Response:
    try:
        req = completion(request, Fields(await read_json_object(request), LLM_KEYS))
        done = await router_of(request).generate(req)
    except ClientDisconnect:
        raise
    except MstingError as exc:  # this route's 500s always carry "stderr"
        if status_of(exc)[0] == 500 and "stderr" not in exc.details:
            exc.details["stderr"] = ""
        raise
    except Exception as exc:
        err = internal_error(exc, "POST /llm")
        err.details["stderr"] = ""
        raise err from None
    return JSONResponse({"completion": done.text}, headers=route_headers(done))


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/models/load", load_model, methods=["POST"]),
    Route("/generate", generate, methods=["POST"]),
    Route("/llm", llm, methods=["POST"]),
]
