"""A small OpenAI-shaped server (Starlette on uvicorn, in a thread, on TCP or a Unix
socket) for the application client's tests, with its faults chosen by the model name:

* ``fail-500``, ``fail-503``, ``rate-429``, ``bad-400``: that HTTP error, OpenAI's shape;
* ``slow``: answers after 2 s;
* ``truncate``: a stream that sends text, then ends without ``[DONE]``;
* ``error-first`` / ``error-late``: a stream whose error event comes before / after text;
* ``retried``: answers with ``X-Msting-Provider: lan-remote`` and ``X-Msting-Attempts: 3``.

Every other name gets the reply "fake reply to: <the prompt's text>". Each request is
recorded (path, JSON body, Authorization header)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = [
    {"id": "fake-model", "object": "model", "owned_by": "fake", "aliases": ["local~fake-model", "default"]},
    {"id": "remote-model", "object": "model", "owned_by": "fake", "aliases": ["lan~remote-model"]},
]
ERRORS = {
    "fail-500": (500, "server_error", "boom"),
    "fail-503": (503, "unavailable_error", "model_loading"),
    "rate-429": (429, "rate_limit_error", "rate_limited"),
    "bad-400": (400, "invalid_request_error", "invalid_value"),
}


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.services: list[dict] | None = None  # None: /llm/services answers 404

    def reset(self) -> None:
        self.requests.clear()
        self.services = None


def _error(status: int, type_: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": f"fake {code}", "type": type_, "param": None, "code": code}}, status_code=status)


def _data(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def _text_of(body: dict) -> str:
    if "messages" in body:
        return [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
    return body["prompt"]


def make_app(rec: Recorder) -> Starlette:
    async def generation(request: Request) -> Response:
        body = await request.json()
        rec.requests.append({"path": request.url.path, "body": body, "authorization": request.headers.get("authorization")})
        model = body.get("model") or "fake-model"
        chat = request.url.path.endswith("/chat/completions")
        if model in ERRORS:
            return _error(*ERRORS[model])
        if model == "slow":
            await asyncio.sleep(2)
        text = f"fake reply to: {_text_of(body)}"
        headers = {"X-Msting-Provider": "lan-remote", "X-Msting-Attempts": "3"} if model == "retried" else {}
        if body.get("stream"):
            return StreamingResponse(_stream(model, text, chat), media_type="text/event-stream", headers=headers)
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return JSONResponse({"id": "x", "object": "chat.completion" if chat else "text_completion", "model": model,
                             "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
                            headers=headers)

    async def _stream(model: str, text: str, chat: bool):
        def chunk(piece: str | None, finish: str | None = None) -> dict:
            choice = {"index": 0, "finish_reason": finish}
            choice.update({"delta": {"content": piece} if piece is not None else {}} if chat else {"text": piece or ""})
            return {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "model": model, "choices": [choice]}

        error = {"error": {"message": "the worker died", "type": "server_error", "code": "worker_crashed"}}
        if model == "error-first":
            yield _data(error)
            return
        if chat:
            yield _data({"id": "x", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for i, word in enumerate(text.split(" ")):
            yield _data(chunk(word if i == 0 else " " + word))
            await asyncio.sleep(0)
        if model == "truncate":
            return
        if model == "error-late":
            yield _data(error)
            return
        yield _data(chunk(None, "stop")) + _data("[DONE]")

    async def models(request: Request) -> Response:
        rec.requests.append({"path": request.url.path, "body": None, "authorization": request.headers.get("authorization")})
        return JSONResponse({"object": "list", "data": MODELS})

    async def services(request: Request) -> Response:
        if rec.services is None:
            return JSONResponse({"error": {"message": "not found", "type": "not_found_error", "code": "not_found"}}, status_code=404)
        return JSONResponse({"object": "list", "data": rec.services})

    async def status(request: Request) -> Response:
        return JSONResponse({"ready": True, "models": [{"name": "fake-model", "state": "ready"}]})

    return Starlette(routes=[
        Route("/v1/chat/completions", generation, methods=["POST"]),
        Route("/v1/completions", generation, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/llm/services", services, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
    ])


class FakeServer:
    """The app served by uvicorn in a thread, on a free TCP port or on `uds`."""

    def __init__(self, *, uds: str | None = None) -> None:
        self.rec = Recorder()
        self.uds = uds
        self.port = None if uds else _free_port()
        kw = {"uds": uds} if uds else {"host": "127.0.0.1", "port": self.port}
        self.server = uvicorn.Server(uvicorn.Config(make_app(self.rec), log_level="warning", lifespan="off", **kw))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[dict]:
        return self.rec.requests

    def start(self) -> FakeServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """The OpenAI-compatible backend honours proxy variables (a remote server may need
    them); the tests' servers are local."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def _tcp_server():
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _uds_server():
    home = Path(tempfile.mkdtemp(prefix="mc"))
    server = FakeServer(uds=str(home / "fake.sock")).start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fake(_tcp_server) -> FakeServer:
    """The fake server on TCP (its recordings reset for each test)."""
    _tcp_server.rec.reset()
    return _tcp_server


@pytest.fixture
def fake_uds(_uds_server) -> FakeServer:
    """The fake server on a Unix socket, like the daemon's."""
    _uds_server.rec.reset()
    return _uds_server


@pytest.fixture
def dead_url() -> str:
    """A TCP address nothing listens on."""
    return f"http://127.0.0.1:{_free_port()}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
