"""The WebSocket route (`/v1/ws`): streamed generations and live status for interactive clients.

Every message is a JSON object with a `type`:

client → daemon
  {"type": "generate", "id": "c1", "prompt": "..." | "messages": [...], "model"?, "max_tokens"?, "tools"?, ...}
  {"type": "cancel", "id": "c1"}
  {"type": "subscribe", "topics": ["status"]}      status pushes whenever something changes
daemon → client
  {"type": "token", "id": "c1", "text": "..."}
  {"type": "tool_call", "id": "c1", "tool_call": {"index", "id"?, "type"?, "function": {"name"?, "arguments"}}}
  {"type": "done", "id": "c1", "model", "finish_reason", "usage", "timings"}
  {"type": "error", "id": "c1" | null, "error": {"message", "type", "code"}}
  {"type": "status", "readiness": {...}, "models": [{"name", "type", "state", "queue_depth", "in_flight"}]}

Generations on one connection run concurrently; one task sends everything, in order.
Closing the connection cancels whatever it still had running.

When the daemon stops, the local generations drain as HTTP streams do (within
`drain_grace_sec`, then an `error` with code `shutting_down`); then `close_websockets`
ends what still runs on each connection (the same `shutting_down` error), sends what
is queued and closes it with code 1001 (going away), so that no open connection holds
the HTTP server's graceful shutdown.

Text and binary messages are parsed alike by the strict body parser
(msting.http.body: size, UTF-8, finite numbers, depth), so a message gets the same
answer as the same bytes posted to an HTTP route, as an `error` message; a bad message,
or an unexpected failure while handling one (an error id, logged), never closes the
connection.
"""

from __future__ import annotations

import asyncio
import json

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from msting.api import limits
from msting.api.errors import InvalidRequest, MstingError, Unavailable
from msting.api.events import Done, Failed, Token
from msting.api.tools import ToolCallDelta
from msting.http.body import parse_object
from msting.http.control import Control
from msting.http.errors import Fields, error_body, internal_error, shown
from msting.http.parsing import TOOL_KEYS, prompt_or_messages, request_meta
from msting.providers.base import Stream
from msting.providers.router import Router

GENERATE_KEYS = {"type", "id", "model", "prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed"} | TOOL_KEYS
STATUS_POLL_SEC = 0.25
GOING_AWAY = 1001  # the WebSocket close code: the server is going down


class Sessions:
    """The open connections of one app (`app.state.websockets`), for the daemon's stop."""

    def __init__(self) -> None:
        self.open: set[Session] = set()
        self.closing = False  # a connection accepted from now on is closed at once

    async def close_all(self, timeout: float) -> None:
        """End every open connection (see the module's doc); gives up after `timeout` s."""
        self.closing = True
        sessions = list(self.open)
        if sessions:
            await asyncio.wait([asyncio.create_task(s.go_away()) for s in sessions], timeout=timeout)


async def close_websockets(app, timeout: float) -> None:
    await app.state.websockets.close_all(timeout)


class Session:
    def __init__(self, ws: WebSocket, router: Router, control: Control):
        self.ws = ws
        self.router = router
        self.control = control
        self.outbox: asyncio.Queue[dict] = asyncio.Queue()
        self.running: dict[str, asyncio.Task] = {}
        self.status_task: asyncio.Task | None = None
        self.sender: asyncio.Task | None = None
        self.closing = False  # the daemon stops: no new generation, running ones end with shutting_down

    async def run(self, sessions: Sessions) -> None:
        await self.ws.accept()
        if sessions.closing:
            await self.ws.close(GOING_AWAY, "the daemon is shutting down")
            return
        sender = self.sender = asyncio.create_task(self._send_loop())
        sessions.open.add(self)
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                try:
                    self._handle(data)
                except Exception as exc:  # a bug must not end the connection
                    self._error(None, internal_error(exc, "WEBSOCKET /v1/ws message"))
        finally:
            sessions.open.discard(self)
            for task in [*self.running.values(), self.status_task, sender]:
                if task is not None:
                    task.cancel()

    async def go_away(self) -> None:
        """End the running generations (an error `shutting_down` each), send what is
        queued, then close with 1001."""
        self.closing = True
        if self.status_task is not None:
            self.status_task.cancel()
        running = list(self.running.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        self.outbox.put_nowait(None)  # the sender closes the connection after the last message
        if self.sender is not None:
            await asyncio.wait([self.sender])

    def _handle(self, data: str | bytes) -> None:
        try:
            msg = parse_object(data, "the message")
        except MstingError as err:
            return self._error(None, err)
        kind, rid = msg.get("type"), msg.get("id")
        if kind == "generate":
            if self.closing:
                return self._error(rid, Unavailable("shutting_down", "the daemon is shutting down", retry_after=5))
            if not isinstance(rid, str) or not rid or len(rid) > limits.MAX_NAME_CHARS or rid in self.running:
                return self._error(rid if isinstance(rid, str) else None,
                                   InvalidRequest("invalid_body", f"'id' must be a string of 1 to {limits.MAX_NAME_CHARS} characters "
                                                  "not used by a running generation"))
            try:
                stream = self.router.stream(prompt_or_messages(Fields(msg, GENERATE_KEYS), request_meta(self.ws.scope)))
            except MstingError as err:
                return self._error(rid, err)
            self.running[rid] = asyncio.create_task(self._relay(rid, stream))
        elif kind == "cancel":
            task = self.running.get(rid) if isinstance(rid, str) else None
            if task is not None:
                task.cancel()  # leaving the stream cancels the generation in the worker
        elif kind == "subscribe":
            if msg.get("topics") != ["status"]:
                return self._error(rid, InvalidRequest("invalid_body", "the only subscription topic is 'status'"))
            if self.status_task is None:
                self.status_task = asyncio.create_task(self._status_loop())
        else:
            self._error(rid, InvalidRequest("invalid_body", f"unknown message type {shown(kind)}; expected generate, cancel or subscribe"))

    async def _relay(self, rid: str, stream: Stream) -> None:
        try:
            async with stream:
                async for event in stream:
                    if isinstance(event, Token):
                        self.outbox.put_nowait({"type": "token", "id": rid, "text": event.text})
                    elif isinstance(event, ToolCallDelta):
                        self.outbox.put_nowait({"type": "tool_call", "id": rid, "tool_call": event.as_openai()})
                    elif isinstance(event, Done):
                        self.outbox.put_nowait({"type": "done", "id": rid, "model": event.model, **event.summary()})
                    elif isinstance(event, Failed):
                        self._error(rid, event.error)
        except asyncio.CancelledError:
            if self.closing:  # as the daemon fails the local jobs its drain left unfinished
                self._error(rid, Unavailable("shutting_down", "the daemon shut down before this generation finished", retry_after=5))
            else:
                self.outbox.put_nowait({"type": "done", "id": rid, "model": stream.model, "finish_reason": "cancelled"})
        except MstingError as err:  # failed before its first event (every service tried)
            self._error(rid, err)
        except Exception as exc:  # the client gets an answer, whatever went wrong
            self._error(rid, internal_error(exc, f"WEBSOCKET /v1/ws generation {rid!r}"))
        finally:
            self.running.pop(rid, None)

    def _error(self, rid: object, err: MstingError) -> None:
        if rid is not None and (not isinstance(rid, str) or len(rid) > limits.MAX_NAME_CHARS):
            rid = None  # only an id the client could have used is echoed
        self.outbox.put_nowait({"type": "error", "id": rid, **error_body(err)})

    async def _status_loop(self) -> None:
        last = None
        while True:
            status, reason, _ = self.control.readiness()
            snapshot = {"type": "status", "readiness": {"status": status, "reason": reason}, "models": self.control.model_summaries()}
            if snapshot != last:
                self.outbox.put_nowait(snapshot)
                last = snapshot
            await asyncio.sleep(STATUS_POLL_SEC)

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                await self.ws.close(GOING_AWAY, "the daemon is shutting down")
                return
            try:
                text = json.dumps(message, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                err = internal_error(exc, "WEBSOCKET /v1/ws send")
                text = json.dumps({"type": "error", "id": message.get("id"), **error_body(err)}, separators=(",", ":"))
            await self.ws.send_text(text)


async def websocket_endpoint(ws: WebSocket) -> None:
    await Session(ws, ws.app.state.router, ws.app.state.control).run(ws.app.state.websockets)


routes = [WebSocketRoute("/v1/ws", websocket_endpoint)]
