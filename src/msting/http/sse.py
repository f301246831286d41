"""`EventStream`: a text/event-stream response in plain ASGI.

Starlette's StreamingResponse watches for a client disconnect with an anyio task group
and two tasks per response; this does the same with one asyncio task, which matters on
the time-to-first-token path. The watcher cancels the streaming task when the client
goes away, at any point: while the request still waits in the queue (nothing was sent
yet but the headers) or mid-stream. The chunk iterator is always closed, so its own
cleanup (cancelling the generation, freeing the worker) runs in every case.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class EventStream:
    def __init__(self, chunks: AsyncIterator[str]) -> None:
        self.chunks = chunks

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"finished": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["finished"]:
                state["gone"] = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True})
            state["finished"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        except OSError:  # the transport failed under a write: the client is gone
            pass
        finally:
            state["finished"] = True
            watcher.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
