"""`GET /metrics`: the daemon's metrics in the Prometheus text format.

The text comes from the daemon (Control.metrics: msting.daemon.metrics); this route
only serves it. Over TCP it needs the API key like every route, unless
`llm_service.metrics_public` opens it to a scraper (msting.http.security).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msting.http.native import control_of


async def metrics(request: Request) -> Response:
    body, content_type = control_of(request).metrics()
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})


routes = [Route("/metrics", metrics, methods=["GET"])]
