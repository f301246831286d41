"""Jobs in flight inside the daemon, and the bounded per-model queue they wait in.

A job is one typed request on its way through a local model. Its life is one enum
with one transition function:

    QUEUED → RUNNING → STREAMING → FINISHED
      ▲         │                    (answered: Done or Failed)
      └─────────┘  its worker died before anything streamed: back to the front of the
                   queue, and another worker serves it
    any state but FINISHED → CANCELLED   (the client went away)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Protocol

from msting.api.errors import MstingError
from msting.api.events import Done, Embeddings, Failed, Token
from msting.api.requests import EmbeddingRequest, Request
from msting.transitions import Transitions


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"  # a worker has it
    STREAMING = "streaming"  # a token reached the client side: it can no longer be retried
    FINISHED = "finished"
    CANCELLED = "cancelled"

    @property
    def over(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.CANCELLED)


_J = JobStatus
_JOB_MOVES = {
    _J.QUEUED: frozenset({_J.RUNNING, _J.FINISHED, _J.CANCELLED}),
    _J.RUNNING: frozenset({_J.QUEUED, _J.STREAMING, _J.FINISHED, _J.CANCELLED}),
    _J.STREAMING: frozenset({_J.FINISHED, _J.CANCELLED}),
    _J.FINISHED: frozenset(),
    _J.CANCELLED: frozenset(),
}


job_transition = Transitions("job", _JOB_MOVES)


class JobOwner(Protocol):
    """The model whose queue a job went to (msting.daemon.local.model.LocalModel)."""

    def cancel_job(self, job: LocalJob) -> None:
        """Stop generating for `job` in whichever worker has it."""
        ...


@dataclass(eq=False)
class LocalJob:
    """One request for one local model. `events` receives Token, then one Done,
    Embeddings or Failed."""

    request: Request
    model: str  # the resolved model name
    stream: bool = False
    internal: bool = False  # the daemon's own verification generate, not a client's
    id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex[:16]}")
    status: JobStatus = JobStatus.QUEUED
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    attempts: int = 0  # workers that died while holding this job
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    owner: JobOwner | None = None  # the model whose queue it went to (set on admission)

    @property
    def embed(self) -> bool:
        return isinstance(self.request, EmbeddingRequest)

    @property
    def over(self) -> bool:
        return self.status.over

    def _move(self, target: JobStatus) -> None:
        self.status = job_transition(self.status, target)

    def started(self, now: float) -> None:
        self._move(JobStatus.RUNNING)
        self.started_at = now

    def requeued(self) -> None:
        self._move(JobStatus.QUEUED)

    def emit_token(self, text: str) -> None:
        if self.status is JobStatus.RUNNING:
            self._move(JobStatus.STREAMING)
        if self.status is JobStatus.STREAMING:
            self.events.put_nowait(Token(text))

    def queue_ms(self) -> float | None:
        if self.started_at is None:
            return None
        return round((self.started_at - self.enqueued_at) * 1000.0, 3)

    def finish(self, result: Done | Embeddings) -> None:
        if not self.over:
            self._move(JobStatus.FINISHED)
            self.events.put_nowait(result)

    def fail(self, error: MstingError) -> None:
        if not self.over:
            self._move(JobStatus.FINISHED)
            self.events.put_nowait(Failed(error))

    def cancel(self) -> bool:
        """The client went away; True when the job was still live."""
        if self.over:
            return False
        self._move(JobStatus.CANCELLED)
        return True


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
        self._items: deque[LocalJob] = deque()
        self._waiters: deque[tuple[asyncio.Future, Callable[[LocalJob], bool]]] = deque()
        self._arrived = asyncio.Event()  # set while requests wait here (see wait_nonempty)

    def __len__(self) -> int:
        return sum(1 for r in self._items if not r.over)

    def put(self, req: LocalJob) -> None:
        if len(self) >= self.maxsize:
            raise QueueFull
        if not self._hand_off(req):
            self._items.append(req)
            self._arrived.set()

    def put_front(self, req: LocalJob) -> None:
        """Re-queue a job whose worker died (or the daemon's own probe); not subject to the bound."""
        if not self._hand_off(req):
            self._items.appendleft(req)
            self._arrived.set()

    def _hand_off(self, req: LocalJob) -> bool:
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

    async def take(self, begin: Callable[[LocalJob], bool]) -> LocalJob:
        """The next live request, after `begin(req)` has taken charge of it."""
        while self._items:
            req = self._items.popleft()
            if not req.over and begin(req):
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

    def drain_all(self) -> list[LocalJob]:
        items = [r for r in self._items if not r.over]
        self._items.clear()
        self._arrived.clear()
        return items
