"""Model management: jobs (installs, imports, updates, deletes, loads, unloads, and the
profile switches), their progress as server-sent events, the installed models, and a
search of the Hugging Face hub. Every job route is served at `/jobs…` and `/v1/jobs…`."""

from __future__ import annotations

import json
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.api.errors import InvalidRequest
from msting.http.body import read_json_object
from msting.http.errors import Fields
from msting.http.native import control_of
from msting.http.sse import EventStream

CREATE_KEYS = frozenset({"type", "params"})
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
MAX_QUERY_CHARS = 200
SEARCH_LIMIT = (1, 100)


async def create_job(request: Request) -> Response:
    fields = Fields(await read_json_object(request), CREATE_KEYS)
    type_ = fields.string("type", required=True, max_chars=40)
    params = fields.body.get("params")
    if params is None:
        params = {}
    job = control_of(request).create_job(type_, params)
    return JSONResponse(job, status_code=202)


async def list_jobs(request: Request) -> Response:
    state = request.query_params.get("state")
    if state is not None and state not in JOB_STATES:
        raise InvalidRequest("invalid_request", f"state: must be one of {', '.join(JOB_STATES)}, got {state!r}", param="state")
    jobs = control_of(request).jobs(type=request.query_params.get("type"), state=state)
    return JSONResponse({"object": "list", "data": jobs})


async def get_job(request: Request) -> Response:
    return JSONResponse(control_of(request).job(request.path_params["job_id"]))


async def cancel_job(request: Request) -> Response:
    return JSONResponse(control_of(request).cancel_job(request.path_params["job_id"]))


async def _events(request: Request, job_id: str) -> AsyncIterator[str]:
    async for body in control_of(request).job_events(job_id):
        yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


async def job_events(request: Request) -> Response:
    """`data: {job}` at once, then on every change; the stream ends after the terminal state."""
    return EventStream(_events(request, request.path_params["job_id"]))  # type: ignore[return-value]


async def installed_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": control_of(request).installed_models()})


async def registry_search(request: Request) -> Response:
    query = request.query_params.get("q", "").strip()
    if not query:
        raise InvalidRequest("invalid_request", "q: the search text is required", param="q")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequest("invalid_request", f"q: at most {MAX_QUERY_CHARS} characters", param="q")
    raw = request.query_params.get("limit", "20")
    lo, hi = SEARCH_LIMIT
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise InvalidRequest("invalid_request", f"limit: an integer from {lo} to {hi}, got {raw!r}", param="limit")
    found = await control_of(request).registry_search(query, int(raw))
    return JSONResponse({"object": "list", "data": found})


routes = [
    *(route for prefix in ("", "/v1") for route in (
        Route(f"{prefix}/jobs", create_job, methods=["POST"]),
        Route(f"{prefix}/jobs", list_jobs, methods=["GET"]),
        Route(f"{prefix}/jobs/{{job_id}}", get_job, methods=["GET"]),
        Route(f"{prefix}/jobs/{{job_id}}", cancel_job, methods=["DELETE"]),
        Route(f"{prefix}/jobs/{{job_id}}/events", job_events, methods=["GET"]),
    )),
    Route("/llm/installed", installed_models, methods=["GET"]),
    Route("/llm/registry/search", registry_search, methods=["GET"]),
]
