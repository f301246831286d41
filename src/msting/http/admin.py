"""Operator routes: the status view."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def status(request: Request) -> Response:
    return JSONResponse(request.app.state.service.status())


routes = [
    Route("/v1/status", status, methods=["GET"]),
]
