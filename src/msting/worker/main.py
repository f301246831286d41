"""The worker process: one loaded model, served over an inherited socket.

Started by the daemon as ``python -m msting.worker --fd FD --spec JSON`` where FD is
the worker end of a ``socketpair`` (passed with ``pass_fds``) and JSON is::

    {"name": str, "path": str, "n_ctx": int, "n_threads": int | null,
     "n_gpu_layers": int, "seed": int | null,
     "embedding": bool (default false), "chat_format": str | null (default null)}

Life cycle: send ``hello`` {pid} at once, load the model, send ``ready`` {model,
load_ms} (or ``error`` kind "boot" and exit 3), then serve frames until ``shutdown``
or EOF on the socket (both exit 0).

A warm spare (``--spare`` instead of ``--spec``) imports llama_cpp first and then
waits, silent, for one ``load`` {spec} frame; from there it is the life cycle above
(``hello``, load, ``ready``). ``shutdown`` or EOF while it waits exits 0. The daemon
keeps one spare so that a restart, a switch or an on-demand load does not pay for the
interpreter start and ``import llama_cpp`` (about 0.4 s) while requests wait.

Threads: the main thread reads frames and answers ``ping`` at once; one job thread
at a time runs the engine (a ``generate`` or an ``embed``). Both write frames, so
writes go through one lock. Nothing is printed to stdout; stderr is the daemon's log
capture.

Whatever a frame holds, the worker answers and keeps serving: a frame it cannot serve
is an ``error`` kind ``bad_request``; a Python exception while handling a frame or
running a job is logged to stderr with its traceback under an error id
(``err-<hex>``) and answered with an ``error`` (kind ``engine``) that names the id,
never the exception's text.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Callable

from msting.timeslice import JOB_SLICE_US, set_time_slice
from msting.worker import params, protocol
from msting.worker.failpoints import Failpoints
from msting.worker.params import BadRequest
from msting.worker.protocol import (
    EXIT_BOOT_ERROR,
    EXIT_OK,
    MAX_FRAME_BYTES,
    MsgType,
    ProtocolError,
)

# A streamed token frame is sent when at least this long has passed since the
# previous one; faster pieces are coalesced into the next frame. The first token goes
# out at once. 10 ms (100 frames/s, smooth to a reader) cut the daemon's CPU per
# stream by more than half against 2 ms in bench/overhead.py.
TOKEN_COALESCE_S = 0.010
# How long shutdown/EOF waits for a cancelled generation to wind down.
_JOIN_TIMEOUT_S = 10.0


def _log(message: str) -> None:
    try:
        print(f"msting-worker[{os.getpid()}]: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _internal_error(exc: BaseException, where: str) -> str:
    """Log `exc` with its traceback under a new error id; the message for the error frame."""
    error_id = f"err-{uuid.uuid4().hex[:12]}"
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    _log(f"internal error {error_id} {where}: {exc.__class__.__name__}: {exc}")
    for line in lines:
        _log(f"  {line}")
    return f"internal error in the worker; see the daemon log, error id {error_id}"


class Connection:
    """The worker end of the socketpair: buffered frame reads, locked frame writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=1 << 16)
        self._wlock = threading.Lock()
        self.closed = False

    def send(self, type: MsgType, id: str | None = None, **fields: Any) -> bool:
        data = protocol.encode(type, id, **fields)
        with self._wlock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                # the daemon end is gone; the reader will see EOF and exit
                self.closed = True
                return False

    def read_line(self) -> bytes | None:
        """One raw line; None at EOF. Over-long lines are consumed and raise."""
        try:
            line = self._reader.readline(MAX_FRAME_BYTES + 1)
        except OSError:
            return None
        if not line:
            return None
        if len(line) > MAX_FRAME_BYTES and not line.endswith(b"\n"):
            # discard the rest of the over-long frame, then report it
            while True:
                try:
                    rest = self._reader.readline(MAX_FRAME_BYTES)
                except OSError:
                    return None
                if not rest or rest.endswith(b"\n"):
                    break
            raise ProtocolError(f"frame is over the {MAX_FRAME_BYTES}-byte limit")
        return line

    def close(self) -> None:
        with self._wlock:
            self.closed = True
        for closer in (self._reader.close, self.sock.close):
            try:
                closer()
            except OSError:
                pass


class WorkerServer:
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
        while True:
            try:
                line = self.conn.read_line()
            except ProtocolError as exc:
                self.conn.send(MsgType.ERROR, None, kind="protocol", message=str(exc))
                continue
            if line is None:
                self._stop_job()
                return EXIT_OK
            try:
                frame = protocol.decode(line)
            except ProtocolError as exc:
                fid = _maybe_id(line)
                self._send_error(fid, _undecodable_kind(line, fid), str(exc))
                continue
            try:
                if self._handle(frame):
                    self._stop_job()
                    return EXIT_OK
            except Exception as exc:  # a bug in frame handling: answer it, keep serving
                message = _internal_error(exc, f"handling a {frame['type']!r} frame")
                self._send_error(frame["id"], "engine", message)

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
            message = _internal_error(exc, f"reading a {frame['type']!r} frame")
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
                    self._send_error(req_id, "engine", _internal_error(exc, f"answering request {req_id!r}"))
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
            self._send_error(req_id, "engine", _internal_error(exc, f"running request {req_id!r}"))
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


_ID_RE = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')
_TYPE_RE = re.compile(rb'"type"\s*:\s*"([a-z]{1,16})"')


def _maybe_id(line: bytes) -> str | None:
    """Best effort: the id of a frame that failed validation, so the error can be routed
    (also from a line that is not JSON at all: a request left unanswered would look
    like a hung worker to the daemon)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        m = _ID_RE.search(line)
        return m.group(1).decode("utf-8", "replace") if m else None
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        return obj["id"]
    return None


def _undecodable_kind(line: bytes, fid: str | None) -> str:
    """A generate or embed frame with an id whose content cannot be decoded (NaN,
    a 6000-digit number, deep nesting) is a request the worker cannot serve:
    ``bad_request``; anything else that fails to decode is ``protocol``."""
    if fid is not None:
        m = _TYPE_RE.search(line)
        if m is not None and m.group(1) in (b"generate", b"embed"):
            return "bad_request"
    return "protocol"


def _parse_spec(raw: str) -> dict[str, Any]:
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"--spec is not valid JSON: {exc}") from None
    return params.parse_spec(spec)


def _await_load(conn: Connection) -> dict[str, Any] | None:
    """A spare's wait for its model: the ``load`` frame, or None on ``shutdown``/EOF.
    Anything else is answered with a protocol error."""
    while True:
        try:
            line = conn.read_line()
        except ProtocolError as exc:
            conn.send(MsgType.ERROR, None, kind="protocol", message=str(exc))
            continue
        if line is None:
            return None
        try:
            frame = protocol.decode(line)
        except ProtocolError as exc:
            conn.send(MsgType.ERROR, _maybe_id(line), kind="protocol", message=str(exc))
            continue
        if frame["type"] == MsgType.LOAD:
            return frame
        if frame["type"] == MsgType.SHUTDOWN:
            return None
        conn.send(
            MsgType.ERROR, frame["id"], kind="protocol",
            message=f"a spare worker has no model yet; it accepts only 'load', not {frame['type']!r}",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msting.worker", add_help=True)
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--spec", help="model spec as a JSON object")
    which.add_argument("--spare", action="store_true", help="import the engine, then wait for a 'load' frame")
    args = parser.parse_args(argv)

    # The daemon owns this process's life cycle (shutdown frame, EOF, SIGTERM); a
    # Ctrl-C in the daemon's terminal must not kill workers behind its back.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (tests calling main() in-process)
        pass

    # This thread (frames, pings) runs with the default time slice; the job thread asks
    # for a long one when it starts. The daemon's event loop keeps its short slice to
    # itself (msting.timeslice), except at a negative nice value: then it is reset here.
    set_time_slice(None)

    try:
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        _log(f"cannot use fd {args.fd} as a socket: {exc}")
        return EXIT_BOOT_ERROR
    sock.setblocking(True)
    conn = Connection(sock)

    backend_error: Exception | None = None
    if args.spare:
        try:
            from msting.worker.engine import import_backend

            import_backend()
            gc.collect()  # while nobody waits: the freeze after the load is then quick
            gc.freeze()
        except Exception as exc:  # reported as the boot error of the model it gets
            backend_error = exc
        load = _await_load(conn)
        if load is None:
            conn.close()
            return EXIT_OK
    conn.send(MsgType.HELLO, None, pid=os.getpid())

    engine = None
    try:
        if backend_error is not None:
            raise backend_error
        spec = params.parse_spec(load.get("spec")) if args.spare else _parse_spec(args.spec)
        from msting.worker.engine import Engine, import_backend

        import_backend()  # not part of load_ms: it is the same for every model
        engine = Engine(
            spec["path"],
            n_ctx=spec["n_ctx"],
            n_threads=spec["n_threads"],
            n_threads_batch=spec["n_threads"],
            n_gpu_layers=spec["n_gpu_layers"],
            seed=spec["seed"],
            embedding=spec["embedding"],
            chat_format=spec["chat_format"],
        )
        failpoints = Failpoints.from_env()
        failpoints.at_load()
        t0 = time.perf_counter()
        metadata = engine.load()
        load_ms = round((time.perf_counter() - t0) * 1000.0, 3)
    except Exception as exc:
        message = str(exc) or exc.__class__.__name__
        _log(f"boot failed: {message}")
        conn.send(MsgType.ERROR, None, kind="boot", message=message)
        conn.close()
        return EXIT_BOOT_ERROR

    # The engine, llama_cpp and numpy live as long as the process: keep them out of the
    # collector's sight, so a full collection never pauses a generation to walk them.
    gc.collect()
    gc.freeze()
    conn.send(MsgType.READY, None, model=metadata, load_ms=load_ms)
    server = WorkerServer(conn, engine, failpoints)
    code = server.serve()
    thread = server._thread
    conn.close()
    if thread is not None and thread.is_alive():
        # a job that ignored cancellation: do not let it block interpreter exit
        _log("job thread still running at exit; exiting hard")
        sys.stderr.flush()
        os._exit(code)
    engine.close()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
