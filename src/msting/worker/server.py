"""The worker's job dispatcher: the frames of a loaded worker, up to one job per slot.

Threads: the main thread reads frames (:meth:`WorkerServer.serve`), answers ``ping``
at once, validates ``generate`` and ``embed`` frames and hands them to the engine's
decode loop (:mod:`msting.worker.batch`), which serves up to ``parallel`` jobs at once
(one more is refused as ``busy``); ``cancel`` stops the job with that id at the
loop's next step. The loop's thread writes each job's frames through its sink
(:class:`_GenerateSink`, :class:`_EmbedSink`); :class:`msting.worker.transport.Connection`
locks its writes.

Whatever a frame holds, the worker answers and keeps serving: a frame it cannot serve
is an ``error`` kind ``bad_request``; a Python exception while handling a frame or
running a job is logged (:func:`msting.worker.log.internal_error`) and answered with
an ``error`` kind ``engine`` that names the error id, never the exception's text.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from msting.worker import params
from msting.worker.failpoints import Failpoints
from msting.worker.log import internal_error
from msting.worker.params import BadRequest
from msting.worker.protocol import EXIT_OK, MsgType, ProtocolError
from msting.worker.transport import Connection, frame_id

# A streamed token frame is sent when at least this long has passed since the
# previous one of the same job; faster pieces are coalesced into the next frame. The
# first token goes out at once. 10 ms (100 frames/s, smooth to a reader) cut the
# daemon's CPU per stream by more than half against 2 ms in bench/overhead.py.
TOKEN_COALESCE_S = 0.010
# How long shutdown/EOF waits for cancelled jobs to wind down.
_JOIN_TIMEOUT_S = 10.0


@dataclass(eq=False)
class _Job:
    kind: str  # "generate" | "embed"
    started: float  # time.monotonic()
    cancel: threading.Event = field(default_factory=threading.Event)


class WorkerServer:
    """A loaded worker's frames: ping, generate, embed, cancel, shutdown."""

    def __init__(self, conn: Connection, engine: Any, failpoints: Failpoints | None = None) -> None:
        self.conn = conn
        self.engine = engine
        self.failpoints = failpoints or Failpoints()
        self.slots = int(getattr(engine, "parallel", 1))
        self._state = threading.Lock()
        self._jobs: dict[str, _Job] = {}  # running, by request id
        self._stopped_cleanly = True

    # ---- main thread -------------------------------------------------------------

    def serve(self) -> int:
        """Serve frames until ``shutdown`` or EOF; the exit code (0)."""
        for frame in self.conn.frames(self._undecodable):
            try:
                if self._handle(frame):
                    break
            except Exception as exc:  # a bug in frame handling: answer it, keep serving
                message = internal_error(exc, f"handling a {frame['type']!r} frame")
                self._send_error(frame["id"], "engine", message)
        self._stop_jobs()
        return EXIT_OK

    def job_thread_alive(self) -> bool:
        """After :meth:`serve`: True when the decode loop ignored cancellation and still runs."""
        return not self._stopped_cleanly

    def _undecodable(self, line: bytes, exc: ProtocolError) -> None:
        fid = frame_id(line)
        self._send_error(fid, _undecodable_kind(line, fid), str(exc))

    def _send_error(self, fid: str | None, kind: str, message: str) -> None:
        """An error frame, whatever happens: a message that cannot be encoded is replaced."""
        try:
            self.conn.send(MsgType.ERROR, fid, kind=kind, message=message)
        except ProtocolError:
            self.conn.send(MsgType.ERROR, fid, kind=kind, message="the error message could not be encoded")

    def _handle(self, frame: dict[str, Any]) -> bool:
        """Handle one frame; True means shut down."""
        ftype, fid = frame["type"], frame["id"]
        if ftype == MsgType.PING:
            self.conn.send(MsgType.PONG, fid, **self._status())
        elif ftype == MsgType.GENERATE:
            self._start_job(frame, params.parse_generate)
        elif ftype == MsgType.EMBED:
            self._start_job(frame, params.parse_embed)
        elif ftype == MsgType.CANCEL:
            with self._state:
                job = self._jobs.get(fid) if fid is not None else None
            if job is not None:
                job.cancel.set()
        elif ftype == MsgType.SHUTDOWN:
            return True
        else:
            self.conn.send(
                MsgType.ERROR, fid, kind="protocol",
                message=f"a worker does not accept {ftype!r} frames",
            )
        return False

    def _refusal(self, ftype: str) -> str | None:
        """Why this worker does not serve *ftype* frames at all, or None."""
        engine = self.engine
        if ftype == MsgType.EMBED and not engine.embedding:
            return "this worker was not started for embeddings"
        if ftype == MsgType.GENERATE and not engine.serves_generate:
            return (
                f"this worker serves embeddings only (the model declares "
                f"{engine.pooling!r} pooling)"
            )
        return None

    def _status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._state:
            busy = len(self._jobs)
            oldest = min((job.started for job in self._jobs.values()), default=None)
        last = self.engine.last_token_at
        # a token from before the oldest running job started says nothing about now
        if last is not None and (oldest is None or last < oldest):
            last = None
        return {
            "busy": busy > 0,
            "busy_since": round(now - oldest, 6) if oldest is not None else None,
            "last_token_at": round(now - last, 6) if last is not None else None,
            "slots": self.slots,
            "slots_busy": busy,
        }

    def _start_job(self, frame: dict[str, Any], parse: Callable) -> None:
        """Validate a generate/embed frame and start it in the engine's decode loop,
        or answer at once: bad_request, or busy while every slot is taken."""
        fid, ftype = frame["id"], frame["type"]
        try:
            refusal = self._refusal(ftype)
            if refusal:
                raise BadRequest(refusal)
            args = parse(frame)
        except BadRequest as exc:
            self._send_error(fid, "bad_request", str(exc))
            return
        except Exception as exc:  # a frame the validation did not foresee: still not servable
            message = internal_error(exc, f"reading a {ftype!r} frame")
            self._send_error(fid, "bad_request", f"the worker cannot serve this {ftype} frame ({message})")
            return
        job = _Job(ftype, time.monotonic())
        with self._state:
            busy_with = sorted(self._jobs) if len(self._jobs) >= self.slots else None
            duplicate = fid in self._jobs
            if busy_with is None and not duplicate:
                self._jobs[fid] = job
        if duplicate:
            self._send_error(fid, "bad_request", f"a request with id {fid!r} is already running")
            return
        if busy_with is not None:
            shown = ", ".join(repr(i) for i in busy_with[:4]) + (", ..." if len(busy_with) > 4 else "")
            what = f"request {shown}" if len(busy_with) == 1 else f"{len(busy_with)} requests ({shown})"
            self.conn.send(MsgType.ERROR, fid, kind="busy", message=f"worker is busy with {what}")
            return
        from msting.worker.engine import RequestError

        try:
            if ftype == MsgType.GENERATE:
                self.failpoints.at_generate(args)
                stream = args.pop("stream")
                self.engine.start_generate(_GenerateSink(self, fid, stream), job.cancel, **args)
            else:
                self.engine.start_embed(_EmbedSink(self, fid), job.cancel, args["inputs"])
        except RequestError as exc:  # e.g. the prompt does not fit the context
            self._finish(fid)
            self._send_error(fid, "bad_request", str(exc))
        except Exception as exc:  # the worker keeps serving
            self._finish(fid)
            self._send_error(fid, "engine", internal_error(exc, f"starting request {fid!r}"))

    def _stop_jobs(self) -> None:
        with self._state:
            for job in self._jobs.values():
                job.cancel.set()
        self._stopped_cleanly = self.engine.stop(_JOIN_TIMEOUT_S)

    # ---- the decode loop's thread ------------------------------------------------

    def _finish(self, req_id: str) -> None:
        # cleared *before* the final frame goes out, so that a request sent by the
        # daemon right after it reads `done` never sees a stale "busy"
        with self._state:
            self._jobs.pop(req_id, None)

    def _done(self, req_id: str, fields: dict[str, Any]) -> None:
        self._finish(req_id)
        try:
            self.conn.send(MsgType.DONE, req_id, **fields)
        except ProtocolError as exc:  # e.g. too many embeddings for one frame
            self._send_error(req_id, "bad_request", f"the answer does not fit in one frame ({exc}); ask for less at a time")

    def _failed(self, req_id: str, exc: BaseException) -> None:
        self._finish(req_id)
        try:
            self._send_error(req_id, "engine", internal_error(exc, f"running request {req_id!r}"))
        except Exception:
            pass


class _GenerateSink:
    """One generate job's frames: its pieces (coalesced when streamed), then done."""

    def __init__(self, server: WorkerServer, req_id: str, stream: bool) -> None:
        self._server = server
        self._req_id = req_id
        self._stream = stream
        self._parts: list[str] = []  # all text (not streamed), or not yet sent (streamed)
        self._pending_n = 0
        self._last_sent: float | None = None

    def piece(self, text: str, n: int) -> None:
        self._parts.append(text)
        if not self._stream:
            return
        self._pending_n += n
        now = time.monotonic()
        if self._last_sent is None or now - self._last_sent >= TOKEN_COALESCE_S:
            self._flush()
            self._last_sent = now

    def _flush(self) -> None:
        self._server.conn.send(MsgType.TOKEN, self._req_id, text="".join(self._parts), n=self._pending_n)
        self._parts.clear()
        self._pending_n = 0

    def finish(self, result: Any) -> None:
        if self._stream and self._parts:
            self._flush()
        self._server._done(self._req_id, {
            "text": "" if self._stream else "".join(self._parts),
            "finish_reason": result.finish_reason,
            "usage": result.usage,
            "timings": result.timings,
        })

    def fail(self, exc: BaseException) -> None:
        self._server._failed(self._req_id, exc)


class _EmbedSink:
    def __init__(self, server: WorkerServer, req_id: str) -> None:
        self._server = server
        self._req_id = req_id

    def piece(self, text: str, n: int) -> None:  # pragma: no cover - embeddings have no pieces
        pass

    def finish(self, result: Any) -> None:
        self._server._done(self._req_id, {
            "embeddings": result.embeddings,
            "finish_reason": "cancelled" if result.cancelled else "stop",
            "usage": result.usage,
            "timings": result.timings,
        })

    def fail(self, exc: BaseException) -> None:
        self._server._failed(self._req_id, exc)


_TYPE_RE = re.compile(rb'"type"\s*:\s*"([a-z]{1,16})"')
_JOB_TYPES = (MsgType.GENERATE.value.encode(), MsgType.EMBED.value.encode())


def _undecodable_kind(line: bytes, fid: str | None) -> str:
    """A generate or embed frame with an id whose content cannot be decoded (NaN,
    a 6000-digit number, deep nesting) is a request the worker cannot serve:
    ``bad_request``; anything else that fails to decode is ``protocol``."""
    if fid is not None:
        m = _TYPE_RE.search(line)
        if m is not None and m.group(1) in _JOB_TYPES:
            return "bad_request"
    return "protocol"
