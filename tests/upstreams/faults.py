"""The fault a stand-in has been told to show, and the pieces that carry it out.

A fault is set with ``POST /_control/fault`` (see ``Fault.from_json`` for the fields) and
applies to the requests it matches (by default the generation and embedding routes; with
``health: true`` the model-list/health routes too; with ``paths`` exactly those paths) until
``count`` of them have had it, or until ``DELETE /_control/fault``. Modes:

``status``      answer ``status`` (500 unless told) in the protocol's error shape, with a
                ``Retry-After`` header when ``retry_after`` is given;
``hang``        read the request and never answer; the handler returns when the client
                goes away;
``cut``         stream ``after_chunks`` content chunks (after the protocol's preamble: the
                headers; Anthropic's message_start, content_block_start and ping), then close
                the connection without the end marker (OpenAI ``[DONE]``, Ollama's
                ``done: true`` line, Anthropic's message_stop). A reply that is not streamed
                gets its headers (Content-Length of the whole body) and half of its body;
``slow_first``  wait ``delay`` seconds before the first content chunk (the headers and the
                preamble go out at once); a reply that is not streamed waits before its
                headers;
``drop``        close the connection without any response.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Iterable

MODES = ("status", "hang", "cut", "slow_first", "drop")
DEFAULT_STATUS = 500
DEFAULT_DELAY = 1.0
FIELDS = {"mode", "status", "retry_after", "count", "after_chunks", "delay", "paths", "health", "message"}


class FaultError(ValueError):
    """A control request that does not describe a fault."""


def _number(value: Any, name: str, *, integer: bool = False, minimum: float = 0) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value < minimum:
        kind = "an integer" if integer else "a number"
        raise FaultError(f"{name} must be {kind} >= {minimum:g}, not {value!r}")
    return value


@dataclass
class Fault:
    mode: str
    status: int = DEFAULT_STATUS
    retry_after: float | None = None
    count: int | None = None  # how many matching requests it applies to; None: until cleared
    after_chunks: int = 0
    delay: float = DEFAULT_DELAY
    paths: list[str] | None = None
    health: bool = False
    message: str | None = None
    applied: int = 0  # how many requests have had it so far

    @classmethod
    def from_json(cls, body: Any) -> "Fault":
        if not isinstance(body, dict):
            raise FaultError("the body must be a JSON object")
        unknown = set(body) - FIELDS
        if unknown:
            raise FaultError(f"unknown fields {sorted(unknown)}; known: {sorted(FIELDS)}")
        mode = body.get("mode")
        if mode not in MODES:
            raise FaultError(f"mode must be one of {list(MODES)}, not {mode!r}")
        fault = cls(mode=mode)
        if body.get("status") is not None:
            fault.status = _number(body["status"], "status", integer=True, minimum=100)
            if fault.status > 599:
                raise FaultError(f"status must be an HTTP status, not {fault.status}")
        if body.get("retry_after") is not None:
            fault.retry_after = _number(body["retry_after"], "retry_after")
        if body.get("count") is not None:
            fault.count = _number(body["count"], "count", integer=True, minimum=1)
        if body.get("after_chunks") is not None:
            fault.after_chunks = _number(body["after_chunks"], "after_chunks", integer=True)
        if body.get("delay") is not None:
            fault.delay = float(_number(body["delay"], "delay"))
        if body.get("paths") is not None:
            paths = body["paths"]
            if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
                raise FaultError("paths must be a list of paths starting with /")
            fault.paths = list(paths)
        if body.get("health") is not None:
            if not isinstance(body["health"], bool):
                raise FaultError("health must be true or false")
            fault.health = body["health"]
        if body.get("message") is not None:
            if not isinstance(body["message"], str):
                raise FaultError("message must be a string")
            fault.message = body["message"]
        return fault

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def error_message(self) -> str:
        return self.message or f"stand-in fault: HTTP {self.status}"

    def retry_after_header(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        value = self.retry_after
        return {"Retry-After": str(int(value)) if float(value).is_integer() else str(value)}


@dataclass
class FaultState:
    fault: Fault | None = None

    def set(self, fault: Fault) -> None:
        self.fault = fault

    def clear(self) -> None:
        self.fault = None

    def take(self, path: str, kind: str | None) -> Fault | None:
        """The fault for a request to `path` (`kind`: "work", "health" or None), counting it
        against the fault's `count`: a snapshot, valid after the fault is cleared."""
        fault = self.fault
        if fault is None:
            return None
        if fault.paths is not None:
            matches = path in fault.paths
        else:
            matches = kind == "work" or (kind == "health" and fault.health)
        if not matches:
            return None
        fault.applied += 1
        if fault.count is not None and fault.applied >= fault.count:
            self.fault = None
        return copy.copy(fault)

    def to_json(self) -> dict:
        return {"fault": self.fault.to_json() if self.fault else None}


# ---------------------------------------------------------------- connection handling
# The ASGI protocol has no message for "close the connection now". The stand-ins reach
# uvicorn's request cycle (the object whose bound method is the server's own `send`), which
# uvicorn's httptools and h11 implementations both give a `.transport` and a `.disconnected`
# flag: the transport is closed, then the handler waits for the flag, so that nothing the
# application sends afterwards (the end of a chunked body, a 500) reaches the wire.


class ConnectionAbort(Exception):
    """Raised when uvicorn's request cycle cannot be reached: uvicorn then closes a started
    response (and answers 500 to one not started)."""


class Connection:
    def __init__(self, raw_send: Any):
        self.cycle = getattr(raw_send, "__self__", None)
        transport = getattr(self.cycle, "transport", None)
        self.transport = transport if isinstance(transport, asyncio.BaseTransport) else None

    async def close(self, timeout: float = 5.0) -> None:
        """Close the client's connection now, whatever the response has sent so far (data
        already handed to the transport is flushed first; no end-of-body marker follows)."""
        if self.transport is None:
            raise ConnectionAbort("stand-in fault: connection closed")
        self.transport.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not getattr(self.cycle, "disconnected", True) and loop.time() < deadline:
            await asyncio.sleep(0.005)


async def wait_for_disconnect(receive: Any) -> None:
    """Return once the client has gone (the request body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def paced_stream(preamble: Iterable[bytes], chunks: Iterable[bytes], epilogue: Iterable[bytes], *,
                       fault: Fault | None, token_delay: float, connection: Connection | None) -> AsyncIterator[bytes]:
    """The body of a streamed reply: `preamble` at once, each content chunk after
    `token_delay` (the first after the fault's `delay` too when it is slow_first), then
    `epilogue` (which carries the protocol's end marker). A `cut` fault closes the connection
    after its `after_chunks` content chunks instead of going on."""
    for piece in preamble:
        yield piece
    slow = fault is not None and fault.mode == "slow_first"
    cut_after = fault.after_chunks if fault is not None and fault.mode == "cut" else None
    sent = 0
    for piece in chunks:
        if cut_after is not None and sent >= cut_after:
            break
        if slow and sent == 0:
            await asyncio.sleep(fault.delay)  # type: ignore[union-attr]
        if token_delay:
            await asyncio.sleep(token_delay)
        yield piece
        sent += 1
    if cut_after is not None:
        # let the chunks written so far reach the socket, then close without the end marker
        if connection is None:
            raise ConnectionAbort("stand-in fault: stream cut")
        await connection.close()
        return
    if slow and sent == 0:
        await asyncio.sleep(fault.delay)  # type: ignore[union-attr]
    for piece in epilogue:
        yield piece
