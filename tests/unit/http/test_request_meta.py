"""msting.http.parsing.request_meta: who sent a request, read from the ASGI scope the
real SecurityMiddleware passed on (hand-written scopes, as in test_security.py), and
from its body. The API key itself never appears in it."""

from __future__ import annotations

import asyncio

import pytest

from msting.api.errors import InvalidRequest
from msting.api.requests import RequestMeta
from msting.http.errors import Fields
from msting.http.parsing import request_meta
from msting.http.security import SecurityMiddleware, SecurityPolicy

KEY = "s3cret-key-for-tests"


def _meta_through_security(policy: SecurityPolicy, headers: list[tuple[bytes, bytes]], *,
                           server: tuple = ("127.0.0.1", 8086)) -> RequestMeta:
    seen: list[RequestMeta] = []

    async def app(scope, receive, send) -> None:
        seen.append(request_meta(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "http_version": "1.1",
             "headers": [(b"host", b"127.0.0.1"), *headers], "server": server, "client": ("127.0.0.1", 50000)}
    asyncio.run(SecurityMiddleware(app, policy)(scope, receive, send))
    assert len(seen) == 1
    return seen[0]


def test_a_request_with_the_api_key_is_the_keys_variable_never_the_key() -> None:
    meta = _meta_through_security(SecurityPolicy(api_key=KEY, key_var="MY_KEY"), [(b"authorization", f"Bearer {KEY}".encode())])
    assert meta.client == "key:MY_KEY"
    assert KEY not in repr(meta)


def test_a_client_label_follows_the_key_and_stands_alone_without_one() -> None:
    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"x-msting-client", b"batch-job")]
    assert _meta_through_security(SecurityPolicy(api_key=KEY), headers).client == "key:LLM_API_KEY/batch-job"
    assert _meta_through_security(SecurityPolicy(), [(b"x-msting-client", b"batch-job")]).client == "batch-job"
    unix = _meta_through_security(SecurityPolicy(api_key=KEY), [(b"x-msting-client", b"cli")], server=("/tmp/x.sock", None))
    assert unix.client == "cli"
    assert _meta_through_security(SecurityPolicy(), []).client is None


def test_a_bad_client_label_is_a_400_naming_the_header() -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_meta({"headers": [(b"x-msting-client", b"a b")]})
    assert caught.value.details.get("param") == "x-msting-client" or "x-msting-client" in caught.value.message


def test_headers_keep_only_x_msting_and_user_agent_and_cache_control_is_read() -> None:
    meta = request_meta({"headers": [(b"user-agent", b"OpenAI/Python 1.0"), (b"x-msting-tier", b"gold"),
                                     (b"cookie", b"secret"), (b"cache-control", b"no-cache, max-age=0")]})
    assert dict(meta.headers) == {"user-agent": "OpenAI/Python 1.0", "x-msting-tier": "gold"}
    assert meta.cache_control.no_cache and not meta.cache_control.no_store
    assert request_meta({"headers": [(b"cache-control", b"No-Store")]}).cache_control.no_store


def test_the_body_gives_user_and_tools() -> None:
    fields = Fields({"user": "alice", "tools": [{"type": "function"}]}, {"user", "tools"})
    meta = request_meta({"headers": []}, fields)
    assert meta.user == "alice" and meta.tools_requested
    assert not request_meta({"headers": []}, Fields({"tools": []}, {"tools"})).tools_requested
