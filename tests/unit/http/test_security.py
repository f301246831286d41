"""msting.http.security in process: a tiny Starlette app behind SecurityMiddleware,
driven by httpx's ASGI transport (TCP requests), or by ASGI scopes written by hand where
uvicorn's view of the transport matters (the Unix socket, HTTP/1.0, repeated headers,
WebSockets). The peer-credential check runs on real Unix sockets.

The same promises as tests/e2e/test_security.py, without a daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from msting.config.schema import parse_config
from msting.http.security import (
    SecurityMiddleware,
    SecurityPolicy,
    host_name,
    http_protocol_class,
    is_loopback_address,
    is_loopback_host_name,
    normalize_allowed_host,
    peer_check_available,
    peer_credentials,
    read_api_key,
    with_peer_check,
)

pytestmark = pytest.mark.anyio

KEY = "s3cret-key-for-tests"
PORT = 8086
TCP_URL = f"http://127.0.0.1:{PORT}"  # an explicit port: ASGITransport puts it in scope["server"]
SOCKET_PATH = "/run/user/1000/msting/msting.sock"

MISSING_KEY = {"error": {"message": "missing API key: this endpoint needs 'Authorization: Bearer <key>' when called over TCP",
                         "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
WRONG_KEY = {"error": {"message": "invalid API key", "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
NO_HOST = ("the request has no Host header; send one Host header naming localhost, 127.0.0.1 or [::1] "
           "(or a name in llm_service.allowed_hosts)")
SEVERAL_HOSTS = ("the request has several Host headers; send one Host header naming localhost, 127.0.0.1 or [::1] "
                 "(or a name in llm_service.allowed_hosts)")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------ the tiny app


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _generate(request: Request) -> JSONResponse:
    return JSONResponse({"text": "hi", "got": await request.json()})


async def _stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"event: token\ndata: {i}\n\n".encode()
        yield b"event: done\ndata: {}\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("welcome")
    await websocket.close()


INNER = Starlette(routes=[
    Route("/health", _health),
    Route("/health/ready", _health),
    Route("/generate", _generate, methods=["POST"]),
    Route("/stream", _stream),
    Route("/v1/status", lambda request: PlainTextResponse("status")),
    WebSocketRoute("/v1/ws", _ws),
])


def _client(policy: SecurityPolicy, base_url: str = TCP_URL) -> httpx.AsyncClient:
    app = SecurityMiddleware(INNER, policy)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(SecurityPolicy(api_key=KEY)) as c:
        yield c


@pytest.fixture
async def open_tcp() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(SecurityPolicy(allowed_hosts=frozenset({"my-box.lan", "[fe80::1]"}))) as c:
        yield c


def _assert_error(resp: httpx.Response, status: int, body: dict) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.json() == body


def _host_error(message: str) -> dict:
    return {"error": {"message": message, "type": "permission_error", "param": None, "code": "host_not_allowed"}}


# ---------------------------------------------------------- hand-driven ASGI


class _Recorder:
    """An ASGI app that records the scope and the receive/send it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, object, object]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"inner"})


def _scope(headers: list[tuple[bytes, bytes]], *, path: str = "/generate", type_: str = "http",
           server: tuple | None = ("127.0.0.1", PORT), http_version: str = "1.1", extensions: dict | None = None) -> dict:
    scope = {"type": type_, "path": path, "headers": headers, "http_version": http_version, "client": ("127.0.0.1", 50000)}
    if type_ == "http":
        scope["method"] = "POST"
    if server is not None:
        scope["server"] = server
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def _drive(mw: SecurityMiddleware, scope: dict, incoming: list[dict] | None = None) -> list[dict]:
    queue = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[dict] = []

    async def receive() -> dict:
        return queue.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    return sent


def _status_and_body(sent: list[dict]) -> tuple[int, dict | bytes]:
    start, body = sent
    raw = body["body"]
    try:
        return start["status"], json.loads(raw)
    except ValueError:
        return start["status"], raw


# ------------------------------------------------------------------- API key


async def test_no_key_is_a_401_with_the_openai_error_and_a_bearer_challenge(keyed: httpx.AsyncClient) -> None:
    r = await keyed.post("/generate", json={"prompt": "x"})
    _assert_error(r, 401, MISSING_KEY)
    assert r.headers["www-authenticate"] == "Bearer"
    assert KEY not in r.text


@pytest.mark.parametrize("authorization", [
    "Bearer nope", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}", KEY, "Bearer", "Bearer ", "",
    f"Token {KEY}", f"Bearer{KEY}",
])
async def test_a_wrong_key_or_scheme_is_a_401(keyed: httpx.AsyncClient, authorization: str) -> None:
    r = await keyed.post("/generate", json={"prompt": "x"}, headers={"Authorization": authorization})
    _assert_error(r, 401, WRONG_KEY)
    assert r.headers["www-authenticate"] == "Bearer"
    assert KEY not in r.text


@pytest.mark.parametrize("authorization", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer   {KEY}  "])
async def test_the_right_key_passes_and_the_scheme_is_case_insensitive(keyed: httpx.AsyncClient, authorization: str) -> None:
    r = await keyed.post("/generate", json={"prompt": "x"}, headers={"Authorization": authorization})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "hi", "got": {"prompt": "x"}}


async def test_only_health_is_open_everything_else_needs_the_key(keyed: httpx.AsyncClient) -> None:
    r = await keyed.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    for path in ("/health/ready", "/v1/status", "/health/", "/HEALTH", "/nowhere"):  # unknown routes too: no 404 map
        _assert_error(await keyed.get(path), 401, MISSING_KEY)
    good = {"Authorization": f"Bearer {KEY}"}
    assert (await keyed.get("/health/ready", headers=good)).status_code == 200
    assert (await keyed.get("/nowhere", headers=good)).status_code == 404


async def test_a_streamed_response_passes_through_whole(keyed: httpx.AsyncClient) -> None:
    async with keyed.stream("GET", "/stream", headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[7:] async for line in r.aiter_lines() if line.startswith("event: ")]
    assert events == ["token"] * 5 + ["done"]


async def test_without_a_key_tcp_is_open() -> None:
    async with _client(SecurityPolicy()) as c:
        assert (await c.post("/generate", json={"a": 1})).status_code == 200
        assert (await c.get("/v1/status")).status_code == 200
        # an Authorization header is then ignored, whatever it holds
        assert (await c.get("/v1/status", headers={"Authorization": "Bearer anything"})).status_code == 200


async def test_the_middleware_never_wraps_receive_or_send() -> None:
    inner = _Recorder()
    mw = SecurityMiddleware(inner, SecurityPolicy(api_key=KEY))
    scope = _scope([(b"host", b"localhost"), (b"authorization", f"Bearer {KEY}".encode())])

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    assert inner.calls == [(scope, receive, send)]
    assert sent[1]["body"] == b"inner"


async def test_a_non_ascii_key_is_compared_as_utf8() -> None:
    key = "clé-secrète"
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy(api_key=key))
    ok = await _drive(mw, _scope([(b"host", b"localhost"), (b"authorization", b"Bearer " + key.encode())]))
    assert _status_and_body(ok) == (200, b"inner")
    bad = await _drive(mw, _scope([(b"host", b"localhost"), (b"authorization", b"Bearer " + key.encode("latin-1"))]))
    assert _status_and_body(bad) == (401, WRONG_KEY)


# ------------------------------------------------------------------- Host header


@pytest.mark.parametrize("host", [
    "evil.example", f"evil.example:{PORT}", "localhost.evil.example", "127.0.0.1.evil.example", "localhost:notaport",
    "my-box.lan.evil.example", "127.1", "0x7f.0.0.1", "2130706433", "[::2]", "[fe80::2]:8086", "user@localhost",
    "localhost/x", "10.0.0.1", "0.0.0.0", "",
])
async def test_a_hostile_host_is_a_403_even_for_health(open_tcp: httpx.AsyncClient, host: str) -> None:
    r = await open_tcp.get("/health", headers={"Host": host})
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["type"] == "permission_error" and err["code"] == "host_not_allowed" and err["param"] is None
    assert err["message"].endswith("is not allowed; add it to llm_service.allowed_hosts")
    assert "www-authenticate" not in r.headers


async def test_the_host_refusal_names_the_host_without_its_port(open_tcp: httpx.AsyncClient) -> None:
    expected = _host_error("Host header 'evil.example' is not allowed; add it to llm_service.allowed_hosts")
    _assert_error(await open_tcp.post("/generate", json={}, headers={"Host": "evil.example"}), 403, expected)
    _assert_error(await open_tcp.post("/generate", json={}, headers={"Host": f"EVIL.example.:{PORT}"}), 403, expected)
    # a malformed Host is shown as sent, cut to 100 characters
    r = await open_tcp.get("/health", headers={"Host": "localhost:notaport"})
    assert r.json()["error"]["message"] == "Host header 'localhost:notaport' is not allowed; add it to llm_service.allowed_hosts"
    r = await open_tcp.get("/health", headers={"Host": "a/" + "b" * 300})
    assert r.json()["error"]["message"] == f"Host header 'a/{'b' * 98}' is not allowed; add it to llm_service.allowed_hosts"


@pytest.mark.parametrize("host", [
    f"localhost:{PORT}", "localhost", "LOCALHOST", "localhost.", "localhost:", f"127.0.0.1:{PORT}", "127.8.9.10",
    "127.255.255.255:1", f"[::1]:{PORT}", "[::1]", "[0:0::1]", "[0000:0000:0000:0000:0000:0000:0000:0001]",
    "my-box.lan", f"MY-BOX.lan:{PORT}", "my-box.lan.", "my-box.lan:1", "[fe80::1]:8086", "[FE80::1]",
])
async def test_loopback_and_allowed_hosts_pass(open_tcp: httpx.AsyncClient, host: str) -> None:
    r = await open_tcp.get("/health", headers={"Host": host})
    assert r.status_code == 200, (host, r.text)


async def test_the_host_is_checked_before_the_key() -> None:
    async with _client(SecurityPolicy(api_key=KEY)) as c:
        r = await c.post("/generate", json={}, headers={"Host": "evil.example", "Authorization": f"Bearer {KEY}"})
        _assert_error(r, 403, _host_error("Host header 'evil.example' is not allowed; add it to llm_service.allowed_hosts"))
        r = await c.post("/generate", json={}, headers={"Host": "evil.example"})  # no key either: still the 403
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"


async def test_a_foreign_origin_is_refused_even_with_a_loopback_host(open_tcp: httpx.AsyncClient) -> None:
    r = await open_tcp.post("/generate", json={}, headers={"Origin": "https://evil.example"})
    _assert_error(r, 403, _host_error("cross-origin request from 'https://evil.example' refused; "
                                      "add its host to llm_service.allowed_hosts"))
    for origin in ("null", "http://localhost.evil.example", "https://evil.example:8086", "file://", "garbage"):
        r = await open_tcp.post("/generate", json={}, headers={"Origin": origin})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]["message"], origin
    long_origin = "https://" + "e" * 300
    r = await open_tcp.post("/generate", json={}, headers={"Origin": long_origin})
    assert f"'{long_origin[:100]}'" in r.json()["error"]["message"]
    for origin in (f"http://localhost:{PORT}", "http://127.0.0.1", "https://my-box.lan", "http://[::1]:8086", "http://[fe80::1]"):
        assert (await open_tcp.post("/generate", json={}, headers={"Origin": origin})).status_code == 200, origin


async def test_http11_needs_exactly_one_host_http10_may_omit_it() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy())
    assert _status_and_body(await _drive(mw, _scope([]))) == (403, _host_error(NO_HOST))
    assert _status_and_body(await _drive(mw, _scope([], http_version="2"))) == (403, _host_error(NO_HOST))
    assert _status_and_body(await _drive(mw, _scope([], http_version="1.0"))) == (200, b"inner")
    for hosts in ([b"localhost", b"evil.example"], [b"localhost", b"localhost"], [b"evil.example", b"localhost"]):
        scope = _scope([(b"host", h) for h in hosts])
        assert _status_and_body(await _drive(mw, scope)) == (403, _host_error(SEVERAL_HOSTS))
        scope = _scope([(b"host", h) for h in hosts], http_version="1.0")  # HTTP/1.0 may not send two either
        assert _status_and_body(await _drive(mw, scope)) == (403, _host_error(SEVERAL_HOSTS))


async def test_http10_without_host_still_needs_the_key() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy(api_key=KEY))
    assert _status_and_body(await _drive(mw, _scope([], http_version="1.0"))) == (401, MISSING_KEY)
    ok = _scope([(b"authorization", f"Bearer {KEY}".encode())], http_version="1.0")
    assert _status_and_body(await _drive(mw, ok)) == (200, b"inner")


async def test_many_distinct_hosts_do_not_grow_the_cache_without_bound() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy())
    for i in range(3000):
        sent = await _drive(mw, _scope([(b"host", f"evil{i}.example".encode())]))
        assert sent[0]["status"] == 403
    assert len(mw._host_ok) <= 1024
    assert _status_and_body(await _drive(mw, _scope([(b"host", b"localhost:8086")]))) == (200, b"inner")
    assert (await _drive(mw, _scope([(b"host", b"evil0.example")])))[0]["status"] == 403  # still refused once evicted


# ------------------------------------------------------------------ transports


async def test_the_unix_socket_needs_neither_key_nor_a_loopback_host() -> None:
    """uvicorn sets scope["server"] to (socket_path, None) on a Unix socket."""
    inner = _Recorder()
    mw = SecurityMiddleware(inner, SecurityPolicy(api_key=KEY))
    unix = ("/run/msting.sock", None)
    for headers in ([(b"host", b"msting")], [(b"host", b"evil.example")], [], [(b"host", b"a"), (b"host", b"b")],
                    [(b"host", b"localhost"), (b"origin", b"https://evil.example"), (b"authorization", b"Bearer wrong")]):
        sent = await _drive(mw, _scope(headers, server=unix))
        assert _status_and_body(sent) == (200, b"inner"), headers
    assert len(inner.calls) == 5
    # through httpx too: ASGITransport reports (host, None) for a URL without a port,
    # which is exactly what the middleware takes for the Unix socket
    async with _client(SecurityPolicy(api_key=KEY), base_url="http://msting") as c:
        r = await c.post("/generate", json={"a": 1}, headers={"Host": "evil.example"})
        assert r.status_code == 200 and r.json()["got"] == {"a": 1}


async def test_a_scope_without_server_is_treated_as_tcp() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy(api_key=KEY))
    assert _status_and_body(await _drive(mw, _scope([(b"host", b"localhost")], server=None))) == (401, MISSING_KEY)
    hostile = await _drive(mw, _scope([(b"host", b"evil.example")], server=None))
    assert hostile[0]["status"] == 403


async def test_lifespan_passes_through_untouched() -> None:
    inner = _Recorder()
    mw = SecurityMiddleware(inner, SecurityPolicy(api_key=KEY))
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await mw(scope, None, None)
    assert inner.calls == [(scope, None, None)]


# ------------------------------------------------------------------ WebSockets


def _ws_scope(headers: list[tuple[bytes, bytes]], **kw) -> dict:
    return _scope(headers, path="/v1/ws", type_="websocket", **kw)


async def test_a_websocket_without_the_key_gets_the_401_body_before_accept() -> None:
    inner = _Recorder()
    mw = SecurityMiddleware(inner, SecurityPolicy(api_key=KEY))
    sent = await _drive(mw, _ws_scope([(b"host", b"localhost")], extensions={"websocket.http.response": {}}),
                        [{"type": "websocket.connect"}])
    assert inner.calls == []
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 401
    headers = dict(sent[0]["headers"])
    assert headers[b"www-authenticate"] == b"Bearer" and headers[b"content-type"] == b"application/json"
    assert json.loads(sent[1]["body"]) == MISSING_KEY
    assert int(headers[b"content-length"]) == len(sent[1]["body"])


async def test_a_websocket_from_a_hostile_host_gets_the_403_body() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy(api_key=KEY))
    scope = _ws_scope([(b"host", b"evil.example:8086"), (b"authorization", f"Bearer {KEY}".encode())],
                      extensions={"websocket.http.response": {}})
    sent = await _drive(mw, scope, [{"type": "websocket.connect"}])
    assert sent[0]["status"] == 403
    assert json.loads(sent[1]["body"]) == _host_error("Host header 'evil.example' is not allowed; add it to llm_service.allowed_hosts")


async def test_a_websocket_without_the_denial_extension_is_closed_with_1008() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy(api_key=KEY))
    for ext in (None, {}):
        sent = await _drive(mw, _ws_scope([(b"host", b"localhost")], extensions=ext), [{"type": "websocket.connect"}])
        assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_a_websocket_that_disconnects_first_gets_nothing() -> None:
    mw = SecurityMiddleware(_Recorder(), SecurityPolicy(api_key=KEY))
    sent = await _drive(mw, _ws_scope([(b"host", b"localhost")], extensions={"websocket.http.response": {}}),
                        [{"type": "websocket.disconnect", "code": 1006}])
    assert sent == []


async def test_a_websocket_with_the_key_reaches_the_app() -> None:
    mw = SecurityMiddleware(INNER, SecurityPolicy(api_key=KEY))
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict] = []
    done = asyncio.Event()

    async def receive() -> dict:
        if incoming:
            return incoming.pop(0)
        await done.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            done.set()

    await mw(_ws_scope([(b"host", b"127.0.0.1:8086"), (b"authorization", f"Bearer {KEY}".encode())]), receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "welcome"


# -------------------------------------------------------------- policy from config


def _config(**service):
    return parse_config({"llm_service": service}, None)


def test_policy_reads_the_key_from_the_configured_variable_once() -> None:
    env = {"LLM_API_KEY": "  the-key \n", "OTHER": "x"}
    policy = SecurityPolicy.from_config(_config(), env)
    assert policy.api_key == "the-key" and policy.auth_required and policy.key_var == "LLM_API_KEY"
    env["LLM_API_KEY"] = "changed"  # read once: a later change does not reach the policy
    assert policy.api_key == "the-key"
    custom = SecurityPolicy.from_config(_config(api_key_env_var="MSTING_TEST_KEY"), {"LLM_API_KEY": "ignored", "MSTING_TEST_KEY": "k2"})
    assert custom.api_key == "k2" and custom.key_var == "MSTING_TEST_KEY"


@pytest.mark.parametrize("env", [{}, {"LLM_API_KEY": ""}, {"LLM_API_KEY": "   "}, {"LLM_API_KEY": "\t\n"}])
def test_an_unset_or_blank_variable_means_no_auth(env: dict) -> None:
    policy = SecurityPolicy.from_config(_config(), env)
    assert policy.api_key is None and not policy.auth_required


def test_policy_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSTING_UNIT_KEY", "from-environ")
    assert SecurityPolicy.from_config(_config(api_key_env_var="MSTING_UNIT_KEY")).api_key == "from-environ"
    monkeypatch.delenv("MSTING_UNIT_KEY")
    assert SecurityPolicy.from_config(_config(api_key_env_var="MSTING_UNIT_KEY")).api_key is None
    assert read_api_key("MSTING_UNIT_KEY") is None
    assert read_api_key("V", {"V": " k "}) == "k"


def test_allowed_hosts_are_normalised() -> None:
    policy = SecurityPolicy.from_config(_config(allowed_hosts=["My-Box.LAN", "fe80::1", "[FE80::2]:8086", "box.lan:8080", "dot.lan."]), {})
    assert policy.allowed_hosts == frozenset({"my-box.lan", "[fe80::1]", "[fe80::2]", "box.lan", "dot.lan"})


@pytest.mark.parametrize(("bind", "added"), [
    ("127.0.0.1", None), ("127.0.0.2", None), ("localhost", None), ("::1", None), ("[::1]", None),
    ("0.0.0.0", None), ("::", None), ("[::]", None),
    ("192.168.1.5", "192.168.1.5"), ("fe80::7", "[fe80::7]"), ("Box.Example", "box.example"),
])
def test_a_specific_non_loopback_bind_address_is_an_allowed_host(bind: str, added: str | None) -> None:
    policy = SecurityPolicy.from_config(_config(host=bind, allowed_hosts=["x.lan"]), {"LLM_API_KEY": KEY})
    assert policy.allowed_hosts == frozenset({"x.lan"} | ({added} if added else set()))


async def test_a_policy_from_config_enforces_what_it_read() -> None:
    policy = SecurityPolicy.from_config(_config(host="192.168.1.5", allowed_hosts=["My-Box.LAN"]), {"LLM_API_KEY": KEY})
    async with _client(policy) as c:
        good = {"Authorization": f"Bearer {KEY}"}
        for host in ("192.168.1.5:8086", "MY-BOX.lan", "localhost"):
            assert (await c.get("/v1/status", headers={**good, "Host": host})).status_code == 200, host
        assert (await c.get("/v1/status", headers={**good, "Host": "192.168.1.6"})).status_code == 403
        _assert_error(await c.get("/v1/status", headers={"Host": "192.168.1.5"}), 401, MISSING_KEY)


def test_the_key_is_never_shown() -> None:
    on = SecurityPolicy.from_config(_config(allowed_hosts=["b.lan", "a.lan"]), {"LLM_API_KEY": KEY})
    text = on.describe()
    assert KEY not in text and KEY not in repr(on) and KEY not in str(on)
    assert text.startswith("API-key auth ON for TCP (Bearer key from $LLM_API_KEY; /debug, /health stay open)")
    assert "(a.lan, b.lan)" in text
    off = SecurityPolicy.from_config(_config(api_key_env_var="MY_KEY"), {})
    assert off.describe().startswith("API-key auth OFF for TCP ($MY_KEY is not set)")
    assert "allowed host (none)" in off.describe()
    expected_unix = "mode 0600 + peer uid check" if peer_check_available() else "mode 0600 (no SO_PEERCRED here)"
    assert off.describe().endswith(f"Unix socket: {expected_unix}")


# ------------------------------------------------------------------- helpers


@pytest.mark.parametrize(("value", "name"), [
    ("LocalHost:8086", "localhost"), ("localhost.", "localhost"), ("localhost.:80", "localhost"), ("[::1]:8086", "[::1]"),
    ("  127.0.0.1  ", "127.0.0.1"), ("host:", "host"), ("host:x", None), ("a b", None), ("[::1", None), ("user@h", None),
    ("h/p", None), ("", None), ("[zz::1]", None),
])
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


def test_loopback_predicates() -> None:
    for addr in ("localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]", " 127.0.0.1 "):
        assert is_loopback_address(addr), addr
    for addr in ("0.0.0.0", "::", "192.168.1.1", "example.com", "localhost.localdomain", ""):
        assert not is_loopback_address(addr), addr
    for name in ("localhost", "[::1]", "127.0.0.1", "127.200.0.1", "[0::1]"):
        assert is_loopback_host_name(name), name
    for name in ("127.0.0.1.evil", "127.1", "[::2]", "[::1", "::1", "evil", "128.0.0.1"):
        assert not is_loopback_host_name(name), name


def test_normalize_allowed_host() -> None:
    assert normalize_allowed_host(" My-Box.LAN ") == "my-box.lan"
    assert normalize_allowed_host("fe80::1") == "[fe80::1]"
    assert normalize_allowed_host("[fe80::1]:8086") == "[fe80::1]"
    assert normalize_allowed_host("box:8086") == "box"
    assert normalize_allowed_host("bad/entry") == "bad/entry"  # kept as written: it can never match a Host


# ------------------------------------------------------- peer credentials (Unix)


needs_peercred = pytest.mark.skipif(not peer_check_available(), reason="SO_PEERCRED is Linux-only")


@needs_peercred
def test_peer_credentials_of_a_socketpair_are_our_own() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


@needs_peercred
def test_the_uvicorn_protocol_class_carries_the_peer_check() -> None:
    cls = http_protocol_class()
    assert cls.__name__.startswith("PeerChecked")
    assert any(c.__name__.startswith("HeadHeld") for c in cls.__mro__)  # msting.http.transport
    assert any(c.__module__.startswith("uvicorn.protocols.http.") for c in cls.__mro__)


class _Echo(asyncio.Protocol):
    """The base a peer check wraps (uvicorn's protocols, too, write nothing at accept)."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"echo " + data)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory another uid may enter (AF_UNIX paths are limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="msting-sec-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


_CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b"ping\n")
    data = s.recv(1024)
except (ConnectionResetError, BrokenPipeError):
    data = b""
print("connected", len(data))
"""


@needs_peercred
async def test_a_unix_peer_of_our_uid_is_served(socket_dir: Path) -> None:
    path = socket_dir / "s.sock"
    server = await asyncio.get_running_loop().create_unix_server(with_peer_check(_Echo), path)
    async with server:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"echo ping\n"
        writer.close()
        await writer.wait_closed()


@needs_peercred
async def test_a_tcp_connection_is_not_peer_checked() -> None:
    server = await asyncio.get_running_loop().create_server(with_peer_check(_Echo), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"echo ping\n"
        writer.close()
        await writer.wait_closed()


@needs_peercred
@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
async def test_a_unix_peer_of_another_uid_is_dropped_at_accept(socket_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = socket_dir / "s.sock"
    server = await asyncio.get_running_loop().create_unix_server(with_peer_check(_Echo), path)
    os.chmod(path, 0o666)  # open the way on purpose: only the peer check stands
    async with server:
        caplog.set_level("WARNING", logger="msting.http.security")
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-I", "-c", _CONNECT, str(path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert out.decode().strip() == "connected 0", (proc.returncode, out, err)  # connect() worked, no byte came back
        assert any("uid 65534: only uid 0 may use this socket" in r.getMessage() for r in caplog.records)
        # the same socket still serves its own uid
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"echo ping\n"
        writer.close()
        await writer.wait_closed()


def test_metrics_are_open_only_where_the_config_says() -> None:
    closed = SecurityPolicy.from_config(_config(), {"LLM_API_KEY": KEY})
    opened = SecurityPolicy.from_config(_config(metrics_public=True), {"LLM_API_KEY": KEY})
    assert "/metrics" not in closed.open_paths and "/metrics" in opened.open_paths
    assert {"/health", "/debug"} <= closed.open_paths  # the debug page's shell holds no data
    assert "/debug/feed" not in opened.open_paths and "/v1/status" not in opened.open_paths
    assert "/debug, /health, /metrics stay open" in opened.describe()
