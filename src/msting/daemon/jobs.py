"""Long operations as jobs: profile switches, and model installs, imports, updates,
deletes, loads and unloads. Each has a state (`JobState`, one transition function),
named steps, byte progress that only moves forward, an error or a result.

A job is saved to the store on every change of state or step (progress at most every
`SAVE_EVERY_SEC`), so `GET /jobs/{id}` answers from memory while the daemon runs and
from SQLite after a restart. Its id is made once and survives restarts. A job a killed
daemon left running is handed back to its runner when its work can resume (a
download: `Jobs(store, resumable=...)`), else marked failed with the reason.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import AsyncIterator, Callable, Iterable

from msting.daemon.store import Store
from msting.transitions import Transitions


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
job_transition = Transitions("job", {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: TERMINAL,
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
})

SAVE_EVERY_SEC = 0.5  # progress alone is written to SQLite at most this often
RATE_WINDOW_SEC = 3.0  # the rate is measured over about this long


@dataclass
class Step:
    name: str
    state: str = "pending"  # pending | running | done | failed | skipped
    detail: str | None = None
    started: float | None = None
    finished: float | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return round((self.finished - self.started) * 1000.0, 1)


@dataclass
class Progress:
    """Bytes done of bytes total (None: not known yet), the rate and the time left.
    `bytes_done` never decreases (`Jobs.advance`)."""

    bytes_done: int = 0
    bytes_total: int | None = None
    rate_bps: float | None = None
    eta_sec: float | None = None
    # (monotonic time, bytes_done) samples the rate is measured from; not shown
    samples: list[tuple[float, int]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total, "rate_bps": self.rate_bps, "eta_sec": self.eta_sec}


@dataclass
class Job:
    type: str
    target: str
    steps: list[Step]
    params: dict = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"job-{uuid.uuid4().hex[:12]}")
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict | None = None
    result: dict | None = None
    progress: Progress = field(default_factory=Progress)
    saved_at: float = 0.0  # monotonic time of the last save

    @property
    def kind(self) -> str:
        return self.type

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ValueError(f"job {self.id} has no step {name!r}; its steps: {', '.join(s.name for s in self.steps)}")

    @property
    def current_step(self) -> str | None:
        return next((s.name for s in self.steps if s.state == "running"), None)

    @property
    def fraction(self) -> float:
        """The share of steps done or skipped (a switch's progress)."""
        done = sum(1 for s in self.steps if s.state in ("done", "skipped"))
        return round(done / len(self.steps), 3) if self.steps else 1.0

    def to_dict(self) -> dict:
        progress = self.progress.to_dict()
        progress["fraction"] = self.fraction
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state.value,
            "params": self.params,
            "step": self.current_step,
            "steps": [{**asdict(s), "duration_ms": s.duration_ms} for s in self.steps],
            "progress": progress,
            "error": self.error,
            "result": self.result,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            # the names the profile-switch clients read
            "kind": self.type,
            "target": self.target,
            "created": self.created_at,
            "finished": self.finished_at,
            "duration_ms": round((self.finished_at - self.created_at) * 1000.0, 1) if self.finished_at else None,
        }

    @classmethod
    def from_dict(cls, body: dict) -> Job:
        """A job read back from the store (to resume it)."""
        p = body.get("progress") if isinstance(body.get("progress"), dict) else {}
        return cls(
            type=body.get("type") or body["kind"], target=body.get("target") or "", params=body.get("params") or {},
            steps=[Step(s["name"], s.get("state", "pending"), s.get("detail"), s.get("started"), s.get("finished"))
                   for s in body.get("steps", [])],
            id=body["id"], state=JobState(body["state"]), created_at=body.get("created_at") or body["created"],
            started_at=body.get("started_at"), finished_at=body.get("finished_at"), error=body.get("error"),
            result=body.get("result"),
            progress=Progress(int(p.get("bytes_done") or 0), p.get("bytes_total")),
        )


INTERRUPTED = "interrupted: the daemon stopped while this job ran"


def error_of(error: str | dict, code: str = "job_failed") -> dict:
    if isinstance(error, dict):
        return error
    return {"code": code, "message": error}


def _normalised(body: dict) -> dict:
    """A job saved by an older msting (kind, a string error, a fraction as progress) in
    today's shape."""
    if "type" in body:
        return body
    out = dict(body)
    out.update(type=body["kind"], params={"profile": body.get("target")}, created_at=body.get("created"),
               started_at=body.get("created"), finished_at=body.get("finished"),
               error=error_of(body["error"]) if body.get("error") else None,
               step=next((s["name"] for s in body.get("steps", []) if s.get("state") == "running"), None),
               progress={"bytes_done": 0, "bytes_total": None, "rate_bps": None, "eta_sec": None,
                         "fraction": body.get("progress")})
    return out


class Jobs:
    def __init__(self, store: Store, resumable: Iterable[str] = ()):
        """`resumable`: the job types whose work can go on after a restart; such jobs a
        previous daemon left queued or running are in `self.resumed` for their runner."""
        self.store = store
        self._live: dict[str, Job] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._cancel_hooks: dict[str, Callable[[], None]] = {}
        self.resumed: list[Job] = []
        self._interrupted(frozenset(resumable))

    def _interrupted(self, resumable: frozenset[str]) -> None:
        """Jobs a previous daemon left unfinished (it was killed mid-job): resumed when
        their type allows, else failed with the step they were in, so no job reads
        "running" forever."""
        for body in self.store.running_jobs():
            body = _normalised(body)
            if body["type"] in resumable:
                job = Job.from_dict(body)
                self._live[job.id] = job
                self.resumed.append(job)
                continue
            now = time.time()
            for step in body.get("steps", []):
                if step.get("state") == "running":
                    step.update(state="failed", finished=now, detail=step.get("detail") or INTERRUPTED)
                elif step.get("state") == "pending":
                    step["state"] = "skipped"
            body.update(state=JobState.FAILED.value, finished=now, finished_at=now, step=None,
                        error={"code": "interrupted", "message": INTERRUPTED},
                        duration_ms=round((now - body["created"]) * 1000.0, 1))
            self.store.save_job(body)

    # ---- making and moving jobs ------------------------------------------------------

    def create(self, kind: str, target: str, step_names: list[str], *, params: dict | None = None,
               start: bool = True) -> Job:
        """A new job, saved; running at once unless `start` is False (then queued)."""
        job = Job(kind, target, [Step(n) for n in step_names], params=params if params is not None else {"profile": target})
        self._live[job.id] = job
        if start:
            self._move(job, JobState.RUNNING)
        self.save(job)
        return job

    def start(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            self._move(job, JobState.RUNNING)
            self.save(job)

    def _move(self, job: Job, target: JobState) -> None:
        job.state = job_transition(job.state, target)
        now = time.time()
        if target is JobState.RUNNING:
            job.started_at = now
        elif target.terminal:
            job.finished_at = now
            self._cancel_hooks.pop(job.id, None)

    def begin(self, job: Job, name: str, detail: str | None = None) -> None:
        step = job.step(name)
        step.state, step.started, step.detail = "running", time.time(), detail
        self.save(job)

    def end(self, job: Job, name: str, detail: str | None = None, state: str = "done") -> None:
        step = job.step(name)
        if step.started is None:
            step.started = time.time()
        step.state, step.finished = state, time.time()
        if detail is not None:
            step.detail = detail
        self.save(job)

    def advance(self, job: Job, bytes_done: int, bytes_total: int | None = None) -> None:
        """Byte progress: only forward. The rate is measured over the last few seconds."""
        p = job.progress
        if bytes_total is not None:
            p.bytes_total = bytes_total
        now = time.monotonic()
        if bytes_done > p.bytes_done:
            p.bytes_done = bytes_done
        p.samples.append((now, p.bytes_done))
        while len(p.samples) > 2 and now - p.samples[1][0] >= RATE_WINDOW_SEC:
            p.samples.pop(0)
        t0, b0 = p.samples[0]
        if now - t0 > 0.05:
            p.rate_bps = round((p.bytes_done - b0) / (now - t0), 1)
            left = (p.bytes_total - p.bytes_done) if p.bytes_total is not None else None
            p.eta_sec = round(left / p.rate_bps, 1) if left is not None and p.rate_bps else None
        if now - job.saved_at >= SAVE_EVERY_SEC:
            self.save(job)
        else:
            self._notify(job)

    def finish(self, job: Job, error: str | dict | None = None, result: dict | None = None,
               state: JobState | None = None) -> None:
        """End the job: failed with `error` ({"code", "message"}, or a message), else
        succeeded with `result` (or `state`, e.g. cancelled)."""
        if job.state.terminal:
            return
        if job.state is JobState.QUEUED and state is not JobState.CANCELLED:
            self._move(job, JobState.RUNNING)
        target = state or (JobState.FAILED if error else JobState.SUCCEEDED)
        job.error = error_of(error) if error else None
        job.result = result
        self._move(job, target)
        message = job.error["message"] if job.error else None
        for step in job.steps:
            if step.state == "running":  # the step the job ended in
                step.state, step.finished = ("done" if target is JobState.SUCCEEDED else "failed"), job.finished_at
                if message and step.detail is None:
                    step.detail = message.splitlines()[0][:200]
            elif step.state == "pending":
                step.state = "skipped"
        if target is JobState.SUCCEEDED and job.progress.bytes_total is not None:
            job.progress.bytes_done = max(job.progress.bytes_done, job.progress.bytes_total)
        job.progress.rate_bps = job.progress.eta_sec = None
        self.save(job)

    def on_cancel(self, job: Job, hook: Callable[[], None]) -> None:
        """`hook` is called once when the job is cancelled (it stops the work)."""
        self._cancel_hooks[job.id] = hook

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job that has not ended (its work is told to stop); an ended job is
        returned unchanged; None for an unknown id."""
        job = self._live.get(job_id)
        if job is None:
            return self.get(job_id)
        if not job.state.terminal:
            hook = self._cancel_hooks.pop(job.id, None)
            self.finish(job, error={"code": "cancelled", "message": "cancelled by request"}, state=JobState.CANCELLED)
            if hook is not None:
                hook()
        return job.to_dict()

    def save(self, job: Job) -> None:
        job.saved_at = time.monotonic()
        self.store.save_job(job.to_dict())
        self._notify(job)

    def _notify(self, job: Job) -> None:
        event = self._changed.pop(job.id, None)
        if event is not None:
            event.set()

    # ---- reading ---------------------------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        job = self._live.get(job_id)
        if job:
            return job.to_dict()
        body = self.store.get_job(job_id)
        return _normalised(body) if body else None

    def live(self, job_id: str) -> Job | None:
        return self._live.get(job_id)

    def list(self, type: str | None = None, state: str | None = None, limit: int = 50) -> list[dict]:
        """Newest first: this daemon's jobs as they are now, and earlier ones from the store."""
        out = []
        for body in self.store.list_jobs(type=type, state=state, limit=limit):
            live = self._live.get(body["id"])
            out.append(live.to_dict() if live else _normalised(body))
        return out

    def running(self, kind: str) -> Job | None:
        return next((j for j in self._live.values() if j.type == kind and j.state is JobState.RUNNING), None)

    def active(self, kind: str | None = None) -> list[Job]:
        """The jobs not ended yet (queued or running), of `kind` if given."""
        return [j for j in self._live.values() if not j.state.terminal and (kind is None or j.type == kind)]

    async def follow(self, job_id: str) -> AsyncIterator[dict]:
        """The job now, then after each change, ending with its terminal state."""
        while True:
            body = self.get(job_id)
            if body is None:
                return
            yield body
            if JobState(body["state"]).terminal or job_id not in self._live:
                return
            event = self._changed.setdefault(job_id, asyncio.Event())
            await event.wait()

    def counts(self) -> dict[tuple[str, str], int]:
        """This daemon's jobs by (kind, state)."""
        out: dict[tuple[str, str], int] = {}
        for job in self._live.values():
            key = (job.type, job.state.value)
            out[key] = out.get(key, 0) + 1
        return out
