"""Assemble the Starlette app that the daemon serves on its socket and its TCP port."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from msting.daemon.requests import ApiError
from msting.daemon.service import Service
from msting.http import admin, native, openai_api, openapi, ws
from msting.http.errors import ErrorGuard, api_error_handler, http_exception_handler
from msting.http.security import SecurityMiddleware, SecurityPolicy


def build_app(service: Service, *, security: SecurityPolicy | None = None) -> Starlette:
    """`security`: the TCP policy; the daemon passes the one it built at start (the API
    key is read once). Without it, it is built from `service.config` and the environment.

    ErrorGuard comes first, so that nothing raised below it (the security check
    included) reaches Starlette's ServerErrorMiddleware, whose 500 drops the keep-alive
    connection. No handler is registered for Exception: the guard is that handler."""
    if security is None:
        security = SecurityPolicy.from_config(service.config)
    app = Starlette(
        middleware=[Middleware(ErrorGuard), Middleware(SecurityMiddleware, policy=security)],
        routes=[
            *native.routes,
            *openai_api.routes,
            *admin.routes,
            *ws.routes,
            *openapi.routes,
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_exception_handler,
        },
    )
    app.state.service = service
    return app
