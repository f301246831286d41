"""msting.client's application interface against a real daemon and real workers: lan over
the Unix socket (found through MSTING_HOME) and over TCP (LLM_BASE_URL), the local
provider's names, async, and the stub answering once the daemon is stopped."""

from __future__ import annotations

import asyncio
import warnings

import pytest

import msting.client as client_module
from msting.client import AsyncLLMClient, LLMClient, LLMFallbackWarning, LLMRequest, MstingError
from msting.providers.stub import STUB_MARK, stub_reply

pytestmark = pytest.mark.e2e

CHAT = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story."}]
LLM_VARIABLES = ("LLM_PROVIDER", "LLM_BASE_URL", "LLM_API_KEY", "LLM_TIMEOUT_SECS", "LLM_PROVIDER_FALLBACK")


@pytest.fixture
def service(daemon_home, monkeypatch):
    """A started daemon; this process's MSTING_HOME is its home, and no LLM_* variable is set."""
    daemon_home.start()
    monkeypatch.setenv("MSTING_HOME", str(daemon_home.home))
    monkeypatch.setenv("MSTING_LLM_PORT", str(daemon_home.port))
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMFallbackWarning)  # a test that expects one says so
        yield daemon_home


def _check_generation(c: LLMClient) -> None:
    reply = c.generate(LLMRequest(prompt="Once upon a time", max_tokens=8, temperature=0))
    assert reply.text and reply.model == "msting-tiny" and not reply.fallback_used and reply.attempts >= 1
    assert reply.provider in ("lan", "local") and not reply.text.startswith(STUB_MARK)
    assert 0 < reply.usage["completion_tokens"] <= 8 and reply.finish_reason in ("stop", "length")
    pieces = list(c.stream_generate(LLMRequest(prompt="Once upon a time", max_tokens=8, temperature=0)))
    assert pieces and "".join(pieces) == reply.text
    chat = c.generate(LLMRequest(messages=CHAT, max_tokens=6, temperature=0))
    assert chat.text and chat.raw["object"] == "chat.completion"
    assert "".join(c.stream_generate(LLMRequest(messages=CHAT, max_tokens=6, temperature=0))) == chat.text
    assert "msting-tiny" in [m["id"] for m in c.get_available_models()]


def test_lan_over_the_socket_and_over_tcp(service):
    with LLMClient() as c:  # the socket of the daemon MSTING_HOME names
        _check_generation(c)
        status = c.get_provider_status()
    assert (status["provider"], status["fallback"], status["status"], status["error"]) == ("lan", "stub", "up", None)
    assert status["socket"] == str(service.socket) and status["base_url"] is None
    assert status["source"] in ("/llm/services", "/v1/status")
    if status["source"] == "/llm/services":
        assert "local" in [s["name"] for s in status["services"]]
    for url in (service.url, service.url + "/v1"):
        with LLMClient(environ={"LLM_BASE_URL": url}) as c:
            _check_generation(c)
            status = c.get_provider_status()
        assert status["status"] == "up" and status["base_url"] == service.url and status["socket"] is None
    with pytest.raises(MstingError) as info:  # a wrong request is an error, not a fallback
        LLMClient().generate(LLMRequest(prompt="x", model="missing"))
    assert info.value.status == 404
    assert client_module.generate(LLMRequest(prompt="Hello", max_tokens=4)).model == "msting-tiny"  # the module's own
    assert client_module.get_provider_status()["status"] == "up"


def test_the_local_provider_names_the_daemons_own_models(service):
    with LLMClient(environ={"LLM_PROVIDER": "local"}) as c:
        for model in (None, "msting-tiny", "local~msting-tiny", "default"):
            reply = c.generate(LLMRequest(prompt="Hello", model=model, max_tokens=4, temperature=0))
            assert reply.model == "msting-tiny" and reply.text and not reply.fallback_used
        assert "".join(c.stream_generate(LLMRequest(prompt="Hello", max_tokens=4, temperature=0))) == reply.text
        assert [m["id"] for m in c.get_available_models()] == ["msting-tiny"]
        status = c.get_provider_status()
        assert status["provider"] == "local" and status["status"] == "up"
        if status["source"] == "/llm/services":
            assert [s["name"] for s in status["services"]] == ["local"]
        with pytest.raises(ValueError, match="local~NAME"):
            c.generate(LLMRequest(prompt="Hello", model="stub~x"))
        with pytest.raises(MstingError) as info:
            c.generate(LLMRequest(prompt="Hello", model="missing"))
        assert info.value.status == 404


def test_async_over_the_socket_and_over_tcp(service):
    async def run(c: AsyncLLMClient) -> None:
        async with c:
            reply = await c.generate(LLMRequest(prompt="Once upon a time", max_tokens=8, temperature=0))
            assert reply.model == "msting-tiny" and reply.text and not reply.fallback_used
            pieces = [p async for p in c.stream_generate(LLMRequest(prompt="Once upon a time", max_tokens=8, temperature=0))]
            assert "".join(pieces) == reply.text
            assert "msting-tiny" in [m["id"] for m in await c.get_available_models()]
            assert (await c.get_provider_status())["status"] == "up"

    asyncio.run(run(AsyncLLMClient()))
    asyncio.run(run(AsyncLLMClient(environ={"LLM_BASE_URL": service.url})))
    asyncio.run(run(AsyncLLMClient(environ={"LLM_PROVIDER": "local"})))


def test_falls_back_to_stub_with_the_daemon_stopped(service, caplog):
    with LLMClient() as c:
        assert not c.generate(LLMRequest(prompt="Hello there", max_tokens=4)).fallback_used
    service.stop()
    with LLMClient() as c:
        with pytest.warns(LLMFallbackWarning, match="not running"):
            reply = c.generate(LLMRequest(prompt="Hello there", max_tokens=4))
        assert reply.fallback_used and reply.provider == "stub" and reply.model == "stub~stub"
        assert reply.text == "".join(stub_reply("Hello there", 4))
        assert any(r.name == "msting.client" and "fallback" in r.getMessage() for r in caplog.records)
        with pytest.warns(LLMFallbackWarning):
            assert list(c.stream_generate("Hello there")) == stub_reply("Hello there")
        status = c.get_provider_status()
        assert status["status"] == "down" and "not running" in status["error"] and status["fallback"] == "stub"
    with LLMClient(environ={"LLM_BASE_URL": service.url}) as c, pytest.warns(LLMFallbackWarning, match="cannot connect"):
        assert c.generate("Hello").fallback_used
    with pytest.raises(MstingError, match="not running"):
        LLMClient(environ={"LLM_PROVIDER_FALLBACK": "none"}).generate("Hello")

    async def fallback():
        async with AsyncLLMClient() as c:
            return await c.generate("Hello there")

    with pytest.warns(LLMFallbackWarning):
        assert asyncio.run(fallback()).fallback_used
