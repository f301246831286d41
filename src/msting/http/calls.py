"""Calling the router from a route: a client that disconnects before its answer is
ready cancels the call, so the model is free again within a token or two."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(request: Request) -> None:
    # Once the body has been read, the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(request: Request, call: Awaitable[T]) -> T:
    """The result of `call`, or ClientGone (and `call` cancelled) if the client left first."""
    task = asyncio.ensure_future(call)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # the call's own cleanup cancels the request
            await asyncio.wait({task})
    if task.cancelled():
        raise ClientGone
    return task.result()
