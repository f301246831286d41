"""Operator routes: status, profiles and switches, unloading and restarting
models, the readiness checks now, restarting the daemon."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.api import limits
from msting.http.body import read_json_object
from msting.http.errors import Fields
from msting.http.native import control_of, router_of

SWITCH_KEYS = frozenset({"profile", "dry_run"})
UNLOAD_KEYS = frozenset({"model"})
RESTART_KEYS = UNLOAD_KEYS  # the model, by name
NO_KEYS: frozenset[str] = frozenset()


async def status(request: Request) -> Response:
    body = control_of(request).status()
    body["services"] = router_of(request).services()
    return JSONResponse(body)


async def profiles(request: Request) -> Response:
    """Each profile with its models, estimated memory and capabilities; the active one marked."""
    return JSONResponse(await control_of(request).profiles())


async def switch_profile(request: Request) -> Response:
    fields = Fields(await read_json_object(request), SWITCH_KEYS)
    name = fields.string("profile", required=True, max_chars=limits.MAX_NAME_CHARS)
    assert name is not None
    dry_run = fields.boolean("dry_run", False)
    result = await control_of(request).switch(name, dry_run=dry_run)
    return JSONResponse(result, status_code=200 if dry_run else 202)


async def unload_model(request: Request) -> Response:
    fields = Fields(await read_json_object(request), UNLOAD_KEYS)
    name = fields.string("model", required=True, max_chars=limits.MAX_NAME_CHARS)
    assert name is not None
    return JSONResponse(await control_of(request).unload(name))


async def restart_model(request: Request) -> Response:
    """Stop the model's workers (each finishes its request first) and start them again."""
    fields = Fields(await read_json_object(request), RESTART_KEYS)
    name = fields.string("model", required=True, max_chars=limits.MAX_NAME_CHARS)
    return JSONResponse(await control_of(request).restart_model(name))


async def run_checks(request: Request) -> Response:
    """The readiness checks of `msting llm health`, now: 200 when all pass, else 503."""
    Fields(await read_json_object(request), NO_KEYS)
    result = await control_of(request).run_checks()
    return JSONResponse(result, status_code=200 if result["ok"] else 503)


async def restart_daemon(request: Request) -> Response:
    """The daemon drains and starts again in the same process; 202 at once."""
    Fields(await read_json_object(request), NO_KEYS)
    return JSONResponse(control_of(request).restart_daemon(), status_code=202)


routes = [
    Route("/v1/status", status, methods=["GET"]),
    Route("/v1/profiles", profiles, methods=["GET"]),
    Route("/v1/profiles/switch", switch_profile, methods=["POST"]),
    Route("/models/unload", unload_model, methods=["POST"]),
    Route("/models/restart", restart_model, methods=["POST"]),
    Route("/v1/health/checks", run_checks, methods=["POST"]),
    Route("/v1/daemon/restart", restart_daemon, methods=["POST"]),
]
