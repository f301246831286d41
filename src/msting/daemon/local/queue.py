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
from typing import Callable, Collection, Protocol

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

    @property
    def suspect(self) -> bool:
        """It was in flight when a worker died: it may be what killed it, so it runs
        alone on a worker until it is answered (see WorkerSupervisor._offer)."""
        return self.attempts > 0

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


def fits(job: LocalJob, running: Collection[LocalJob], slots: int) -> bool:
    """Whether a worker with `slots` slots, running `running`, may begin `job` now: a
    slot is free, and neither `job` nor one running is a suspect (a suspect runs alone)."""
    if len(running) >= slots:
        return False
    return not running or not (job.suspect or any(r.suspect for r in running))


# What a worker's `offer` callback answers when the queue offers it a job: True, it took
# charge of the job (sent it to its process); False, it refused the job and answered it
# (the job cannot be put in a frame), and goes on waiting; None, not now (no free slot,
# or the job must run alone and the worker has others in flight).
Offer = Callable[[LocalJob], "bool | None"]


class ModelQueue:
    """A bounded FIFO of requests for one model, shared by that model's workers.

    A request that arrives while a worker waits in `take()` is handed to that worker
    at once: `put()` calls the worker's `offer` callback synchronously, which sends the
    request to the worker process before the HTTP handler even writes its response
    headers, so the model starts on it while the daemon finishes the HTTP side.

    A worker serves up to its number of slots at once; it waits in `take()` again as
    soon as it took a job, and its `offer` says None while it has no free slot. The
    queue is strictly first in, first out: a job at the head that no waiting worker
    can take now holds back those behind it, and `dispatch()` (a worker freed a slot)
    offers it again. The bound counts only the jobs waiting here, not those in slots.

    `take()` is cancel-safe: a waiter whose task was cancelled is skipped, and a
    request is only handed to a waiter whose `offer` took charge of it, so a worker
    that is cancelled while waiting never loses a request.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: deque[LocalJob] = deque()
        self._waiters: deque[tuple[asyncio.Future, Offer]] = deque()
        self._arrived = asyncio.Event()  # set while requests wait here (see wait_nonempty)

    def __len__(self) -> int:
        return sum(1 for r in self._items if not r.over)

    def put(self, req: LocalJob) -> None:
        if len(self) >= self.maxsize:
            raise QueueFull
        self._items.append(req)
        self.dispatch()

    def put_front(self, *reqs: LocalJob) -> None:
        """Re-queue jobs whose worker died (or the daemon's own probe) ahead of all
        others, in the order given; not subject to the bound."""
        self._items.extendleft(reversed(reqs))
        self.dispatch()

    def dispatch(self) -> None:
        """Hand the jobs at the head to waiting workers while one can take the head."""
        while self._items:
            head = self._items[0]
            if head.over:
                self._items.popleft()
                continue
            if not self._hand_off(head):
                break
            self._items.popleft()
        if len(self):
            self._arrived.set()
        else:
            self._arrived.clear()

    def _hand_off(self, req: LocalJob) -> bool:
        """Offer `req` to the waiting workers in the order they came; True when one
        took care of it (sent it, or answered it with the error that kept it from
        being sent)."""
        for entry in list(self._waiters):
            fut, offer = entry
            if fut.done():  # its worker stopped waiting (cancelled)
                self._waiters.remove(entry)
                continue
            taken = offer(req)
            if taken is None:
                continue  # this worker cannot take it now; maybe the next one can
            if taken:
                self._waiters.remove(entry)
                fut.set_result(req)
            return True  # refused and answered: the worker keeps waiting
        return False

    async def take(self, offer: Offer) -> LocalJob:
        """The next live request, after `offer(req)` has taken charge of it."""
        while self._items:
            req = self._items[0]
            if req.over:
                self._items.popleft()
                continue
            taken = offer(req)
            if taken is None:
                break  # the head waits for this worker (or another) to be able to take it
            self._items.popleft()
            if taken:
                return req
        if not len(self):
            self._arrived.clear()
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((fut, offer))
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
