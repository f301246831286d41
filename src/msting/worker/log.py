"""The worker's own log lines, on stderr (the daemon's log capture; nothing goes to
stdout), and the error ids under which internal errors are logged.

A Python exception while handling a frame or running a job is logged here with its
traceback under an error id (``err-<hex>``); the ``error`` frame the daemon gets
names the id, never the exception's text.
"""

from __future__ import annotations

import os
import sys
import traceback
import uuid


def log(message: str) -> None:
    try:
        print(f"msting-worker[{os.getpid()}]: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def internal_error(exc: BaseException, where: str) -> str:
    """Log `exc` with its traceback under a new error id; the message for the error frame."""
    error_id = f"err-{uuid.uuid4().hex[:12]}"
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    log(f"internal error {error_id} {where}: {exc.__class__.__name__}: {exc}")
    for line in lines:
        log(f"  {line}")
    return f"internal error in the worker; see the daemon log, error id {error_id}"
