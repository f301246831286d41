"""Requests in flight inside the daemon, their queue, and the errors the API reports.

A request's lifecycle is owned by the scheduler: queued → taken by one worker →
finished (done or error). If its worker dies before the request has streamed anything,
it goes back to the *front* of its model's queue and another attempt serves it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


class ApiError(Exception):
    """An error with the HTTP status, type and code that the API reports."""

    def __init__(self, status: int, type_: str, code: str, message: str, *, headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code, **self.extra}}


def bad_request(message: str, code: str = "invalid_body", status: int = 400) -> ApiError:
    return ApiError(status, "invalid_request_error", code, message)


def unknown_model(name: str, known: list[str], why: str | None = None) -> ApiError:
    message = why or f"model '{name}' is not known"
    return ApiError(404, "not_found_error", "model_not_found", f"{message}; known models: {', '.join(known) or 'none'}")


def unavailable(code: str, message: str, retry_after: int | None = None) -> ApiError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return ApiError(503, "unavailable_error", code, message, headers=headers)


def server_error(code: str, message: str, **extra: Any) -> ApiError:
    return ApiError(500, "server_error", code, message, extra=extra)


@dataclass
class GenerationRequest:
    model: str | None
    params: dict  # generate: prompt or messages, max_tokens, temperature, ...; embed: input
    stream: bool = False
    kind: str = "generate"  # "generate" | "embed"
    id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex[:16]}")
    enqueued_at: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    attempts: int = 0  # workers that died while holding this request
    streamed: bool = False  # a token reached the client side: it can no longer be retried
    cancelled: bool = False
    finished: bool = False
    started_at: float | None = None
    internal: bool = False  # the daemon's own verification generate, not a client's
    runtime: Any = None  # the ModelRuntime serving it, set by Service.submit

    def emit_token(self, text: str) -> None:
        self.streamed = True
        self.events.put_nowait(("token", text))

    def finish(self, payload: dict) -> None:
        if not self.finished:
            self.finished = True
            self.events.put_nowait(("done", payload))

    def fail(self, error: ApiError) -> None:
        if not self.finished:
            self.finished = True
            self.events.put_nowait(("error", error))


class QueueFull(Exception):
    pass


class ModelQueue:
    """A bounded FIFO of requests for one model, shared by that model's workers.

    A request that arrives while a worker waits in `take()` is handed to that worker
    at once: `put()` calls the worker's `begin` callback synchronously, which sends the
    request to the worker process before the HTTP handler even writes its response
    headers, so the model starts on it while the daemon finishes the HTTP side.

    `take()` is cancel-safe: a waiter whose task was cancelled is skipped, and a
    request is only handed to a waiter whose `begin` took charge of it, so a worker
    that is cancelled while waiting never loses a request. `begin` returns False when
    it could not send the request (it has then answered the request with an error):
    the worker goes on waiting for the next one.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: deque[GenerationRequest] = deque()
        self._waiters: deque[tuple[asyncio.Future, Callable[[GenerationRequest], bool]]] = deque()
        self._arrived = asyncio.Event()  # set while requests wait here (see wait_nonempty)

    def __len__(self) -> int:
        return sum(1 for r in self._items if not r.cancelled)

    def put(self, req: GenerationRequest) -> None:
        if len(self) >= self.maxsize:
            raise QueueFull
        if not self._hand_off(req):
            self._items.append(req)
            self._arrived.set()

    def put_front(self, req: GenerationRequest) -> None:
        """Re-queue a request whose worker died; it is not subject to the bound."""
        if not self._hand_off(req):
            self._items.appendleft(req)
            self._arrived.set()

    def _hand_off(self, req: GenerationRequest) -> bool:
        """Give `req` to a waiting worker; True when it is taken care of (sent, or
        answered with the error that kept it from being sent)."""
        while self._waiters:
            fut, begin = self._waiters[0]
            if fut.done():  # its worker stopped waiting (cancelled)
                self._waiters.popleft()
                continue
            if not begin(req):
                return True  # refused and answered; the worker keeps waiting
            self._waiters.popleft()
            fut.set_result(req)
            return True
        return False

    async def take(self, begin: Callable[[GenerationRequest], bool]) -> GenerationRequest:
        """The next live request, after `begin(req)` has taken charge of it."""
        while self._items:
            req = self._items.popleft()
            if not req.cancelled and not req.finished and begin(req):
                return req
        self._arrived.clear()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, begin))
        return await fut

    async def wait_nonempty(self) -> None:
        """Return once a request waits in the queue (at once if one does)."""
        while not len(self):
            self._arrived.clear()
            await self._arrived.wait()

    def drain_all(self) -> list[GenerationRequest]:
        items = [r for r in self._items if not r.cancelled and not r.finished]
        self._items.clear()
        self._arrived.clear()
        return items
