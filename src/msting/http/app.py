"""Assemble the Starlette app that the daemon serves on its socket and its TCP port."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from msting.api.errors import MstingError
from msting.http import admin, debug, jobs, metrics, native, openai_api, openapi, services, usage, ws
from msting.http.control import Control
from msting.http.errors import ErrorGuard, api_error_handler, http_exception_handler
from msting.http.security import SecurityMiddleware, SecurityPolicy
from msting.providers.router import Router


def build_app(router: Router, control: Control, *, security: SecurityPolicy) -> Starlette:
    """`router` serves every generation route, `control` the operator routes.
    `security`: the TCP policy; the daemon builds it once at start (the API key is read
    once).

    ErrorGuard comes first, so that nothing raised below it (the security check
    included) reaches Starlette's ServerErrorMiddleware, whose 500 drops the keep-alive
    connection. No handler is registered for Exception: the guard is that handler."""
    app = Starlette(
        middleware=[Middleware(ErrorGuard), Middleware(SecurityMiddleware, policy=security)],
        routes=[
            *native.routes,
            *openai_api.routes,
            *admin.routes,
            *jobs.routes,
            *services.routes,
            *usage.routes,
            *ws.routes,
            *openapi.routes,
            *metrics.routes,
            *debug.routes,
        ],
        exception_handlers={
            MstingError: api_error_handler,
            HTTPException: http_exception_handler,
        },
    )
    app.state.router = router
    app.state.control = control
    app.state.websockets = ws.Sessions()  # the open /v1/ws connections, closed at the daemon's stop
    return app
