"""The application client's `openai` provider against tests/upstreams' OpenAI-compatible
stand-in (a separate process that speaks the real wire, proven with the official openai
package), and the fallback decision under the stand-in's faults: an error status, a
dropped connection, a stream cut before or after its first text, a slow first token."""

from __future__ import annotations

import warnings

import pytest
from upstreams.plugin import standin_module  # noqa: F401  (pytest fixture)

from msting.client import LLMClient, LLMFallbackWarning, LLMRequest, MstingError, RequestTimeout
from msting.providers.stub import stub_reply

KEY = "sk-standin-key"
PROMPT = "Tell me about the quick brown fox"


@pytest.fixture(scope="module")
def _openai(standin_module):  # noqa: F811
    return standin_module("openai", models=["gpt-standin"], api_key=KEY)


@pytest.fixture
def oa(_openai):
    _openai.reset()
    return _openai


def client(oa, **kw) -> LLMClient:
    kw.setdefault("api_key", KEY)
    return LLMClient(environ={}, provider="openai", base_url=oa.api_base, **kw)


def test_generate_chat_stream_models_and_status(oa):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMFallbackWarning)
        with client(oa) as c:
            reply = c.generate(LLMRequest(prompt=PROMPT, model="gpt-standin", max_tokens=3))
            assert (reply.text, reply.model, reply.provider, reply.finish_reason) == ("tell me about", "gpt-standin", "openai", "length")
            assert reply.usage["completion_tokens"] == 3 and not reply.fallback_used
            chat = c.generate(LLMRequest(messages=[{"role": "user", "content": PROMPT}], model="gpt-standin", max_tokens=4))
            assert chat.text == "tell me about the"
            pieces = list(c.stream_generate(LLMRequest(messages=[{"role": "user", "content": PROMPT}], model="gpt-standin",
                                                       max_tokens=4)))
            assert "".join(pieces) == chat.text and len(pieces) == 4
            assert "".join(c.stream_generate(LLMRequest(prompt=PROMPT, model="gpt-standin", max_tokens=2))) == "tell me"
            assert [m["id"] for m in c.get_available_models()] == ["gpt-standin"]
            assert c.get_provider_status()["status"] == "up"
    assert all(r["auth"] for r in oa.requests())


def test_a_wrong_key_raises_without_falling_back(oa):
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMFallbackWarning)
        with pytest.raises(MstingError) as info:
            client(oa, api_key="wrong").generate(LLMRequest(prompt=PROMPT, model="gpt-standin"))
    assert info.value.status == 401
    status = client(oa, api_key="wrong").get_provider_status()
    assert status["status"] == "down" and "401" in status["error"] and "wrong" not in str(status)


@pytest.mark.parametrize("fault", [dict(mode="status", status=503, retry_after=1), dict(mode="status", status=429),
                                   dict(mode="drop"), dict(mode="cut", after_chunks=0)])
def test_an_outage_falls_back_to_the_stub(oa, fault):
    oa.fault(**fault)
    with client(oa) as c:
        with pytest.warns(LLMFallbackWarning):
            assert list(c.stream_generate(LLMRequest(prompt="a b", model="gpt-standin"))) == stub_reply("a b")
        with pytest.warns(LLMFallbackWarning):
            assert c.generate(LLMRequest(prompt="a b", model="gpt-standin")).fallback_used


def test_a_bad_request_status_raises(oa):
    oa.fault("status", status=400, message="bad things")
    with pytest.raises(MstingError) as info:
        client(oa).generate(LLMRequest(prompt=PROMPT, model="gpt-standin"))
    assert info.value.status == 400


def test_a_stream_cut_after_text_raises(oa):
    oa.fault("cut", after_chunks=2)
    got: list[str] = []
    with pytest.raises(MstingError):
        for piece in client(oa).stream_generate(LLMRequest(prompt=PROMPT, model="gpt-standin")):
            got.append(piece)
    assert "".join(got) == "tell me"


def test_a_slow_first_token_past_the_timeout_falls_back(oa):
    oa.fault("slow_first", delay=2)
    with pytest.warns(LLMFallbackWarning, match="did not answer in time"):
        reply = client(oa, timeout=0.4).generate(LLMRequest(prompt="a b", model="gpt-standin"))
    assert reply.fallback_used
    with pytest.raises(RequestTimeout):
        client(oa, timeout=0.4, fallback="none").generate(LLMRequest(prompt="a b", model="gpt-standin"))
