"""The warm spare's wait for its model (``python -m msting.worker --spare``).

A spare imports llama_cpp first (:func:`warm_up`) and then waits, silent, for one
``load`` {spec} frame (:func:`await_load`); from there it is a worker's usual life
cycle (``hello``, load, ``ready``; :mod:`msting.worker.main`). ``shutdown`` or EOF
while it waits exits 0. The daemon keeps one spare so that a restart, a switch or an
on-demand load does not pay for the interpreter start and ``import llama_cpp`` (about
0.4 s) while requests wait.
"""

from __future__ import annotations

import gc
from typing import Any

from msting.worker.protocol import MsgType, ProtocolError
from msting.worker.transport import Connection, frame_id


def warm_up() -> Exception | None:
    """Import the engine's backend now, while nobody waits. Returns what went wrong,
    to be reported as the boot error of the model the spare gets, or None."""
    try:
        from msting.worker.engine import import_backend

        import_backend()
        gc.collect()  # while nobody waits: the freeze after the load is then quick
        gc.freeze()
    except Exception as exc:
        return exc
    return None


def await_load(conn: Connection) -> dict[str, Any] | None:
    """A spare's wait for its model: the ``load`` frame, or None on ``shutdown``/EOF.
    Anything else is answered with a protocol error."""

    def undecodable(line: bytes, exc: ProtocolError) -> None:
        conn.send(MsgType.ERROR, frame_id(line), kind="protocol", message=str(exc))

    for frame in conn.frames(undecodable):
        if frame["type"] == MsgType.LOAD:
            return frame
        if frame["type"] == MsgType.SHUTDOWN:
            return None
        conn.send(
            MsgType.ERROR, frame["id"], kind="protocol",
            message=f"a spare worker has no model yet; it accepts only 'load', not {frame['type']!r}",
        )
    return None
