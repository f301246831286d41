"""Calling the router from a route: a client that disconnects before its answer is
ready cancels the call, so the model is free again within a token or two."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence, TypeVar

from starlette.requests import Request

from msting.api.events import Attempt

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(request: Request) -> None:
    # Once the body has been read, the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(request: Request, call: Awaitable[T]) -> T:
    """The result of `call`, or ClientGone (and `call` cancelled) if the client left first.

    `call` runs in the route's own task; one watcher task cancels that task when the
    client goes (one task per request, not two and an asyncio.wait)."""
    current = asyncio.current_task()
    assert current is not None
    state = {"gone": False}

    async def watch() -> None:
        await _disconnected(request)
        state["gone"] = True
        current.cancel()  # the call's own cleanup cancels the request

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await call
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        uncancel = getattr(current, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


def route_headers(result: object) -> dict[str, str]:
    """Who answered `result` (a Done, Embeddings or stream): the service
    (X-Msting-Provider), the upstream URL of a remote one (X-Msting-Upstream), and how
    many attempts it took across services (X-Msting-Attempts); what the request
    policies did: the route that picked the model (X-Msting-Route, and X-Msting-Route-By:
    rule or router-model) and the response cache (X-Msting-Cache: hit or miss)."""
    headers: dict[str, str] = {}
    attempts: Sequence[Attempt] = getattr(result, "attempts", ())
    if attempts:
        last = attempts[-1]
        headers = {"X-Msting-Provider": last.service, "X-Msting-Attempts": str(len(attempts))}
        if last.url:
            headers["X-Msting-Upstream"] = last.url
    for name, attr in (("X-Msting-Route", "route"), ("X-Msting-Route-By", "route_by"), ("X-Msting-Cache", "cache")):
        value = getattr(result, attr, None)
        if value:
            headers[name] = value
    return headers


def stream_headers(stream: object) -> Callable[[], list[tuple[bytes, bytes]]]:
    """`route_headers` of a stream, read once its first event is there."""
    def headers() -> list[tuple[bytes, bytes]]:
        found = route_headers(stream)
        return [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in found.items()]
    return headers
