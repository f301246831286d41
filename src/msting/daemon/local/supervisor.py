"""One supervised worker process: spawn, talk the protocol, watch it, restart it.

Each `WorkerSupervisor` runs one lifecycle task:

    spawn → hello (LOADING) → ready (VERIFYING) → a real 1-token generate (READY)
          → serve requests from the model's queue, up to the worker's slots at once
            (READY with none in flight ⇄ BUSY with one or more)
    on crash or hang: re-queue the requests in hand that had not streamed, at the front
          and in order, as suspects that run alone (fail one that already streamed, or
          that was in flight in a worker that died before), back off, start again;
    a boot error or too many start failures → FATAL, which is not forever: a boot error
          is retried when the model file changes, repeated failures after
          `restart.fatal_retry_sec`, and either at once on an explicit load.

Three tasks cooperate per incarnation: the frame reader (its EOF means the worker
died; it hands each answer to its job), the serve loop (it takes a job from the queue
whenever a slot is free), and the watchdog (pings, hang detection). The reader is the
only one that reads the socket; the watchdog only kills, it never cleans up, so all
cleanup happens in one place. Hang detection judges each process on its own clock:
every incarnation starts with a fresh `Liveness`, so a replacement is never blamed for
its predecessor's silence.

A worker process serves `parallel` sequences at once in one batched context (its
ready frame says how many slots it has). The supervisor keeps up to that many jobs in
flight, by id: token, done and error frames go to their job, `cancel` names one. A
worker dies for all of its jobs at once, so which one killed it is unknown: each job
that was in flight and had not streamed becomes a *suspect* (`LocalJob.suspect`) and is
retried alone on a worker, with no other job in flight beside it. A request that kills
every worker it runs on is so pinned down and answered with `request_crashed_worker`
after `MAX_ATTEMPTS`, and the innocent ones it shared a batch with complete. The decode
loop is one thread, so hangs are judged per worker, not per slot.

A supervisor knows its model only through what it was given when built (its worker
spec, the settings, the launcher, the model's queue) and the `SupervisorEvents` sink it
reports to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable, Protocol

from msting.api.errors import InvalidRequest, ServerError
from msting.config.schema import ServiceConfig
from msting.daemon.local import frames, liveness, verify
from msting.daemon.local.backoff import RestartTracker
from msting.daemon.local.endings import Exit, FatalInfo, describe_exit
from msting.daemon.local.procs import ChildProcess
from msting.daemon.local.queue import JobStatus, LocalJob, ModelQueue, fits
from msting.daemon.local.spares import LaunchError, WorkerLauncher, stop_process
from msting.daemon.local.states import WorkerState, transition
from msting.worker import protocol
from msting.worker.protocol import MsgType

log = logging.getLogger("msting.daemon.supervisor")

# A request in flight when this many workers died is answered with an error instead of a
# third try: one request can cost at most one restart per retry, and never the model.
MAX_ATTEMPTS = 2
FILE_POLL_SEC = 2.0  # how often a worker FATAL on a boot error looks at its model file


class SupervisorEvents(Protocol):
    """What a supervisor tells its model."""

    def on_state(self, worker: WorkerSupervisor) -> None: ...

    def on_event(self, kind: str, worker: WorkerSupervisor, detail: str | None = None) -> None: ...

    def on_answer(self, worker: WorkerSupervisor, job: LocalJob, frame: dict) -> None: ...

    def on_finished(self, worker: WorkerSupervisor, job: LocalJob) -> None: ...


class WorkerSupervisor:
    def __init__(self, worker_id: str, model_name: str, spec: Callable[[], dict[str, Any]], settings: ServiceConfig,
                 launcher: WorkerLauncher, queue: ModelQueue, events: SupervisorEvents, clock=time.monotonic):
        self.id = worker_id
        self.model_name = model_name
        self._spec_of = spec  # asked again at each spawn (an automatic `parallel` is chosen once the file can be read)
        self.spec = spec()  # the worker's --spec: name, path, n_ctx, parallel, ..., embedding
        self.settings = settings  # the config's llm_service section
        self.launcher = launcher
        self.queue = queue
        self.events = events
        self.state = WorkerState.STOPPED
        self.since = time.time()
        self.pid: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.last_exit: str | None = None
        self.backoff_sec: float | None = None
        self.load_ms: float | None = None
        self.info: dict | None = None
        self.tracker = RestartTracker(self.settings.restart, clock)
        self.fatal: FatalInfo | None = None
        self._clock = clock
        self._task: asyncio.Task | None = None
        self._serve_task: asyncio.Task | None = None
        self._stderr_task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._retry = asyncio.Event()  # an explicit load while FATAL: try again now
        self._proc: ChildProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.slots = 1  # sequences the worker process serves at once (its ready frame's `parallel`)
        self._jobs: dict[str, LocalJob] = {}  # in flight, by id, in the order they began
        self._answered: dict[str, asyncio.Future] = {}  # resolved when the job leaves its slot
        self._empty = asyncio.Event()  # set while no job is in flight
        self._empty.set()
        self._boot: asyncio.Future | None = None
        self._boot_error: str | None = None
        self._kill_reason: str | None = None
        self._stderr: deque[str] = deque(maxlen=40)
        self._live = liveness.Liveness(clock(), clock())
        self._file_stat: tuple | None = None  # the model file as it was when the process was spawned

    # ---- public ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker; on a FATAL one, try again now (an operator's load)."""
        if self.state is WorkerState.FATAL:
            self.tracker.reset()
        if self._task and not self._task.done():
            if self.state is WorkerState.FATAL:
                self._set(WorkerState.STARTING)
                self._retry.set()  # the lifecycle is waiting in FATAL: wake it
            return
        self._stop.clear()
        # STARTING at once, not when the task first runs: "started" must be true the
        # moment start() returns, or a caller checking it right away would skip the model.
        self._set(WorkerState.STARTING)
        self._task = asyncio.create_task(self._lifecycle(), name=f"worker {self.id}")

    def recheck(self) -> None:
        """FATAL on a boot error and the model file changed since: try again now, so a
        `wait` or a request right after the fix does not see the old failure."""
        if self.state is WorkerState.FATAL and self.fatal is not None and self.fatal.kind == "boot" \
                and self._model_file_stat() != self._file_stat:
            self.start()

    async def stop(self) -> None:
        """Drain: take no more requests, finish every one in flight, then shut the
        process down."""
        self._stop.set()
        if self._serve_task:
            self._serve_task.cancel()  # take() is cancel-safe: nothing is lost
        if self._task:
            await asyncio.shield(self._task)

    def abort(self) -> None:
        """Forced shutdown: kill the process and do not restart it."""
        self._stop.set()
        self.kill_now("forced shutdown")

    def kill_now(self, reason: str) -> None:
        """Kill the process at once (hang, or forced shutdown); the lifecycle cleans up."""
        if self._proc and self._proc.returncode is None:
            self._kill_reason = reason
            self._proc.kill()

    def cancel(self, job: LocalJob) -> None:
        """The client went away: stop generating for it (only it: its slot frees
        within a decode step, and its done frame, finish_reason cancelled, ends it)."""
        if self._jobs.get(job.id) is job:
            self._send(protocol.encode(MsgType.CANCEL, job.id))

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def holds(self, job: LocalJob) -> bool:
        """`job` is in flight on this worker."""
        return self._jobs.get(job.id) is job

    @property
    def slots_busy(self) -> int:
        """Slots holding a job (the daemon's own probes too)."""
        return len(self._jobs)

    @property
    def in_flight(self) -> int:
        """Clients' jobs in flight (the daemon's own probes not counted)."""
        return sum(1 for j in self._jobs.values() if not j.internal)

    @property
    def verified(self) -> bool:
        """It generated a token in this incarnation and takes requests."""
        return self.state.serving

    def snapshot(self) -> dict:
        info = self.info or {}
        return {
            "id": self.id,
            "pid": self.pid,
            "state": self.state.value,
            "since": self.since,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_exit": self.last_exit,
            "backoff_sec": round(self.backoff_sec, 3) if self.state is WorkerState.BACKOFF and self.backoff_sec else None,
            "verified": self.verified,
            "fatal": self.fatal.to_dict() if self.fatal and self.state is WorkerState.FATAL else None,
            "slots": self.slots if self.state.serving else None,
            "slots_busy": self.slots_busy if self.state.serving else None,
            "n_threads": info.get("n_threads"),
            "threads": info.get("threads"),
        }

    # ---- lifecycle ------------------------------------------------------------------

    def _set(self, target: WorkerState) -> None:
        if target is self.state:
            return
        self.state = transition(self.state, target)
        self.since = time.time()
        self.events.on_state(self)

    async def _lifecycle(self) -> None:
        while True:
            try:
                await self._incarnation()
                reason = Exit("stopped", "stopped")
            except Exit as exc:
                reason = exc
            except Exception as exc:  # a supervision bug must not leave a zombie worker
                log.exception("worker %s: supervision error", self.id)
                reason = Exit("crash", f"supervision error: {exc}")
            finally:
                await self._reap()
            self._settle_jobs(reason.reason)
            if reason.kind == "stopped" or self._stop.is_set():
                self._to_stopped()
                return
            self.last_error = reason.reason
            self.events.on_event("worker_fatal" if reason.kind == "boot" else "worker_crash", self, reason.reason)
            if reason.kind == "boot":
                log.error("worker %s: boot error: %s", self.id, reason.reason)
                stopped = await self._wait_in_fatal(FatalInfo("boot", reason.reason, None, self.model_name))
            else:
                delay = self.tracker.on_crash()
                if delay is None:
                    retry_in = self.settings.restart.fatal_retry_sec
                    self.last_error = (
                        f"gave up after {self.tracker.recent_crashes} start failures within "
                        f"{self.settings.restart.crash_window_sec:g}s; last: {reason.reason}"
                    )
                    log.error("worker %s: %s; trying again in %gs", self.id, self.last_error, retry_in)
                    self.events.on_event("worker_fatal", self, self.last_error)
                    stopped = await self._wait_in_fatal(FatalInfo("crashes", self.last_error, time.time() + retry_in, self.model_name))
                else:
                    self.backoff_sec = delay
                    self.restarts += 1
                    self._set(WorkerState.BACKOFF)
                    stopped = await self._back_off(delay)
            if stopped:
                self._to_stopped()
                return

    async def _back_off(self, delay: float) -> bool:
        """Wait `delay` before the next start, but no longer than the waiting cap once a
        request waits for the model. True: the worker was told to stop meanwhile."""
        began = self._clock()
        cap = self.tracker.waiting_cap()
        queue = self.queue
        log.warning("worker %s crashed (%s); restart %d in %.2fs (at most %gs while requests wait)",
                    self.id, self.last_error, self.restarts, delay, cap)
        stop = asyncio.ensure_future(self._stop.wait())
        arrival: asyncio.Future | None = asyncio.ensure_future(queue.wait_nonempty())
        try:
            while not self._stop.is_set():
                until = began + delay
                if arrival is None or arrival.done():
                    arrival = None
                    until = min(until, began + cap)
                remaining = until - self._clock()
                if remaining <= 0:
                    return False
                waiting = {stop} if arrival is None else {stop, arrival}
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            return True
        finally:
            for fut in (stop, arrival):
                if fut is not None and not fut.done():
                    fut.cancel()

    async def _wait_in_fatal(self, fatal: FatalInfo) -> bool:
        """FATAL until the next try: the retry time (repeated start failures), a change of
        the model file (a boot error), or an explicit load. True: told to stop meanwhile."""
        self.fatal = fatal
        self.backoff_sec = None
        self._retry.clear()
        self._set(WorkerState.FATAL)
        stop = asyncio.ensure_future(self._stop.wait())
        retry = asyncio.ensure_future(self._retry.wait())
        try:
            while True:
                if fatal.retry_at is not None:
                    timeout = max(0.0, fatal.retry_at - time.time())
                else:
                    timeout = FILE_POLL_SEC
                await asyncio.wait({stop, retry}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if self._stop.is_set():
                    return True
                if retry.done():
                    why = "the model file changed" if fatal.kind == "boot" and self._model_file_stat() != self._file_stat \
                        else "an explicit load"
                elif fatal.retry_at is not None and time.time() >= fatal.retry_at:
                    why = f"fatal_retry_sec={self.settings.restart.fatal_retry_sec:g} passed"
                elif fatal.retry_at is None and self._model_file_stat() != self._file_stat:
                    why = "the model file changed"
                else:
                    continue
                log.info("worker %s: leaving FATAL (%s)", self.id, why)
                self.events.on_event("worker_retry", self, why)
                self.tracker.reset()
                return False
        finally:
            self.fatal = None
            for fut in (stop, retry):
                if not fut.done():
                    fut.cancel()

    def _model_file_stat(self) -> tuple | None:
        try:
            st = os.stat(self.spec["path"])
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def _to_stopped(self) -> None:
        if self.state.alive and self.state is not WorkerState.DRAINING:
            self._set(WorkerState.DRAINING)
        self._set(WorkerState.STOPPED)

    async def _incarnation(self) -> None:
        self._set(WorkerState.STARTING)
        self._kill_reason = None
        self._boot_error = None
        self._file_stat = self._model_file_stat()
        reader = await self._spawn()
        now = self._clock()
        self._live = liveness.Liveness(last_progress=now, last_ping=now)  # this process's own clock
        reader_task = asyncio.create_task(self._read_frames(reader), name=f"reader {self.id}")
        watchdog = drained = None
        try:
            await self._await_boot(reader_task)
            await self._verify(reader_task)
            self.tracker.on_ready()
            self._serve_task = asyncio.create_task(self._serve(), name=f"serve {self.id}")
            drained = asyncio.create_task(self._drained(), name=f"drained {self.id}")
            watchdog = asyncio.create_task(
                liveness.watch(self._live, self.settings, self._clock, lambda: bool(self._jobs),
                               lambda: self._send(protocol.encode(MsgType.PING, None)), self.kill_now),
                name=f"watchdog {self.id}")
            waiting = {reader_task, self._serve_task, drained}
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if drained in done:
                    return  # told to stop, and nothing is in flight any more: a clean stop
                if reader_task in done:
                    raise await self._death_reason()
                if not self._serve_task.cancelled():
                    self._serve_task.result()  # surfaces a serve-loop bug
                waiting.discard(self._serve_task)  # stopped taking; the jobs in flight finish
        finally:
            for task in (self._serve_task, watchdog, drained):
                if task and not task.done():
                    task.cancel()
            self._serve_task = None
            if not reader_task.done():
                reader_task.cancel()

    async def _spawn(self) -> asyncio.StreamReader:
        spec = self.spec = self._spec_of()
        try:
            launched = await self.launcher.launch(json.dumps(spec))
        except LaunchError as exc:
            raise Exit("crash", str(exc)) from None
        self._proc = launched.proc
        self.pid = self._proc.pid
        self._stderr.clear()
        # asyncio keeps only weak references to tasks: hold this one until the next spawn.
        self._stderr_task = asyncio.create_task(self._read_stderr(self._proc.stderr), name=f"stderr {self.id}")
        reader, self._writer = await asyncio.open_unix_connection(sock=launched.sock, limit=protocol.MAX_FRAME_BYTES)
        if launched.spare:  # already running with llama_cpp imported: give it the model
            self._send(protocol.encode(MsgType.LOAD, None, spec=spec))
        log.info("worker %s %s, pid %d, model %s", self.id, "took the warm spare" if launched.spare else "spawned",
                 self.pid, spec["path"])
        return reader

    async def _await_boot(self, reader_task: asyncio.Task) -> None:
        loop = asyncio.get_running_loop()
        self._boot = loop.create_future()
        timeout = self.settings.startup_timeout_sec
        done, _ = await asyncio.wait({self._boot, reader_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._boot in done:
            ready = self._boot.result()
            self.info = ready.get("model") or {}
            self.load_ms = ready.get("load_ms")
            slots = self.info.get("parallel")
            # the worker says how many sequences it serves at once; one that does not say serves one
            self.slots = slots if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1 else 1
            self._set(WorkerState.VERIFYING)
            log.info("worker %s loaded the model in %.1f ms", self.id, self.load_ms or 0.0)
            return
        if reader_task in done:
            raise await self._death_reason()
        self.kill_now(f"did not report ready within {timeout:g}s (llm_service.startup_timeout_sec)")
        raise await self._death_reason()

    async def _verify(self, reader_task: asyncio.Task) -> None:
        """Readiness means "can generate": one real token (or one embedding) before taking traffic."""
        probe = verify.probe(self.model_name, embedding=bool(self.spec.get("embedding")))
        exchange = asyncio.create_task(self._exchange(probe))
        done, _ = await asyncio.wait({exchange, reader_task}, timeout=self.settings.startup_timeout_sec, return_when=asyncio.FIRST_COMPLETED)
        if exchange not in done:
            probe.cancel()  # the probe is internal: never re-queue it
            exchange.cancel()
            if reader_task not in done:
                self.kill_now("the verification generate did not finish in time")
            raise await self._death_reason()
        failed = verify.failure(probe)
        if failed is not None:
            self.kill_now(f"verification generate failed: {failed}")
            raise await self._death_reason()
        self._set(WorkerState.READY)
        log.info("worker %s ready: pid %s verified", self.id, self.pid)
        self.events.on_event("worker_ready", self, f"pid {self.pid}, loaded in {self.load_ms or 0:.1f} ms, verified")

    async def _serve(self) -> None:
        """Take jobs while the worker has free slots: each take() returns as soon as
        the job was sent; its answer arrives through the reader (see _on_request_end)."""
        while not self._stop.is_set():
            await self.queue.take(self._offer)

    async def _drained(self) -> None:
        """Return once the worker was told to stop and has nothing in flight."""
        await self._stop.wait()
        await self._empty.wait()

    async def _exchange(self, req: LocalJob) -> None:
        """Send one request and wait until the worker answered it (done or error)."""
        if self._begin(req):
            answered = self._answered.get(req.id)
            if answered is not None:  # None: the worker ended and settled it already
                await answered

    def _offer(self, job: LocalJob) -> bool | None:
        """The queue offers `job` (see ModelQueue): None while it cannot be taken
        here now: no free slot, or a suspect (it was in flight when a worker died)
        that must run alone, or a suspect already running alone here."""
        if self._stop.is_set() or not self.state.serving or not fits(job, self._jobs.values(), self.slots):
            return None
        return self._begin(job)

    def _begin(self, job: LocalJob) -> bool:
        """Take charge of `job` and send it to the worker process (synchronous: the
        queue calls it the moment it hands the job over). False: the job cannot be
        put in a frame; it is answered with a 400 and the slot stays free."""
        try:
            frame = frames.request_frame(job)  # its fields were validated by the HTTP layer
        except (protocol.ProtocolError, TypeError, ValueError) as exc:
            log.warning("worker %s: refusing %s: %s", self.id, job.id, exc)
            job.fail(InvalidRequest("invalid_request", f"the request cannot be sent to the model: {exc}"))
            return False
        self._jobs[job.id] = job
        self._answered[job.id] = asyncio.get_running_loop().create_future()
        self._empty.clear()
        now = self._clock()
        job.started(now)
        self._live.last_progress = now
        if self.state is WorkerState.READY:
            self._set(WorkerState.BUSY)
        self._send(frame)
        return True

    def _leave(self, job_id: str) -> LocalJob | None:
        """`job_id` leaves its slot; the worker is READY again when none is left, and
        the queue's head is offered again (a slot is free)."""
        job = self._jobs.pop(job_id, None)
        answered = self._answered.pop(job_id, None)
        if answered is not None and not answered.done():
            answered.set_result(None)
        if not self._jobs:
            self._empty.set()
            if self.state is WorkerState.BUSY:
                self._set(WorkerState.READY)
        if job is not None and self.state.serving:
            self.queue.dispatch()
        return job

    # ---- frames ---------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame)

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                self.kill_now("protocol error: frame over the size limit")
                return
            except ConnectionError:
                return
            if not line:
                return
            try:
                frame = protocol.decode(line)
            except protocol.ProtocolError as exc:
                self.kill_now(f"protocol error: {exc}")
                return
            self._on_frame(frame)

    def _on_frame(self, frame: dict) -> None:
        kind = frame["type"]
        now = self._clock()
        if kind == MsgType.TOKEN:
            req = self._jobs.get(frame["id"])
            if req is not None:
                self._live.last_progress = now
                if req.stream and frame.get("text"):
                    req.emit_token(frame["text"])
        elif kind == MsgType.DONE or (kind == MsgType.ERROR and frame["id"] is not None):
            self._on_request_end(frame)
        elif kind == MsgType.PONG:
            live = self._live
            live.ping_sent_at = None
            # progress: the decode loop's last token for any sequence, or the start of
            # the oldest job in flight, whichever is more recent
            agos = [a for a in (frame.get("last_token_at"), frame.get("busy_since"))
                    if isinstance(a, (int, float)) and not isinstance(a, bool)]
            if self._jobs and agos:
                live.last_progress = max(live.last_progress, now - float(min(agos)))
        elif kind == MsgType.HELLO:
            self._set(WorkerState.LOADING)
        elif kind == MsgType.READY:
            if self._boot is not None and not self._boot.done():
                self._boot.set_result(frame)
        elif kind == MsgType.ERROR:
            if frame.get("kind") == "boot":
                self._boot_error = frame.get("message")
            log.warning("worker %s error: %s", self.id, frame.get("message"))

    def _on_request_end(self, frame: dict) -> None:
        req = self._jobs.get(frame["id"])
        if req is None:
            return  # a late answer for a request already settled elsewhere
        if frame["type"] == MsgType.DONE:
            self.events.on_answer(self, req, frame)
            req.finish(frames.result(req, frame))
        else:
            req.fail(frames.error(frame))
        self._leave(req.id)
        if self.state.serving:  # not the worker's own verification
            self.events.on_finished(self, req)

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            line = await stream.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)
                # the worker's own lines (internal errors with their id, boot failures) are
                # for the operator; llama.cpp's chatter stays at debug level
                log.log(logging.WARNING if text.startswith("msting-worker[") else logging.DEBUG, "worker %s stderr: %s", self.id, text)

    # ---- endings --------------------------------------------------------------------

    async def _death_reason(self) -> Exit:
        proc = self._proc
        assert proc is not None
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout=self.settings.stop_timeout_sec)
        except asyncio.TimeoutError:
            proc.kill()
            rc = await proc.wait()
        self.last_exit = describe_exit(rc)
        if self._kill_reason:
            return Exit("crash", self._kill_reason)
        if rc == protocol.EXIT_BOOT_ERROR:
            return Exit("boot", self._boot_error or f"the worker could not load the model ({self.last_exit})")
        tail = f"; stderr: {self._stderr[-1]}" if self._stderr else ""
        return Exit("crash", f"worker {self.last_exit}{tail}")

    def _settle_jobs(self, reason: str) -> None:
        """The requests in hand when the worker ended: retry each, or end it honestly.
        Those that had not streamed go back to the front of the queue, in the order
        they began, as suspects (each runs alone from now on)."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        for answered in self._answered.values():
            if not answered.done():
                answered.set_result(None)
        self._answered.clear()
        self._empty.set()
        retry = []
        for req in jobs:
            if req.over:
                continue
            req.attempts += 1
            if req.status is JobStatus.STREAMING:
                req.fail(ServerError("worker_crashed", f"the worker died after part of the reply was streamed; the reply is incomplete ({reason})"))
            elif req.attempts >= MAX_ATTEMPTS:
                log.warning("worker %s: %s was in flight in %d workers that died; answering it with an error", self.id, req.id, req.attempts)
                self.events.on_event("request_crashed_worker", self, f"{req.id}: {reason}")
                req.fail(ServerError(
                    "request_crashed_worker",
                    f"model '{self.model_name}': the request was in flight when {req.attempts} of its workers died, "
                    f"so it is not tried again; the model keeps serving other requests (last: {reason})",
                ))
            else:
                req.requeued()
                retry.append(req)
        if retry:
            log.info("worker %s: re-queueing %s after the worker ended (%s)", self.id, ", ".join(r.id for r in retry), reason)
            self.queue.put_front(*retry)

    async def _reap(self) -> None:
        """Make sure the process is gone: shutdown frame, then SIGTERM, then SIGKILL."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if self.state.alive and self.state is not WorkerState.DRAINING:
                self._set(WorkerState.DRAINING)
            self._send(protocol.encode(MsgType.SHUTDOWN, None))
            await stop_process(proc, 2.0, self.settings.stop_timeout_sec)
            if self.last_exit is None or proc.returncode is not None:
                self.last_exit = describe_exit(proc.returncode)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.pid = None
