"""The WebSocket route (`/v1/ws`): streamed generations and live status for interactive clients.

Every message is a JSON object with a `type`:

client → daemon
  {"type": "generate", "id": "c1", "prompt": "..." | "messages": [...], "model"?, "max_tokens"?, ...}
  {"type": "cancel", "id": "c1"}
  {"type": "subscribe", "topics": ["status"]}      status pushes whenever something changes
daemon → client
  {"type": "token", "id": "c1", "text": "..."}
  {"type": "done", "id": "c1", "model", "finish_reason", "usage", "timings"}
  {"type": "error", "id": "c1" | null, "error": {"message", "type", "code"}}
  {"type": "status", "readiness": {...}, "models": [{"name", "type", "state", "queue_depth", "in_flight"}]}

Generations on one connection run concurrently; one task sends everything, in order.
Closing the connection cancels whatever it still had running.

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

from msting.daemon.requests import ApiError, GenerationRequest, bad_request
from msting.daemon.service import Service
from msting.api import limits
from msting.http.body import parse_object
from msting.http.errors import Fields, internal_error, shown
from msting.http.native import iter_events, model_name, sampling_params
from msting.http.openai_api import parse_messages

GENERATE_KEYS = {"type", "id", "model", "prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed"}
STATUS_POLL_SEC = 0.25


class Session:
    def __init__(self, ws: WebSocket, service: Service):
        self.ws = ws
        self.service = service
        self.outbox: asyncio.Queue[dict] = asyncio.Queue()
        self.running: dict[str, asyncio.Task] = {}
        self.status_task: asyncio.Task | None = None

    async def run(self) -> None:
        await self.ws.accept()
        sender = asyncio.create_task(self._send_loop())
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
            for task in [*self.running.values(), self.status_task, sender]:
                if task is not None:
                    task.cancel()

    def _handle(self, data: str | bytes) -> None:
        try:
            msg = parse_object(data, "the message")
        except ApiError as err:
            return self._error(None, err)
        kind, rid = msg.get("type"), msg.get("id")
        if kind == "generate":
            if not isinstance(rid, str) or not rid or len(rid) > limits.MAX_NAME_CHARS or rid in self.running:
                return self._error(rid if isinstance(rid, str) else None,
                                   bad_request(f"'id' must be a string of 1 to {limits.MAX_NAME_CHARS} characters "
                                               "not used by a running generation", "invalid_body"))
            try:
                req = self._parse(msg)
                self.service.submit(req)
            except ApiError as err:
                return self._error(rid, err)
            self.running[rid] = asyncio.create_task(self._relay(rid, req))
        elif kind == "cancel":
            task = self.running.get(rid) if isinstance(rid, str) else None
            if task is not None:
                task.cancel()  # leaving iter_events cancels the generation in the worker
        elif kind == "subscribe":
            if msg.get("topics") != ["status"]:
                return self._error(rid, bad_request("the only subscription topic is 'status'", "invalid_body"))
            if self.status_task is None:
                self.status_task = asyncio.create_task(self._status_loop())
        else:
            self._error(rid, bad_request(f"unknown message type {shown(kind)}; expected generate, cancel or subscribe", "invalid_body"))

    def _parse(self, msg: dict) -> GenerationRequest:
        fields = Fields(msg, GENERATE_KEYS)
        if ("prompt" in msg) == ("messages" in msg):
            raise fields.error("prompt", "give exactly one of 'prompt' or 'messages'")
        task = {"prompt": fields.string("prompt", required=True)} if "prompt" in msg else {"messages": parse_messages(fields)}
        return GenerationRequest(model_name(fields), {**task, **sampling_params(fields)}, stream=True)

    async def _relay(self, rid: str, req: GenerationRequest) -> None:
        try:
            async for kind, payload in iter_events(self.service, req):
                if kind == "token":
                    self.outbox.put_nowait({"type": "token", "id": rid, "text": payload})
                elif kind == "done":
                    body = {k: v for k, v in payload.items() if k != "text"}
                    self.outbox.put_nowait({"type": "done", "id": rid, "model": req.model, **body})
                else:
                    self._error(rid, payload)
        except asyncio.CancelledError:
            self.outbox.put_nowait({"type": "done", "id": rid, "model": req.model, "finish_reason": "cancelled"})
        except Exception as exc:  # the client gets an answer, whatever went wrong
            self._error(rid, internal_error(exc, f"WEBSOCKET /v1/ws generation {rid!r}"))
        finally:
            self.running.pop(rid, None)

    def _error(self, rid: object, err: ApiError) -> None:
        if rid is not None and (not isinstance(rid, str) or len(rid) > limits.MAX_NAME_CHARS):
            rid = None  # only an id the client could have used is echoed
        self.outbox.put_nowait({"type": "error", "id": rid, **err.body()})

    async def _status_loop(self) -> None:
        last = None
        while True:
            status, reason = self.service.readiness()
            snapshot = {
                "type": "status",
                "readiness": {"status": status, "reason": reason},
                "models": [{"name": rt.name, "type": rt.spec.type, "state": rt.state, "queue_depth": len(rt.queue), "in_flight": rt.in_flight}
                           for rt in self.service.shown_runtimes()],
            }
            if snapshot != last:
                self.outbox.put_nowait(snapshot)
                last = snapshot
            await asyncio.sleep(STATUS_POLL_SEC)

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            try:
                text = json.dumps(message, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                err = internal_error(exc, "WEBSOCKET /v1/ws send")
                text = json.dumps({"type": "error", "id": message.get("id"), **err.body()}, separators=(",", ":"))
            await self.ws.send_text(text)


async def websocket_endpoint(ws: WebSocket) -> None:
    await Session(ws, ws.app.state.service).run()


routes = [WebSocketRoute("/v1/ws", websocket_endpoint)]
