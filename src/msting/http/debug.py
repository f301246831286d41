"""The debug page: `GET /debug` (one HTML page, no external asset) and its live feed,
`GET /debug/feed` (server-sent events: `event: state`, the daemon's status, its services
and the tail of its log, and its clock (`now`, for how long a worker is in its state),
twice a second).

The page's HTML holds no data, so it is served without the API key (like /health; the
Host check still applies). Everything it shows comes from the feed and the operator
routes, which need the key over TCP: the page asks for it once, keeps it in the tab's
sessionStorage and sends it as an `Authorization` header on each fetch (the feed is read
with fetch, not EventSource, for that reason). The key never goes into a URL.

The response carries a Content-Security-Policy that allows only this page's own inline
script and style (by their sha256) and connections to its own origin; the page sets
every text it shows with textContent, so a model name or a log line cannot become markup.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from importlib.resources import files
from types import MappingProxyType
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msting.http.native import control_of, router_of
from msting.http.sse import EventStream

FEED_INTERVAL_SEC = 0.5
STOP_WAIT_SEC = 1.0  # once the stop began, how long the last state may wait for readiness to say so
LOG_LINES = 60

PAGE = files("msting.http").joinpath("debug_page.html").read_bytes()


def _hashes(tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), PAGE, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)


PAGE_HEADERS = MappingProxyType({
    "Content-Security-Policy": (f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
                                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
})


async def page(request: Request) -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=dict(PAGE_HEADERS))


def snapshot(request: Request) -> dict:
    control = control_of(request)
    return {"now": time.time(), "status": control.status(), "services": router_of(request).services(),
            "log": control.log_tail(LOG_LINES)}


async def _states(request: Request) -> AsyncIterator[str]:
    """A state now, then one each FEED_INTERVAL_SEC until the daemon begins to stop: the
    last one, once readiness says `stopping` (within STOP_WAIT_SEC), ends the stream at
    once, so that an open page never holds the HTTP server's shutdown (the page connects
    again)."""
    control = control_of(request)
    stopping = False
    while True:
        if stopping:
            deadline = time.monotonic() + STOP_WAIT_SEC
            while control.readiness()[0] != "stopping" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the shutdown's first step closes admission
        yield f"event: state\ndata: {json.dumps(snapshot(request), separators=(',', ':'), default=str)}\n\n"
        if stopping:
            return
        stopping = await control.wait_stopping(FEED_INTERVAL_SEC)


async def feed(request: Request) -> Response:
    return EventStream(_states(request))  # type: ignore[return-value]


routes = [
    Route("/debug", page, methods=["GET"]),
    Route("/debug/feed", feed, methods=["GET"]),
]
