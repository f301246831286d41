"""The native routes: /health, /health/ready, /models/load, /generate, /llm."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.daemon.requests import ApiError, GenerationRequest
from msting.daemon.service import Service
from msting.api import limits
from msting.http.body import read_json_object
from msting.http.errors import Fields, internal_error
from msting.http.sse import EventStream

GENERATE_KEYS = {"prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "model", "stream"}
LLM_KEYS = {"prompt", "max_tokens", "temperature"}
LOAD_KEYS = frozenset({"model", "timeout"})


def _service(request: Request) -> Service:
    return request.app.state.service


async def health(request: Request) -> Response:
    return JSONResponse(_service(request).health())


async def health_ready(request: Request) -> Response:
    service = _service(request)
    status, reason = service.readiness()
    body = {"status": status, "reason": reason, "models": {n: rt.state for n, rt in service.models.items()}}
    return JSONResponse(body, status_code=200 if status == "ready" else 503, headers=None if status == "ready" else {"Retry-After": "1"})


async def load_model(request: Request) -> Response:
    service = _service(request)
    body = await read_json_object(request)
    fields = Fields(body, LOAD_KEYS)
    name = fields.string("model", default="default", max_chars=limits.MAX_NAME_CHARS)
    timeout = fields.number("timeout", service.config.llm_service.startup_timeout_sec, limits.LOAD_TIMEOUT_SEC)
    return JSONResponse(await service.load(name, timeout))


def sampling_params(fields: Fields, max_tokens_key: str = "max_tokens") -> dict:
    """The sampling parameters every generation route shares, range-checked
    (msting.api.limits). `max_tokens` and `temperature` left out are filled from the
    model's own defaults when it is queued; a seed of -1 means a random one, as null."""
    seed = fields.integer("seed", None, limits.SEED)
    return {
        "max_tokens": fields.integer(max_tokens_key, None, limits.MAX_TOKENS),
        "temperature": fields.number("temperature", None, limits.TEMPERATURE),
        "top_p": fields.number("top_p", 0.95, limits.TOP_P),
        "stop": fields.string_list("stop", max_items=limits.MAX_STOP_SEQUENCES),
        "seed": None if seed == limits.RANDOM_SEED else seed,
    }


def model_name(fields: Fields) -> str | None:
    return fields.string("model", max_chars=limits.MAX_NAME_CHARS)


def parse_generation(service: Service, body: dict, allowed: set[str]) -> GenerationRequest:
    fields = Fields(body, allowed)
    params = {"prompt": fields.string("prompt", required=True), **sampling_params(fields)}
    return GenerationRequest(model_name(fields), params, stream=fields.boolean("stream", False))


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(request: Request) -> None:
    # Once the body has been read, the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_to_completion(service: Service, req: GenerationRequest, request: Request | None = None, *, submitted: bool = False) -> dict:
    """Queue a request (unless `submitted`) and wait for its whole answer; raises the
    ApiError it failed with.

    With `request`, a client that disconnects cancels the generation at once, so the
    worker is free again within a token or two."""
    if not submitted:
        service.submit(req)
    try:
        answer = asyncio.ensure_future(req.events.get())
        watchers = {answer}
        if request is not None:
            watchers.add(asyncio.ensure_future(_disconnected(request)))
        done, pending = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if answer not in done:
            raise ClientGone
        kind, payload = answer.result()
    finally:
        if not req.finished:
            service.cancel(req)
    if kind == "error":
        raise payload
    return _with_queue_time(req, payload)


def _with_queue_time(req: GenerationRequest, payload: dict) -> dict:
    timings = dict(payload.get("timings") or {})
    if req.started_at is not None:
        timings["queue_ms"] = round((req.started_at - req.enqueued_at) * 1000.0, 3)
    return {**payload, "timings": timings}


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def iter_events(service: Service, req: GenerationRequest) -> AsyncIterator[tuple[str, object]]:
    """A request's events for a streaming response: ("token", text), then ("done", payload)
    or ("error", ApiError). Tokens that piled up while the client read slowly come out as
    one piece, so a slow reader costs one frame per read, not one per token. Leaving the
    loop early (the client disconnected) cancels the generation."""
    pending: tuple | None = None
    try:
        while True:
            kind, payload = pending or await req.events.get()
            pending = None
            if kind != "token":
                yield kind, payload
                return
            pieces = [payload]
            while not req.events.empty():
                nxt = req.events.get_nowait()
                if nxt[0] != "token":
                    pending = nxt
                    break
                pieces.append(nxt[1])
            yield "token", "".join(pieces)
    finally:
        if not req.finished:
            service.cancel(req)  # the client disconnected: free the worker


async def stream_events(service: Service, req: GenerationRequest) -> AsyncIterator[str]:
    """The native SSE format: `event: token|done|error` with a JSON `data:` line."""
    async for kind, payload in iter_events(service, req):
        if kind == "token":
            yield _sse("token", {"text": payload})
        elif kind == "done":
            yield _sse("done", {"model": req.model, **_with_queue_time(req, {k: v for k, v in payload.items() if k != "text"})})
        else:
            yield _sse("error", payload.body())


async def generate(request: Request) -> Response:
    service = _service(request)
    req = parse_generation(service, await read_json_object(request), GENERATE_KEYS)
    if req.stream:
        service.submit(req)  # errors (unknown model, full queue) surface before the 200
        return EventStream(stream_events(service, req))
    try:
        result = await run_to_completion(service, req, request)
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse({"text": result.get("text", ""), "model": req.model, "finish_reason": result.get("finish_reason"),
                         "usage": result.get("usage", {}), "timings": result.get("timings", {})})


async def llm(request: Request) -> Response:
    service = _service(request)
    try:
        req = parse_generation(service, await read_json_object(request), LLM_KEYS)
        result = await run_to_completion(service, req)
    except ClientDisconnect:
        raise
    except ApiError as exc:
        if exc.status == 500 and "stderr" not in exc.extra:
            exc.extra["stderr"] = ""
        raise
    except Exception as exc:  # this route's 500s always carry "stderr"
        err = internal_error(exc, "POST /llm")
        err.extra["stderr"] = ""
        raise err from None
    return JSONResponse({"completion": result.get("text", "")})


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/models/load", load_model, methods=["POST"]),
    Route("/generate", generate, methods=["POST"]),
    Route("/llm", llm, methods=["POST"]),
]
