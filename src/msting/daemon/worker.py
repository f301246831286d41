"""One supervised worker process: spawn, talk the protocol, watch it, restart it.

Each `WorkerSupervisor` runs one lifecycle task:

    spawn → hello (LOADING) → ready → verify with a real 1-token generate (READY)
          → serve requests from the model's queue, one at a time (READY ⇄ BUSY)
    on crash or hang: re-queue the request in hand (or fail it if it already streamed),
          back off, start again; a boot error or too many crashes → FATAL.

Three tasks cooperate per incarnation: the frame reader (its EOF means the worker
died), the serve loop, and the watchdog (pings, hang detection). The reader is the
only one that reads the socket; the watchdog only kills, it never cleans up, so all
cleanup happens in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections import deque
from typing import TYPE_CHECKING

from msting.daemon.backoff import RestartTracker
from msting.daemon.procs import ChildProcess
from msting.daemon.requests import ApiError, GenerationRequest, server_error
from msting.daemon.spares import LaunchError, stop_process
from msting.daemon.states import WorkerState, transition
from msting.worker import protocol
from msting.worker.protocol import MsgType

if TYPE_CHECKING:
    from msting.daemon.model_runtime import ModelRuntime

log = logging.getLogger("msting.daemon.worker")

MAX_ATTEMPTS = 3  # a request that crashed this many workers is failed, not retried forever
VERIFY_PROMPT = "Hello"


class _Exit(Exception):
    """Why an incarnation ended."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind  # "crash" | "boot" | "stopped"
        self.reason = reason


class WorkerSupervisor:
    def __init__(self, model: ModelRuntime, index: int, clock=time.monotonic):
        self.model = model
        self.settings = model.settings
        self.id = f"{model.key}#{index}"
        self.state = WorkerState.STOPPED
        self.since = time.time()
        self.pid: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.last_exit: str | None = None
        self.backoff_sec: float | None = None
        self.verified = False
        self.load_ms: float | None = None
        self.info: dict | None = None
        self.tracker = RestartTracker(self.settings.restart, clock)
        self._clock = clock
        self._task: asyncio.Task | None = None
        self._serve_task: asyncio.Task | None = None
        self._stderr_task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._proc: ChildProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._current: GenerationRequest | None = None
        self._current_done: asyncio.Future | None = None
        self._boot: asyncio.Future | None = None
        self._boot_error: str | None = None
        self._kill_reason: str | None = None
        self._stderr: deque[str] = deque(maxlen=40)
        self._last_progress = 0.0
        self._ping_sent_at: float | None = None
        self._last_ping = 0.0

    # ---- public ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task and not self._task.done():
            return
        if self.state is WorkerState.FATAL:
            self.tracker.reset()
        self._stop.clear()
        # STARTING at once, not when the task first runs: "started" must be true the
        # moment start() returns, or a caller checking it right away would skip the model.
        self._set(WorkerState.STARTING)
        self._task = asyncio.create_task(self._lifecycle(), name=f"worker {self.id}")

    async def stop(self) -> None:
        """Drain: finish the request in hand, then shut the process down."""
        self._stop.set()
        if self._serve_task and self._current is None:
            self._serve_task.cancel()
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

    def cancel(self, req: GenerationRequest) -> None:
        """The client went away: stop generating for it."""
        if self._current is req and self._writer is not None:
            self._send(protocol.encode(MsgType.CANCEL, req.id))

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    @property
    def current(self) -> GenerationRequest | None:
        return self._current

    def snapshot(self) -> dict:
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
        }

    # ---- lifecycle ------------------------------------------------------------------

    def _set(self, target: WorkerState) -> None:
        if target is self.state:
            return
        self.state = transition(self.state, target)
        self.since = time.time()
        self.model.on_worker_state(self)

    async def _lifecycle(self) -> None:
        while True:
            try:
                await self._incarnation()
                reason = _Exit("stopped", "stopped")
            except _Exit as exc:
                reason = exc
            except Exception as exc:  # a supervision bug must not leave a zombie worker
                log.exception("worker %s: supervision error", self.id)
                reason = _Exit("crash", f"supervision error: {exc}")
            finally:
                await self._reap()
            self._settle_current(reason.reason)
            if reason.kind == "stopped" or self._stop.is_set():
                self._to_stopped()
                return
            self.last_error = reason.reason
            self.verified = False
            self.model.record_event("worker_fatal" if reason.kind == "boot" else "worker_crash", self, reason.reason)
            if reason.kind == "boot":
                log.error("worker %s: boot error, not restarting: %s", self.id, reason.reason)
                self._set(WorkerState.FATAL)
                return
            delay = self.tracker.on_crash()
            if delay is None:
                self.last_error = (
                    f"gave up after {self.tracker.recent_crashes} crashes within "
                    f"{self.settings.restart.crash_window_sec:g}s; last: {reason.reason}"
                )
                log.error("worker %s: %s", self.id, self.last_error)
                self.model.record_event("worker_fatal", self, self.last_error)
                self._set(WorkerState.FATAL)
                return
            self.backoff_sec = delay
            self.restarts += 1
            log.warning("worker %s crashed (%s); restart %d in %.2fs", self.id, reason.reason, self.restarts, delay)
            self._set(WorkerState.BACKOFF)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
                self._to_stopped()
                return
            except asyncio.TimeoutError:
                pass

    def _to_stopped(self) -> None:
        if self.state.alive and self.state is not WorkerState.DRAINING:
            self._set(WorkerState.DRAINING)
        self._set(WorkerState.STOPPED)

    async def _incarnation(self) -> None:
        self._set(WorkerState.STARTING)
        self._kill_reason = None
        self._boot_error = None
        reader = await self._spawn()
        reader_task = asyncio.create_task(self._read_frames(reader), name=f"reader {self.id}")
        watchdog = None
        try:
            await self._await_boot(reader_task)
            await self._verify(reader_task)
            self.tracker.on_ready()
            self._serve_task = asyncio.create_task(self._serve(), name=f"serve {self.id}")
            watchdog = asyncio.create_task(self._watchdog(), name=f"watchdog {self.id}")
            await asyncio.wait({reader_task, self._serve_task}, return_when=asyncio.FIRST_COMPLETED)
            if self._serve_task.done() and not self._serve_task.cancelled():
                self._serve_task.result()  # surfaces a serve-loop bug
                return  # drained on request: a clean stop
            if self._stop.is_set() and self._serve_task.cancelled():
                return
            raise await self._death_reason()
        finally:
            for task in (self._serve_task, watchdog):
                if task and not task.done():
                    task.cancel()
            self._serve_task = None
            if not reader_task.done():
                reader_task.cancel()

    async def _spawn(self) -> asyncio.StreamReader:
        spec = self.model.worker_spec()
        try:
            launched = await self.model.launcher.launch(json.dumps(spec))
        except LaunchError as exc:
            raise _Exit("crash", str(exc)) from None
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
            self._set(WorkerState.READY)
            log.info("worker %s ready: model loaded in %.1f ms", self.id, self.load_ms or 0.0)
            return
        if reader_task in done:
            raise await self._death_reason()
        self.kill_now(f"did not report ready within {timeout:g}s (llm_service.startup_timeout_sec)")
        raise await self._death_reason()

    async def _verify(self, reader_task: asyncio.Task) -> None:
        """Readiness means "can generate": one real token (or one embedding) before taking traffic."""
        if self.model.spec.type == "embeddings":  # verify what it will serve
            probe = GenerationRequest(self.model.name, {"input": [VERIFY_PROMPT]}, kind="embed", internal=True)
        else:
            probe = GenerationRequest(self.model.name, {"prompt": VERIFY_PROMPT, "max_tokens": 1, "temperature": 0.0}, internal=True)
        exchange = asyncio.create_task(self._exchange(probe))
        done, _ = await asyncio.wait({exchange, reader_task}, timeout=self.settings.startup_timeout_sec, return_when=asyncio.FIRST_COMPLETED)
        if exchange not in done:
            probe.cancelled = True  # the probe is internal: never re-queue it
            exchange.cancel()
            if reader_task not in done:
                self.kill_now("the verification generate did not finish in time")
            raise await self._death_reason()
        kind, payload = probe.events.get_nowait()
        if kind == "error":
            probe.cancelled = True
            self.kill_now(f"verification generate failed: {payload.message}")
            raise await self._death_reason()
        self.verified = True
        self.model.record_event("worker_ready", self, f"pid {self.pid}, loaded in {self.load_ms or 0:.1f} ms, verified")
        self.model.on_worker_state(self)

    async def _serve(self) -> None:
        while not self._stop.is_set():
            req = await self.model.queue.take(self._begin)
            await self._wait_answer()
            self.model.on_request_finished(self, req)

    async def _exchange(self, req: GenerationRequest) -> None:
        """Send one request and wait until the worker answered it (done or error)."""
        self._begin(req)
        await self._wait_answer()

    def _begin(self, req: GenerationRequest) -> None:
        """Take charge of `req` and send it to the worker process (synchronous: the
        queue calls it the moment it hands the request over)."""
        self._current = req
        self._current_done = asyncio.get_running_loop().create_future()
        now = self._clock()
        req.started_at = now
        self._last_progress = now
        if self.state is WorkerState.READY:
            self._set(WorkerState.BUSY)
        if req.kind == "embed":
            self._send(protocol.encode(MsgType.EMBED, req.id, input=req.params["input"]))
        else:
            # params were validated by the HTTP layer: prompt or messages, and sampling keys
            self._send(protocol.encode(MsgType.GENERATE, req.id, stream=req.stream, **req.params))

    async def _wait_answer(self) -> None:
        if self._current_done is not None:  # None: the worker ended and settled it already
            await self._current_done
        self._current = None
        self._current_done = None
        if self.state is WorkerState.BUSY:
            self._set(WorkerState.READY)

    async def _watchdog(self) -> None:
        s = self.settings
        tick = max(0.05, min(1.0, s.health_interval_sec, s.hang_timeout_sec / 4))
        busy_ping = max(0.05, min(s.health_interval_sec, s.hang_timeout_sec / 4))
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            busy = self.state is WorkerState.BUSY
            if busy and now - self._last_progress > s.hang_timeout_sec:
                self.kill_now(f"hung: no token progress for {now - self._last_progress:.1f}s (llm_service.hang_timeout_sec={s.hang_timeout_sec:g})")
                return
            if self._ping_sent_at is not None and now - self._ping_sent_at > s.hang_timeout_sec:
                self.kill_now(f"hung: no answer to a ping for {now - self._ping_sent_at:.1f}s")
                return
            interval = busy_ping if busy else s.health_interval_sec
            if self._ping_sent_at is None and now - self._last_ping >= interval:
                self._last_ping = self._ping_sent_at = now
                self._send(protocol.encode(MsgType.PING, None))

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
            req = self._current
            if req is not None and frame["id"] == req.id:
                self._last_progress = now
                if req.stream and frame.get("text"):
                    req.emit_token(frame["text"])
        elif kind == MsgType.DONE or (kind == MsgType.ERROR and frame["id"] is not None):
            self._on_request_end(frame)
        elif kind == MsgType.PONG:
            self._ping_sent_at = None
            ago = frame.get("last_token_at")
            if ago is None:
                ago = frame.get("busy_since")
            if self.state is WorkerState.BUSY and ago is not None:
                self._last_progress = max(self._last_progress, now - float(ago))
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
        req = self._current
        if req is None or frame["id"] != req.id:
            return  # a late answer for a request already settled elsewhere
        if frame["type"] == MsgType.DONE:
            if frame.get("finish_reason") == "cancelled":
                self.model.requests_cancelled += 1
            speed = (frame.get("timings") or {}).get("predicted_per_second")
            if speed and not req.internal and frame.get("finish_reason") != "cancelled":
                self.model.record_speed(float(speed))
            result = {
                "text": frame.get("text", ""),
                "finish_reason": frame.get("finish_reason"),
                "usage": frame.get("usage") or {},
                "timings": frame.get("timings") or {},
            }
            if "embeddings" in frame:
                result["embeddings"] = frame["embeddings"]
            req.finish(result)
        else:
            message = frame.get("message") or "the engine failed"
            if frame.get("kind") == "bad_request":
                req.fail(ApiError(400, "invalid_request_error", "invalid_request", message))
            else:
                req.fail(server_error("engine_error", message, stderr=self.stderr_tail[-2000:]))
        if self._current_done is not None and not self._current_done.done():
            self._current_done.set_result(None)

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            line = await stream.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)
                log.debug("worker %s stderr: %s", self.id, text)

    # ---- endings --------------------------------------------------------------------

    async def _death_reason(self) -> _Exit:
        proc = self._proc
        assert proc is not None
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout=self.settings.stop_timeout_sec)
        except asyncio.TimeoutError:
            proc.kill()
            rc = await proc.wait()
        self.last_exit = _describe_exit(rc)
        if self._kill_reason:
            return _Exit("crash", self._kill_reason)
        if rc == protocol.EXIT_BOOT_ERROR:
            return _Exit("boot", self._boot_error or f"the worker could not load the model ({self.last_exit})")
        tail = f"; stderr: {self._stderr[-1]}" if self._stderr else ""
        return _Exit("crash", f"worker {self.last_exit}{tail}")

    def _settle_current(self, reason: str) -> None:
        """The request in hand when the worker ended: retry it, or end it honestly."""
        req, self._current = self._current, None
        if self._current_done is not None and not self._current_done.done():
            self._current_done.set_result(None)
        self._current_done = None
        if req is None or req.finished or req.cancelled:
            return
        req.attempts += 1
        if req.streamed:
            req.fail(server_error("worker_crashed", f"the worker died after part of the reply was streamed; the reply is incomplete ({reason})"))
        elif req.attempts >= MAX_ATTEMPTS:
            req.fail(server_error("worker_crashed", f"the request was tried {req.attempts} times and each worker died ({reason})", stderr=self.stderr_tail[-2000:]))
        else:
            log.info("worker %s: re-queueing %s after the worker ended (%s)", self.id, req.id, reason)
            self.model.queue.put_front(req)

    async def _reap(self) -> None:
        """Make sure the process is gone: shutdown frame, then SIGTERM, then SIGKILL."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if self.state.alive and self.state is not WorkerState.DRAINING:
                self._set(WorkerState.DRAINING)
            self._send(protocol.encode(MsgType.SHUTDOWN, None))
            await stop_process(proc, 2.0, self.settings.stop_timeout_sec)
            if self.last_exit is None or proc.returncode is not None:
                self.last_exit = _describe_exit(proc.returncode)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.pid = None


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"
