"""Operator routes: status, profiles and switches, jobs, unloading models."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.daemon import switch
from msting.daemon.requests import ApiError
from msting.api import limits
from msting.http.body import read_json_object
from msting.http.errors import Fields

SWITCH_KEYS = frozenset({"profile", "dry_run"})
UNLOAD_KEYS = frozenset({"model"})


async def status(request: Request) -> Response:
    return JSONResponse(request.app.state.service.status())


async def profiles(request: Request) -> Response:
    """Each profile with its models, estimated memory and capabilities; the active one marked."""
    from msting.config.profiles import describe_profiles

    service = request.app.state.service
    listed = await asyncio.to_thread(describe_profiles, service.paths, service.config)
    for entry in listed:
        entry["active"] = entry["name"] == service.routing.profile
    return JSONResponse({"object": "list", "active": service.routing.profile, "data": listed})


async def switch_profile(request: Request) -> Response:
    service = request.app.state.service
    fields = Fields(await read_json_object(request), SWITCH_KEYS)
    name = fields.string("profile", required=True, max_chars=limits.MAX_NAME_CHARS)
    if fields.boolean("dry_run", False):
        return JSONResponse(await switch.dry_run(service, name))
    return JSONResponse(switch.start_switch(service, name), status_code=202)


async def jobs(request: Request) -> Response:
    service = request.app.state.service
    return JSONResponse({"object": "list", "data": service.store.recent_jobs(20)})


async def job(request: Request) -> Response:
    found = request.app.state.service.jobs.get(request.path_params["job_id"])
    if found is None:
        raise ApiError(404, "not_found_error", "job_not_found", f"no job {request.path_params['job_id']}")
    return JSONResponse(found)


async def unload_model(request: Request) -> Response:
    service = request.app.state.service
    fields = Fields(await read_json_object(request), UNLOAD_KEYS)
    return JSONResponse(await service.unload(fields.string("model", required=True, max_chars=limits.MAX_NAME_CHARS)))


routes = [
    Route("/v1/status", status, methods=["GET"]),
    Route("/v1/profiles", profiles, methods=["GET"]),
    Route("/v1/profiles/switch", switch_profile, methods=["POST"]),
    Route("/v1/jobs", jobs, methods=["GET"]),
    Route("/v1/jobs/{job_id}", job, methods=["GET"]),
    Route("/models/unload", unload_model, methods=["POST"]),
]
