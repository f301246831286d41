"""Assemble the Starlette app that the daemon serves on its socket and its TCP port."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from msting.daemon.requests import ApiError
from msting.daemon.service import Service
from msting.http import admin, native
from msting.http.errors import api_error_handler, http_exception_handler, unhandled_error_handler


def build_app(service: Service) -> Starlette:
    app = Starlette(
        routes=[*native.routes, *admin.routes],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_exception_handler,
            Exception: unhandled_error_handler,
        },
    )
    app.state.service = service
    return app
