"""The worker's job dispatcher: the frames of a loaded worker, one job at a time.

Threads: the main thread reads frames (:meth:`WorkerServer.serve`) and answers
``ping`` at once; one long-lived job thread runs the engine, one ``generate`` or
``embed`` at a time (another one meanwhile is refused as ``busy``); ``cancel`` stops
the job in hand. Both threads write frames (:class:`msting.worker.transport.Connection`
locks its writes).

Whatever a frame holds, the worker answers and keeps serving: a frame it cannot serve
is an ``error`` kind ``bad_request``; a Python exception while handling a frame or
running a job is logged (:func:`msting.worker.log.internal_error`) and answered with
an ``error`` kind ``engine`` that names the error id, never the exception's text.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from typing import Any, Callable

from msting.timeslice import JOB_SLICE_US, set_time_slice
from msting.worker import params
from msting.worker.failpoints import Failpoints
from msting.worker.log import internal_error
from msting.worker.params import BadRequest
from msting.worker.protocol import EXIT_OK, MsgType, ProtocolError
from msting.worker.transport import Connection, frame_id

# A streamed token frame is sent when at least this long has passed since the
# previous one; faster pieces are coalesced into the next frame. The first token goes
# out at once. 10 ms (100 frames/s, smooth to a reader) cut the daemon's CPU per
# stream by more than half against 2 ms in bench/overhead.py.
TOKEN_COALESCE_S = 0.010
# How long shutdown/EOF waits for a cancelled generation to wind down.
_JOIN_TIMEOUT_S = 10.0


class WorkerServer:
    """A loaded worker's frames: ping, generate, embed, cancel, shutdown."""

    def __init__(self, conn: Connection, engine: Any, failpoints: Failpoints | None = None) -> None:
        self.conn = conn
        self.engine = engine
        self.failpoints = failpoints or Failpoints()
        self._state = threading.Lock()
        self._current_id: str | None = None
        self._cancel: threading.Event | None = None
        self._busy_since: float | None = None
        self._last_token_at: float | None = None
        # One long-lived job thread fed by a queue: starting a thread per request cost
        # ~0.25 ms of time to first token on a 2-core machine.
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._job_loop, name="jobs", daemon=True)
        self._thread.start()

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
        self._stop_job()
        return EXIT_OK

    def job_thread_alive(self) -> bool:
        """After :meth:`serve`: True when a job ignored cancellation and still runs."""
        return self._thread.is_alive()

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
            self._start_job(frame, params.parse_generate, self._generate)
        elif ftype == MsgType.EMBED:
            self._start_job(frame, params.parse_embed, self._embed)
        elif ftype == MsgType.CANCEL:
            with self._state:
                if self._cancel is not None and fid is not None and fid == self._current_id:
                    self._cancel.set()
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
            busy = self._current_id is not None
            since = self._busy_since
            last = self._last_token_at
        return {
            "busy": busy,
            "busy_since": round(now - since, 6) if busy and since is not None else None,
            "last_token_at": round(now - last, 6) if busy and last is not None else None,
        }

    def _start_job(self, frame: dict[str, Any], parse: Callable, work: Callable) -> None:
        """Validate a generate/embed frame and run *work* on the job thread, or
        answer at once: bad_request, or busy while another job runs."""
        fid = frame["id"]
        try:
            refusal = self._refusal(frame["type"])
            if refusal:
                raise BadRequest(refusal)
            args = parse(frame)
        except BadRequest as exc:
            self._send_error(fid, "bad_request", str(exc))
            return
        except Exception as exc:  # a frame the validation did not foresee: still not servable
            message = internal_error(exc, f"reading a {frame['type']!r} frame")
            self._send_error(fid, "bad_request", f"the worker cannot serve this {frame['type']} frame ({message})")
            return
        with self._state:
            if self._current_id is not None:
                busy_with = self._current_id
            else:
                busy_with = None
                event = threading.Event()
                self._current_id = fid
                self._cancel = event
                self._busy_since = time.monotonic()
                self._last_token_at = None
        if busy_with is not None:
            self.conn.send(
                MsgType.ERROR, fid, kind="busy",
                message=f"worker is busy with request {busy_with!r}",
            )
            return
        self._jobs.put((fid, work, args, event))

    def _stop_job(self) -> None:
        with self._state:
            if self._cancel is not None:
                self._cancel.set()
        self._jobs.put(None)  # the job thread ends after the current job
        if self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT_S)

    def _job_loop(self) -> None:
        # A long slice: whoever wakes up on this core while it decodes (the client
        # reading the stream, this process's frame reader) runs at once (msting.timeslice).
        set_time_slice(JOB_SLICE_US)
        while (job := self._jobs.get()) is not None:
            try:
                self._run_job(*job)
            except Exception as exc:  # never lose the job thread: the worker would stay busy forever
                req_id = job[0]
                self._finish(req_id)
                try:
                    self._send_error(req_id, "engine", internal_error(exc, f"answering request {req_id!r}"))
                except Exception:
                    pass

    # ---- job thread --------------------------------------------------------------

    def _finish(self, req_id: str) -> None:
        # cleared *before* the final frame goes out, so that a request sent by the
        # daemon right after it reads `done` never sees a stale "busy"
        with self._state:
            if self._current_id == req_id:
                self._current_id = None
                self._cancel = None
                self._busy_since = None
                self._last_token_at = None

    def _run_job(self, req_id: str, work: Callable, args: dict[str, Any], cancel: threading.Event) -> None:
        """Run *work* (which returns the fields of the `done` frame) and answer."""
        from msting.worker.engine import RequestError

        send = self.conn.send
        try:
            fields = work(req_id, args, cancel)
        except RequestError as exc:  # e.g. the prompt does not fit the context
            self._finish(req_id)
            self._send_error(req_id, "bad_request", str(exc))
            return
        except Exception as exc:  # the worker keeps serving
            self._finish(req_id)
            self._send_error(req_id, "engine", internal_error(exc, f"running request {req_id!r}"))
            return
        self._finish(req_id)
        try:
            send(MsgType.DONE, req_id, **fields)
        except ProtocolError as exc:  # e.g. too many embeddings for one frame
            self._send_error(req_id, "bad_request", f"the answer does not fit in one frame ({exc}); ask for less at a time")

    def _generate(self, req_id: str, args: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
        from msting.worker.engine import GenerationResult

        stream = args.pop("stream")
        send = self.conn.send
        parts: list[str] = []
        pending: list[str] = []
        pending_n = 0
        last_sent: float | None = None
        result: GenerationResult | None = None
        self.failpoints.at_generate(args)
        for event in self.engine.generate(cancelled=cancel, **args):
            if isinstance(event, GenerationResult):
                result = event
                continue
            now = time.monotonic()
            with self._state:
                self._last_token_at = now
            if not stream:
                parts.append(event.text)
                continue
            pending.append(event.text)
            pending_n += event.n
            if last_sent is None or now - last_sent >= TOKEN_COALESCE_S:
                send(MsgType.TOKEN, req_id, text="".join(pending), n=pending_n)
                pending.clear()
                pending_n = 0
                last_sent = now
        if result is None:
            raise RuntimeError("the engine ended without a result")
        if pending:
            send(MsgType.TOKEN, req_id, text="".join(pending), n=pending_n)
        return {
            "text": "" if stream else "".join(parts),
            "finish_reason": result.finish_reason,
            "usage": result.usage,
            "timings": result.timings,
        }

    def _embed(self, req_id: str, args: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
        result = self.engine.embed(args["inputs"], cancelled=cancel)
        return {
            "embeddings": result.embeddings,
            "finish_reason": "cancelled" if result.cancelled else "stop",
            "usage": result.usage,
            "timings": result.timings,
        }


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
