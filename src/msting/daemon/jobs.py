"""Long operations (profile switches) as jobs with named steps and progress.

A job is saved to the store on every change, so `GET /v1/jobs/{id}` answers from memory
while the daemon runs and from SQLite after a restart.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import Enum

from msting.daemon.store import Store


class JobState(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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
class Job:
    kind: str
    target: str
    steps: list[Step]
    id: str = field(default_factory=lambda: f"job-{uuid.uuid4().hex[:12]}")
    state: JobState = JobState.RUNNING
    created: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    result: dict | None = None

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ValueError(f"job {self.id} has no step {name!r}; its steps: {', '.join(s.name for s in self.steps)}")

    @property
    def progress(self) -> float:
        done = sum(1 for s in self.steps if s.state in ("done", "skipped"))
        return round(done / len(self.steps), 3) if self.steps else 1.0

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "state": self.state.value,
            "created": self.created,
            "finished": self.finished,
            "duration_ms": round((self.finished - self.created) * 1000.0, 1) if self.finished else None,
            "progress": self.progress,
            "error": self.error,
            "result": self.result,
            "steps": [{**asdict(s), "duration_ms": s.duration_ms} for s in self.steps],
        }


INTERRUPTED = "interrupted: the daemon stopped while this job ran"


class Jobs:
    def __init__(self, store: Store):
        self.store = store
        self._live: dict[str, Job] = {}
        self._interrupted()

    def _interrupted(self) -> None:
        """Jobs a previous daemon left running (it was killed mid-job) end as failed,
        with the step they were in, so no job reads "running" forever."""
        for body in self.store.running_jobs():
            now = time.time()
            for step in body.get("steps", []):
                if step.get("state") == "running":
                    step.update(state="failed", finished=now, detail=step.get("detail") or INTERRUPTED)
                elif step.get("state") == "pending":
                    step["state"] = "skipped"
            body.update(state=JobState.FAILED.value, finished=now, error=INTERRUPTED,
                        duration_ms=round((now - body["created"]) * 1000.0, 1))
            self.store.save_job(body)

    def create(self, kind: str, target: str, step_names: list[str]) -> Job:
        job = Job(kind, target, [Step(n) for n in step_names])
        self._live[job.id] = job
        self.save(job)
        return job

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

    def finish(self, job: Job, error: str | None = None, result: dict | None = None) -> None:
        job.state = JobState.FAILED if error else JobState.SUCCEEDED
        job.error, job.result, job.finished = error, result, time.time()
        for step in job.steps:
            if step.state == "running":  # the step the job failed in
                step.state, step.finished = ("failed" if error else "done"), job.finished
                if error and step.detail is None:
                    step.detail = error.splitlines()[0][:200]
            elif step.state == "pending":
                step.state = "skipped"
        self.save(job)

    def save(self, job: Job) -> None:
        self.store.save_job(job.to_dict())

    def get(self, job_id: str) -> dict | None:
        job = self._live.get(job_id)
        return job.to_dict() if job else self.store.get_job(job_id)

    def running(self, kind: str) -> Job | None:
        return next((j for j in self._live.values() if j.kind == kind and j.state is JobState.RUNNING), None)

    def counts(self) -> dict[tuple[str, str], int]:
        """This daemon's jobs by (kind, state)."""
        out: dict[tuple[str, str], int] = {}
        for job in self._live.values():
            key = (job.kind, job.state.value)
            out[key] = out.get(key, 0) + 1
        return out
