"""`EventStream`: a text/event-stream response in plain ASGI.

Nothing is sent, not even the status line, until the stream has produced its first
chunk: a stream that fails before that (every service down, say) is answered with an
ordinary error status and body, and the response headers can name the service that
did answer (`headers`, called once the first chunk is there).

Starlette's StreamingResponse watches for a client disconnect with an anyio task group
and two tasks per response; this does the same with one asyncio task, which matters on
the time-to-first-token path. The watcher cancels the streaming task when the client
goes away, at any point: while the request still waits in the queue (nothing was sent
yet but the headers) or mid-stream. The chunk iterator is always closed, so its own
cleanup (cancelling the generation, freeing the worker) runs in every case.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from msting.api.errors import MstingError
from msting.http.errors import error_body, status_of

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


Headers = list[tuple[bytes, bytes]]


class EventStream:
    def __init__(self, chunks: AsyncIterator[str], headers: Callable[[], Headers] | None = None) -> None:
        self.chunks = chunks
        self.headers = headers

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
            try:
                first = await self.chunks.__anext__()
            except StopAsyncIteration:
                first = ""
            except MstingError as exc:  # nothing sent yet: an ordinary error response
                state["finished"] = True
                await _send_error(send, exc)
                return
            extra = self.headers() if self.headers is not None else []
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + extra})
            if first:
                await send({"type": "http.response.body", "body": first.encode("utf-8"), "more_body": True})
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


async def _send_error(send: Any, error: MstingError) -> None:
    status, _ = status_of(error)
    body = json.dumps(error_body(error), separators=(",", ":")).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
