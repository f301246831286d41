"""The worker's end of the daemon's socketpair: frames in, frames out.

The daemon passes the worker end of a ``socketpair`` as an inherited file descriptor
(``--fd``). Frames are newline-delimited JSON (:mod:`msting.worker.protocol`); reads
are buffered, and writes go through one lock, since both the main thread (frames,
pongs) and the job thread (tokens, results) write.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from typing import Any, Callable, Iterator

from msting.worker import protocol
from msting.worker.protocol import MAX_FRAME_BYTES, MsgType, ProtocolError


class Connection:
    """The worker end of the socketpair: buffered frame reads, locked frame writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=1 << 16)
        self._wlock = threading.Lock()
        self.closed = False

    @classmethod
    def inherited(cls, fd: int) -> Connection:
        """The connection over inherited file descriptor *fd*; OSError if it is not a socket."""
        sock = socket.socket(fileno=fd)
        sock.setblocking(True)
        return cls(sock)

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

    def frames(self, undecodable: Callable[[bytes, ProtocolError], None]) -> Iterator[dict[str, Any]]:
        """The decoded frames, until EOF. An over-long frame is answered here (an
        ``error`` kind ``protocol``, with no id to route it to); a line that does not
        decode is handed to *undecodable* with the reason, and reading goes on."""
        while True:
            try:
                line = self.read_line()
            except ProtocolError as exc:
                self.send(MsgType.ERROR, None, kind="protocol", message=str(exc))
                continue
            if line is None:
                return
            try:
                frame = protocol.decode(line)
            except ProtocolError as exc:
                undecodable(line, exc)
                continue
            yield frame

    def close(self) -> None:
        with self._wlock:
            self.closed = True
        for closer in (self._reader.close, self.sock.close):
            try:
                closer()
            except OSError:
                pass


_ID_RE = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')


def frame_id(line: bytes) -> str | None:
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
