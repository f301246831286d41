"""What the three stand-ins share: their state, the control API, and the ASGI layer that logs
each request and applies the fault before the protocol's own routes see it.

Control API (not part of any protocol; never logged, never faulted, no auth):

``GET|POST|DELETE /_control/fault``   the current fault / set one (``faults.Fault.from_json``) / clear it
``GET|POST /_control/models``         the model list / change it live: {"add": [...], "remove": [...]}
                                      (or {"set": [...]} to replace it)
``GET|DELETE /_control/requests``     the log of received requests / clear it
``POST /_control/reset``              back to the state at start: the initial models, no fault, an
                                      empty request log, nothing loaded (Ollama's /api/ps)
``GET /_control/info``                api, pid, port and settings of this stand-in
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .faults import Connection, Fault, FaultError, FaultState, wait_for_disconnect
from .text import DEFAULT_REPLY_WORDS

SECRET_HEADERS = {"authorization", "x-api-key", "proxy-authorization", "cookie", "api-key"}
HOLDER = "upstreams"  # the scope key of the per-request dict: fault, connection

API_KEY_ENV = "UPSTREAMS_API_KEY"  # the credential, by the environment (a command line shows in ps)


@dataclass
class State:
    api: str
    models: list[str]
    token_delay: float = 0.0
    api_key: str | None = None
    reply_words: int = DEFAULT_REPLY_WORDS
    port: int = 0
    faults: FaultState = field(default_factory=FaultState)
    log: list[dict] = field(default_factory=list)
    seq: int = 0
    normalize: Callable[[str], str] = staticmethod(lambda name: name)  # type: ignore[assignment]
    extra: dict = field(default_factory=dict)  # per-protocol state (Ollama's loaded models), emptied by reset()
    initial_models: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.models[:] = self.initial_models
        self.faults.clear()
        self.log.clear()
        for value in self.extra.values():
            value.clear()

    def has_model(self, name: str | None) -> bool:
        return isinstance(name, str) and self.normalize(name) in self.models

    def record(self, scope: dict, body: bytes) -> dict:
        headers = Headers(scope=scope)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        self.seq += 1
        entry = {
            "seq": self.seq,
            "monotonic": time.monotonic(),
            "time": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "body": parsed,
            # whether a credential was sent, never its value
            "auth": any(h in headers for h in ("authorization", "x-api-key", "api-key")),
            "headers": {k: v for k, v in headers.items() if k not in SECRET_HEADERS},
            "fault": None,
        }
        self.log.append(entry)
        return entry


def holder(request: Request) -> dict:
    return request.scope.setdefault(HOLDER, {})


def take_stream_fault(request: Request) -> tuple[Fault | None, Connection | None]:
    """For a handler about to stream: the request's fault (cut / slow_first), which the stream
    then carries out itself (the non-streamed handling in `StandInApp` then leaves it alone),
    and the connection to cut."""
    h = holder(request)
    return h.pop("fault", None), h.get("connection")


def control_routes(state: State, protocol: ModuleType) -> list[Route]:
    async def fault(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "the body must be JSON"}, status_code=400)
            try:
                state.faults.set(Fault.from_json(body))
            except FaultError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        elif request.method == "DELETE":
            state.faults.clear()
        return JSONResponse(state.faults.to_json())

    async def models(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or set(body) - {"add", "remove", "set"} or not all(
                    isinstance(v, list) and all(isinstance(m, str) and m for m in v) for v in body.values()):
                return JSONResponse({"error": 'expected {"add": [names], "remove": [names]} or {"set": [names]}'}, status_code=400)
            if "set" in body:
                state.models[:] = []
            for name in [*body.get("set", []), *body.get("add", [])]:
                if state.normalize(name) not in state.models:
                    state.models.append(state.normalize(name))
            removed = {state.normalize(n) for n in body.get("remove", [])}
            state.models[:] = [m for m in state.models if m not in removed]
        return JSONResponse({"models": list(state.models)})

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            n = len(state.log)
            state.log.clear()
            return JSONResponse({"cleared": n})
        return JSONResponse({"requests": state.log})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"models": list(state.models)})

    async def info(request: Request) -> Response:
        return JSONResponse({"api": state.api, "pid": os.getpid(), "port": state.port, "models": state.models,
                             "token_delay": state.token_delay, "reply_words": state.reply_words,
                             "api_key_set": state.api_key is not None, "api_base": protocol.API_BASE})

    return [
        Route("/_control/fault", fault, methods=["GET", "POST", "DELETE"]),
        Route("/_control/models", models, methods=["GET", "POST"]),
        Route("/_control/requests", requests, methods=["GET", "DELETE"]),
        Route("/_control/reset", reset, methods=["POST"]),
        Route("/_control/info", info, methods=["GET"]),
    ]


async def _read_body(receive: Callable) -> tuple[bytes, bool]:
    """(the whole request body, whether the client went away while sending it)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


class StandInApp:
    """The ASGI application uvicorn serves: /_control/* to the control routes; every other
    request is logged, given its fault (if the current one matches), checked for credentials,
    and passed to the protocol's routes with its body replayed."""

    def __init__(self, state: State, protocol: ModuleType):
        self.state = state
        self.protocol = protocol
        self.control = Starlette(routes=control_routes(state, protocol))
        self.inner = Starlette(routes=protocol.routes(state))
        state.initial_models = list(state.models)  # as the protocol spells them (Ollama's tags)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        if scope["path"].startswith("/_control/"):
            return await self.control(scope, receive, send)
        connection = Connection(send)
        body, gone = await _read_body(receive)
        entry = self.state.record(scope, body)
        if gone:
            return
        fault = self.state.faults.take(scope["path"], self.protocol.route_kind(scope["method"], scope["path"]))
        if fault is not None:
            entry["fault"] = fault.mode
            if fault.mode == "status":
                response = self.protocol.error_response(fault.status, fault.error_message, fault.retry_after_header())
                return await response(scope, receive, send)
            if fault.mode == "hang":
                return await wait_for_disconnect(receive)
            if fault.mode == "drop":
                return await connection.close()
        denied = self.protocol.check_auth(Headers(scope=scope), self.state)
        if denied is not None:
            return await denied(scope, receive, send)
        scope[HOLDER] = {"fault": fault, "connection": connection} if fault else {"connection": connection}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.inner(scope, replay, self._unstreamed_fault_send(scope[HOLDER], send, connection))

    @staticmethod
    def _unstreamed_fault_send(h: dict, send: Callable, connection: Connection) -> Callable:
        """`send`, carrying out a cut / slow_first fault on a reply that is not streamed (a
        streaming handler has taken the fault out of `h` before its response starts)."""
        cut = False

        async def faulty_send(message: dict) -> None:
            nonlocal cut
            if cut:
                return  # the connection is closed: nothing more goes out
            fault = h.get("fault")
            if fault is None:
                return await send(message)
            if message["type"] == "http.response.start" and fault.mode == "slow_first":
                await asyncio.sleep(fault.delay)
            if message["type"] == "http.response.body" and fault.mode == "cut" and not message.get("more_body"):
                data = message.get("body", b"")
                await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
                cut = True
                await connection.close()
                return
            await send(message)

        return faulty_send


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers=headers)


async def json_body(request: Request) -> Any:
    """The request's JSON body, or None when it is absent or not JSON."""
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
