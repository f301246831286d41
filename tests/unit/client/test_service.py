"""msting.client's application interface: the LLM_* environment and its errors, the
offline stub, the OpenAI-compatible and daemon backends against a real local HTTP
server (tests/unit/client/conftest.py), the fallback decision, streams that fail, and
the async twins."""

from __future__ import annotations

import asyncio
import logging
import warnings

import pytest

import msting.client as client_module
from msting.client import (
    AsyncLLMClient,
    ClientSettings,
    DaemonUnavailable,
    LLMClient,
    LLMFallbackWarning,
    LLMRequest,
    LLMResponse,
    MstingError,
    RequestTimeout,
    ServerUnavailable,
)
from msting.providers.stub import STUB_MARK, stub_reply

KEY = "sk-test-secret-4242"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


def client(**kw) -> LLMClient:
    kw.setdefault("environ", {})
    return LLMClient(**kw)


def aclient(**kw) -> AsyncLLMClient:
    kw.setdefault("environ", {})
    return AsyncLLMClient(**kw)


@pytest.fixture
def no_fallback_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMFallbackWarning)
        yield


# ---- the environment ---------------------------------------------------------------------


def test_the_defaults():
    s = ClientSettings.from_env({})
    assert (s.provider, s.base_url, s.api_key, s.timeout, s.fallback, s.socket_path) == ("lan", None, None, 60.0, "stub", None)


def test_values_are_read_and_explicit_arguments_win():
    env = {"LLM_PROVIDER": " OpenAI ", "LLM_BASE_URL": "http://h:8000/v1/", "LLM_API_KEY": KEY,
           "LLM_TIMEOUT_SECS": "2.5", "LLM_PROVIDER_FALLBACK": "local"}
    s = ClientSettings.from_env(env)
    assert (s.provider, s.base_url, s.api_key, s.timeout, s.fallback) == ("openai", "http://h:8000/v1", KEY, 2.5, "local")
    s = ClientSettings.from_env(env, provider="stub", timeout=9, fallback="none", api_key="other")
    assert (s.provider, s.timeout, s.fallback, s.api_key) == ("stub", 9.0, None, "other")
    assert ClientSettings.from_env({"LLM_PROVIDER": "stub", "LLM_PROVIDER_FALLBACK": "stub"}).fallback is None  # itself: none
    assert ClientSettings.from_env({"LLM_PROVIDER": "", "LLM_TIMEOUT_SECS": " "}).provider == "lan"  # empty: unset


@pytest.mark.parametrize("env, variable", [
    ({"LLM_PROVIDER": "gpt"}, "LLM_PROVIDER"),
    ({"LLM_TIMEOUT_SECS": "soon"}, "LLM_TIMEOUT_SECS"),
    ({"LLM_TIMEOUT_SECS": "-1"}, "LLM_TIMEOUT_SECS"),
    ({"LLM_TIMEOUT_SECS": "0"}, "LLM_TIMEOUT_SECS"),
    ({"LLM_TIMEOUT_SECS": "nan"}, "LLM_TIMEOUT_SECS"),
    ({"LLM_PROVIDER_FALLBACK": "anthropic"}, "LLM_PROVIDER_FALLBACK"),
    ({"LLM_PROVIDER_FALLBACK": "openai"}, "LLM_PROVIDER_FALLBACK"),
    ({"LLM_PROVIDER": "openai"}, "LLM_BASE_URL"),
    ({"LLM_BASE_URL": "ftp://h"}, "LLM_BASE_URL"),
])
def test_invalid_values_name_their_variable(env, variable):
    with pytest.raises(ValueError, match=variable):
        LLMClient(environ={**env, "LLM_API_KEY": KEY})


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="provider"):
        client(provider="nope")
    with pytest.raises(ValueError, match="timeout"):
        client(provider="stub", timeout=-3)
    with pytest.raises(ValueError, match="not both"):
        client(base_url="http://h", socket_path="/tmp/x.sock")


def test_the_api_key_is_never_shown(fake, dead_url, caplog):
    env = {"LLM_API_KEY": KEY, "LLM_BASE_URL": dead_url, "LLM_PROVIDER": "openai"}
    c = LLMClient(environ=env)
    assert KEY not in repr(c) and KEY not in repr(c.settings) and KEY not in str(c.settings)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        reply = c.generate("hi")
    assert reply.fallback_used
    assert seen and all(KEY not in str(w.message) for w in seen)
    assert KEY not in caplog.text and KEY not in repr(c.get_provider_status())
    with LLMClient(environ={**env, "LLM_BASE_URL": fake.url}) as live:  # but it is sent
        live.generate("hi")
    assert fake.requests[-1]["authorization"] == f"Bearer {KEY}"


def test_a_request_has_exactly_one_of_prompt_and_messages():
    with pytest.raises(ValueError, match="exactly one"):
        LLMRequest()
    with pytest.raises(ValueError, match="exactly one"):
        LLMRequest(prompt="a", messages=CHAT)
    with pytest.raises(ValueError, match="messages"):
        LLMRequest(messages=[])
    with pytest.raises(ValueError, match="timeout"):
        LLMRequest(prompt="a", timeout=0)
    assert LLMRequest(messages=CHAT).text == "Say hello"


# ---- the stub ------------------------------------------------------------------------------


def test_the_stub_answers_offline_with_the_daemons_text(no_fallback_warning):
    with client(provider="stub") as c:
        reply = c.generate(LLMRequest(prompt="Once upon a time there was", max_tokens=4, model="lan~llama3.2:3b"))
        assert reply.text == "".join(stub_reply("Once upon a time there was", 4)) and reply.text.startswith(STUB_MARK)
        assert (reply.model, reply.provider, reply.fallback_used, reply.attempts) == ("stub~llama3.2:3b", "stub", False, 1)
        assert reply.usage["completion_tokens"] == 4 and reply.raw["choices"][0]["text"] == reply.text
        chat = c.generate(LLMRequest(messages=CHAT))
        assert chat.text == "".join(stub_reply("Say hello")) and chat.model == "stub~stub"
        assert chat.raw["choices"][0]["message"]["content"] == chat.text
        assert list(c.stream_generate("hi there")) == stub_reply("hi there")
        assert [m["id"] for m in c.get_available_models()] == ["stub"]
        assert c.get_provider_status() == {"provider": "stub", "fallback": None, "base_url": None, "socket": None,
                                           "status": "up", "error": None}


# ---- an OpenAI-compatible server -------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
def test_openai_generate_with_or_without_v1(fake, suffix, no_fallback_warning):
    with client(provider="openai", base_url=fake.url + suffix, api_key=KEY) as c:
        reply = c.generate(LLMRequest(prompt="Once upon", model="m1", max_tokens=5, temperature=0.2, top_p=0.9,
                                      stop=["\n"], seed=7))
    assert isinstance(reply, LLMResponse)
    assert (reply.text, reply.model, reply.provider, reply.finish_reason) == ("fake reply to: Once upon", "m1", "openai", "stop")
    assert reply.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7} and reply.raw["object"] == "text_completion"
    sent = fake.requests[-1]
    assert sent["path"] == "/v1/completions" and sent["authorization"] == f"Bearer {KEY}"
    assert sent["body"] == {"prompt": "Once upon", "model": "m1", "max_tokens": 5, "temperature": 0.2, "top_p": 0.9,
                            "stop": ["\n"], "seed": 7}


def test_openai_chat_stream_models_and_status(fake, no_fallback_warning):
    with client(provider="openai", base_url=fake.url) as c:
        reply = c.generate(LLMRequest(messages=CHAT))
        assert reply.text == "fake reply to: Say hello" and fake.requests[-1]["path"] == "/v1/chat/completions"
        assert "model" not in fake.requests[-1]["body"]  # None: the server's choice
        pieces = list(c.stream_generate(LLMRequest(messages=CHAT)))
        assert "".join(pieces) == reply.text and len(pieces) > 1
        assert fake.requests[-1]["body"]["stream"] is True
        assert "".join(c.stream_generate("Once upon")) == "fake reply to: Once upon"
        assert [m["id"] for m in c.get_available_models()] == ["fake-model", "remote-model"]
        assert c.get_provider_status() == {"provider": "openai", "fallback": "stub", "base_url": fake.url, "socket": None,
                                           "status": "up", "error": None}


def test_the_daemons_headers_name_the_provider_and_attempts(fake):
    with client(provider="lan", base_url=fake.url) as c:
        reply = c.generate(LLMRequest(prompt="x", model="retried"))
        assert (reply.provider, reply.attempts) == ("lan-remote", 3)
        assert c.generate("x").provider == "lan"


def test_openai_status_of_a_dead_server(dead_url):
    status = client(provider="openai", base_url=dead_url).get_provider_status()
    assert status["status"] == "down" and "cannot connect" in status["error"] and status["base_url"] == dead_url


# ---- the fallback --------------------------------------------------------------------------


def _falls_back(c: LLMClient, request, caplog) -> LLMResponse:
    caplog.clear()
    with pytest.warns(LLMFallbackWarning, match="fallback provider 'stub'"):
        reply = c.generate(request)
    assert reply.fallback_used and reply.provider == "stub" and reply.text.startswith(STUB_MARK)
    assert any(r.name == "msting.client" and r.levelno == logging.WARNING and "fallback" in r.getMessage() for r in caplog.records)
    return reply


def test_an_unreachable_primary_falls_back_to_the_stub(dead_url, tmp_path, caplog):
    reply = _falls_back(client(provider="openai", base_url=dead_url), LLMRequest(prompt="hello", model="m"), caplog)
    assert reply.model == "stub~m"
    _falls_back(client(provider="lan", socket_path=tmp_path / "none.sock"), "hello", caplog)
    with pytest.warns(LLMFallbackWarning):
        assert list(client(provider="lan", base_url=dead_url).stream_generate("a b")) == stub_reply("a b")
    with pytest.warns(LLMFallbackWarning):
        assert [m["id"] for m in client(provider="lan", base_url=dead_url).get_available_models()] == ["stub"]


@pytest.mark.parametrize("model", ["fail-500", "fail-503", "rate-429"])
def test_a_5xx_or_a_429_falls_back(fake, model, caplog):
    _falls_back(client(provider="openai", base_url=fake.url), LLMRequest(prompt="x", model=model), caplog)
    with pytest.warns(LLMFallbackWarning):
        assert list(client(provider="openai", base_url=fake.url).stream_generate(LLMRequest(prompt="x", model=model)))


def test_a_timeout_falls_back(fake, caplog):
    _falls_back(client(provider="openai", base_url=fake.url), LLMRequest(prompt="x", model="slow", timeout=0.3), caplog)
    with pytest.raises(RequestTimeout):
        client(provider="openai", base_url=fake.url, timeout=0.3, fallback="none").generate(LLMRequest(prompt="x", model="slow"))


def test_a_wrong_request_raises_and_does_not_fall_back(fake, no_fallback_warning):
    c = client(provider="openai", base_url=fake.url)
    with pytest.raises(MstingError) as info:
        c.generate(LLMRequest(prompt="x", model="bad-400"))
    assert (info.value.status, info.value.code) == (400, "invalid_value")
    with pytest.raises(MstingError) as info:
        list(c.stream_generate(LLMRequest(prompt="x", model="bad-400")))
    assert info.value.status == 400


def test_fallback_none_raises_the_outage(dead_url, tmp_path, no_fallback_warning):
    with pytest.raises(ServerUnavailable, match="cannot connect"):
        client(provider="openai", base_url=dead_url, fallback="none").generate("x")
    with pytest.raises(DaemonUnavailable, match="not running"):
        client(environ={"LLM_PROVIDER_FALLBACK": "none"}, socket_path=tmp_path / "none.sock").generate("x")


# ---- streams that fail ----------------------------------------------------------------------


def test_a_stream_cut_short_raises_after_its_text(fake):
    c = client(provider="openai", base_url=fake.url)  # with a fallback: text was given, so it raises
    got: list[str] = []
    with pytest.raises(MstingError) as info:
        for piece in c.stream_generate(LLMRequest(prompt="one two", model="truncate")):
            got.append(piece)
    assert info.value.code == "stream_truncated" and "".join(got) == "fake reply to: one two"
    got.clear()
    with pytest.raises(MstingError) as info:
        for piece in c.stream_generate(LLMRequest(messages=CHAT, model="error-late")):
            got.append(piece)
    assert (info.value.code, info.value.message) == ("worker_crashed", "the worker died") and got


def test_a_stream_that_fails_before_any_text_falls_back(fake):
    c = client(provider="openai", base_url=fake.url)
    with pytest.warns(LLMFallbackWarning, match="worker died"):
        assert list(c.stream_generate(LLMRequest(prompt="a b", model="error-first"))) == stub_reply("a b")
    with pytest.raises(MstingError, match="worker died"):
        list(client(provider="openai", base_url=fake.url, fallback="none").stream_generate(LLMRequest(prompt="a", model="error-first")))


# ---- the daemon backends (lan, local) --------------------------------------------------------


def test_lan_over_a_unix_socket(fake_uds, no_fallback_warning):
    with client(socket_path=fake_uds.uds) as c:
        assert c.generate(LLMRequest(prompt="hi", model="m")).text == "fake reply to: hi"
        assert "".join(c.stream_generate(LLMRequest(messages=CHAT))) == "fake reply to: Say hello"
        assert len(c.get_available_models()) == 2
        status = c.get_provider_status()
    assert status["socket"] == fake_uds.uds and status["base_url"] is None and status["provider"] == "lan"
    assert status["source"] == "/v1/status" and status["daemon"]["ready"] is True  # /llm/services answered 404
    assert "socket=" in repr(c)


def test_lan_status_reads_the_services(fake):
    fake.rec.services = [{"name": "local", "api_format": "local", "status": "up", "urls": []},
                         {"name": "ollama", "api_format": "ollama", "status": "down", "urls": [{"url": "http://x", "state": "down"}]}]
    status = client(base_url=fake.url).get_provider_status()
    assert (status["status"], status["source"]) == ("up", "/llm/services") and len(status["services"]) == 2
    local = client(provider="local", base_url=fake.url).get_provider_status()
    assert [s["name"] for s in local["services"]] == ["local"] and local["provider"] == "local"


def test_local_prefixes_its_model_names(fake, no_fallback_warning):
    c = client(provider="local", base_url=fake.url)
    for asked, sent in [(None, "local~default"), ("tiny", "local~tiny"), ("local~tiny", "local~tiny"), ("local~", "local~default")]:
        c.generate(LLMRequest(prompt="x", model=asked))
        assert fake.requests[-1]["body"]["model"] == sent
    list(c.stream_generate(LLMRequest(messages=CHAT, model="tiny")))
    assert fake.requests[-1]["body"]["model"] == "local~tiny"
    with pytest.raises(ValueError, match="'ollama'"):
        c.generate(LLMRequest(prompt="x", model="ollama~llama3"))
    assert [m["id"] for m in c.get_available_models()] == ["fake-model"]  # the daemon's own workers only
    assert len(client(provider="lan", base_url=fake.url).get_available_models()) == 2


# ---- module-level functions -------------------------------------------------------------------


def test_the_module_functions_use_the_environment(monkeypatch):
    monkeypatch.setenv("LLM_PROVIDER", "stub")
    assert client_module.generate("a b").text == "".join(stub_reply("a b"))
    assert list(client_module.stream_generate(LLMRequest(prompt="a b"))) == stub_reply("a b")
    assert client_module.get_available_models()[0]["id"] == "stub"
    assert client_module.get_provider_status()["provider"] == "stub"

    async def both():
        reply = await client_module.agenerate("a b")
        pieces = [p async for p in client_module.astream_generate("a b")]
        return reply, pieces, await client_module.aget_available_models(), await client_module.aget_provider_status()

    reply, pieces, models, status = asyncio.run(both())
    assert reply.provider == "stub" and pieces == stub_reply("a b") and models[0]["id"] == "stub" and status["status"] == "up"
    monkeypatch.setenv("LLM_PROVIDER", "gpt")
    with pytest.raises(ValueError, match="LLM_PROVIDER"):
        client_module.generate("x")


# ---- async -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_over_tcp_and_a_unix_socket(fake, fake_uds, no_fallback_warning):
    for c in (aclient(provider="openai", base_url=fake.url + "/v1"), aclient(socket_path=fake_uds.uds)):
        async with c:
            reply = await c.generate(LLMRequest(prompt="hi", model="m"))
            assert (reply.text, reply.model, reply.fallback_used) == ("fake reply to: hi", "m", False)
            assert "".join([p async for p in c.stream_generate(LLMRequest(messages=CHAT))]) == "fake reply to: Say hello"
            assert len(await c.get_available_models()) == 2
            assert (await c.get_provider_status())["status"] == "up"
    async with aclient(provider="local", base_url=fake.url) as c:
        await c.generate("x")
        assert fake.requests[-1]["body"]["model"] == "local~default"


@pytest.mark.anyio
async def test_async_fallback_and_failed_streams(fake, dead_url, tmp_path):
    async with aclient(socket_path=tmp_path / "none.sock") as c:
        with pytest.warns(LLMFallbackWarning):
            reply = await c.generate("a b")
        assert reply.fallback_used and reply.text == "".join(stub_reply("a b"))
        with pytest.warns(LLMFallbackWarning):
            assert [p async for p in c.stream_generate("a b")] == stub_reply("a b")
        assert (await c.get_provider_status())["status"] == "down"
    async with aclient(provider="openai", base_url=fake.url) as c:
        with pytest.raises(MstingError) as info:
            await c.generate(LLMRequest(prompt="x", model="bad-400"))
        assert info.value.status == 400
        got: list[str] = []
        with pytest.raises(MstingError, match="without \\[DONE\\]"):
            async for piece in c.stream_generate(LLMRequest(prompt="x y", model="truncate")):
                got.append(piece)
        assert got
        with pytest.warns(LLMFallbackWarning):
            assert (await c.generate(LLMRequest(prompt="x", model="fail-503"))).fallback_used
    async with aclient(provider="openai", base_url=dead_url, fallback="none") as c:
        with pytest.raises(ServerUnavailable):
            await c.generate("x")


def test_the_package_exports_every_public_name_and_imports_the_interface_lazily():
    import subprocess
    import sys

    assert all(getattr(client_module, name) is not None for name in client_module.__all__)
    assert set(client_module._LAZY) | {"DaemonUnavailable", "MstingClient", "MstingError", "RequestTimeout"} == set(client_module.__all__)
    code = ("import sys, msting.client; print(sorted(m for m in sys.modules if m.startswith(('msting.client.service', "
            "'msting.config', 'msting.providers', 'httpcore', 'anyio'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("error, outage", [
    (DaemonUnavailable("gone"), True),
    (ServerUnavailable("gone"), True),
    (RequestTimeout("slow"), True),
    (MstingError(500, "server_error", None, "x"), True),
    (MstingError(502, "upstream_error", None, "x"), True),
    (MstingError(429, "rate_limit_error", None, "x"), True),
    (MstingError(400, "invalid_request_error", None, "x"), False),
    (MstingError(401, "authentication_error", "invalid_api_key", "x"), False),
    (MstingError(404, "not_found_error", "model_not_found", "x"), False),
    (MstingError(200, "server_error", "stream_truncated", "x"), True),
    (MstingError(200, "server_error", "worker_crashed", "x"), True),
    (MstingError(200, "invalid_request_error", "context_length_exceeded", "x"), False),
    (MstingError(None, "client_error", None, "x"), False),
    (ValueError("x"), False),
])
def test_what_counts_as_an_outage(error, outage):
    assert client_module.is_outage(error) is outage
