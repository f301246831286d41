"""The worker process: one loaded model, served over an inherited socket.

Started by the daemon as ``python -m msting.worker --fd FD --spec JSON`` where FD is
the worker end of a ``socketpair`` (passed with ``pass_fds``) and JSON is::

    {"name": str, "path": str, "n_ctx": int (each slot's), "n_threads": int | null
     (null: measured at load), "parallel": int (slots, default 1),
     "n_gpu_layers": int, "seed": int | null,
     "embedding": bool (default false), "chat_format": str | null (default null)}

Life cycle: send ``hello`` {pid} at once, load the model, send ``ready`` {model,
load_ms} (or ``error`` kind "boot" and exit 3), then serve frames
(:class:`msting.worker.server.WorkerServer`) until ``shutdown`` or EOF on the socket
(both exit 0).

With ``--spare`` instead of ``--spec``, the process is a warm spare
(:mod:`msting.worker.spare`): it imports llama_cpp, waits for a ``load`` {spec} frame,
and then follows the same life cycle.

This module is the process's boot: arguments, signals, the socket
(:mod:`msting.worker.transport`), the engine's load (:mod:`msting.worker.engine`,
failpoints from the environment) and the exit code. Nothing is printed to stdout;
stderr is the daemon's log capture (:mod:`msting.worker.log`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from typing import Any

from msting.timeslice import set_time_slice
from msting.worker import params, spare
from msting.worker.failpoints import Failpoints
from msting.worker.log import log
from msting.worker.protocol import EXIT_BOOT_ERROR, EXIT_OK, MsgType
from msting.worker.server import WorkerServer
from msting.worker.transport import Connection


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m msting.worker", add_help=True)
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--spec", help="model spec as a JSON object")
    which.add_argument("--spare", action="store_true", help="import the engine, then wait for a 'load' frame")
    return parser.parse_args(argv)


def _parse_spec(raw: str) -> dict[str, Any]:
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"--spec is not valid JSON: {exc}") from None
    return params.parse_spec(spec)


def _load_engine(spec: dict[str, Any]) -> tuple[Any, dict[str, Any], float, Failpoints]:
    """Load the model of a validated *spec*: (engine, its metadata, load_ms, failpoints).
    Any exception is the worker's boot error."""
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
        parallel=spec["parallel"],
    )
    failpoints = Failpoints.from_env()
    failpoints.at_load()
    t0 = time.perf_counter()
    metadata = engine.load()
    load_ms = round((time.perf_counter() - t0) * 1000.0, 3)
    return engine, metadata, load_ms, failpoints


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

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
        conn = Connection.inherited(args.fd)
    except OSError as exc:
        log(f"cannot use fd {args.fd} as a socket: {exc}")
        return EXIT_BOOT_ERROR

    backend_error: Exception | None = None
    if args.spare:
        backend_error = spare.warm_up()
        load = spare.await_load(conn)
        if load is None:
            conn.close()
            return EXIT_OK
    conn.send(MsgType.HELLO, None, pid=os.getpid())

    try:
        if backend_error is not None:
            raise backend_error
        spec = params.parse_spec(load.get("spec")) if args.spare else _parse_spec(args.spec)
        engine, metadata, load_ms, failpoints = _load_engine(spec)
    except Exception as exc:
        message = str(exc) or exc.__class__.__name__
        log(f"boot failed: {message}")
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
    conn.close()
    if server.job_thread_alive():
        # a job that ignored cancellation: do not let it block interpreter exit
        log("job thread still running at exit; exiting hard")
        sys.stderr.flush()
        os._exit(code)
    engine.close()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
