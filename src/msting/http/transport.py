"""A response's head and the start of its body in one socket write.

uvicorn writes a response's status line and headers, then its body, as two writes: two
send() calls, and on a machine where waking the process at the other end is dear (a
virtual machine's loopback) the second costs as much as the first. `HeadHeldTransport`
holds a write that starts a response (its status line) until the next write, and sends
the two as one; a head whose body does not follow in the same turn of the event loop
(a stream still waiting for its first event) goes out alone at the next turn. Every
other write goes through at once, and the order of the bytes never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

STATUS_LINE = b"HTTP/1."


class HeadHeldTransport:
    """An asyncio transport, but a response's head waits for the write after it (at most
    one turn of the event loop). Everything but the writes is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            data, self._held = self._held + bytes(data), None
        elif bytes(data[:len(STATUS_LINE)]) == STATUS_LINE:
            self._held = bytes(data)
            asyncio.get_running_loop().call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            self._transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading, set_protocol ...
        return getattr(self._transport, name)


def with_head_held(base: type) -> type:
    """A subclass of uvicorn protocol class ``base`` whose writes go through a
    HeadHeldTransport."""

    class HeadHeld(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(HeadHeldTransport(transport))

    HeadHeld.__name__ = HeadHeld.__qualname__ = f"HeadHeld{base.__name__}"
    return HeadHeld
