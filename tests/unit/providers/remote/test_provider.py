"""msting.providers.remote.provider: a RemoteProvider (its config parsed from a config
dict, as config.yaml's llm.services gives it) against real stand-in upstream servers
(tests/upstreams, one subprocess each), speaking the openai, ollama and anthropic
formats over real sockets, and failing as told by the stand-ins' fault-injection API.

The stand-ins of the module are shared and reset before each test; the tests that kill
a stand-in start their own. Timeouts are small, so the whole module takes seconds; the
only time assertion is a lower bound the protocol guarantees (no retry before a
Retry-After has passed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

import pytest
from upstreams.fixtures import StandIn
from upstreams.plugin import standin, standin_module  # noqa: F401  (pytest fixtures)
from upstreams.text import reply

from msting.api.errors import InvalidRequest, MstingError, Timeout, Unavailable, UpstreamError
from msting.api.events import Done, Event, Failed, Token
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message
from msting.config.schema import parse_config
from msting.config.services import RemoteServiceConfig
from msting.providers.remote.provider import RemoteProvider

SECRET = "sk-standin-secret-4242"
KEY_VAR = "LAN_TEST_KEY"
MAX_TOKENS = 32  # above the stand-ins' natural reply (12 words): replies end on their own
PROMPT = "the quick brown fox"
TEXT = reply(PROMPT).text  # what every stand-in answers to PROMPT
FAST = {  # llm.services.<name>.upstream: small timeouts, quick backoff, no health monitor running
    "short_timeout_sec": 1.0, "first_token_timeout_sec": 0.5, "long_timeout_sec": 5.0, "health_interval_sec": 60.0,
    "max_attempts": 3, "backoff_initial_sec": 0.01, "backoff_max_sec": 0.05,
    "breaker_failures": 3, "breaker_window_sec": 30.0, "breaker_cooldown_sec": 5.0,
}
MODELS = {"openai": "gpt-standin", "ollama": "llama-standin", "anthropic": "claude-standin"}
PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat", "anthropic": "/v1/messages"}


def chat(model: str | None = None, text: str = PROMPT) -> ChatRequest:
    return ChatRequest((Message("user", text),), model)


def service_config(api_format: str, urls: list[str], *, models: tuple[str, ...] = (), default_model: str | None = None,
                   key: bool = True, **upstream: Any) -> RemoteServiceConfig:
    """The service `lan` as parse_config reads it from config.yaml's data."""
    service: dict[str, Any] = {"api_format": api_format, "urls": urls, "upstream": {**FAST, **upstream},
                               "default_model": default_model or MODELS[api_format]}
    if models:
        service["models"] = list(models)
    if key:
        service["api_key_env_var"] = KEY_VAR
    svc = parse_config({"llm": {"services": {"lan": service}}}, None).llm.service("lan")
    assert svc is not None
    return svc


@contextlib.asynccontextmanager
async def provider(cfg: RemoteServiceConfig, env: dict[str, str] | None = None) -> AsyncIterator[RemoteProvider]:
    p = RemoteProvider(cfg, env={KEY_VAR: SECRET} if env is None else env, max_tokens=MAX_TOKENS, temperature=0.5,
                       rng=random.Random(1))
    try:
        yield p
    finally:
        await p.close()


def run(cfg: RemoteServiceConfig, body: Callable[[RemoteProvider], Any], env: dict[str, str] | None = None) -> Any:
    async def main() -> Any:
        async with provider(cfg, env) as p:
            return await body(p)

    return asyncio.run(main())


async def events_of(p: RemoteProvider, request) -> list[Event]:
    async with p.stream(request) as stream:
        return [e async for e in stream]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


def attempts_of(result: Done) -> list[tuple[str | None, bool]]:
    """(url, failed?) per attempt."""
    return [(a.url, a.error is not None) for a in result.attempts]


# ---- the stand-ins ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def _upstreams(standin_module) -> dict[str, StandIn]:  # noqa: F811
    """The module's stand-ins, started at once (each is a process of its own)."""
    kinds = {
        "openai": ("openai", {"models": [MODELS["openai"], "embed-standin"], "api_key": SECRET}),
        "openai2": ("openai", {"models": [MODELS["openai"], "embed-standin"], "api_key": SECRET}),
        "ollama": ("ollama", {"models": [MODELS["ollama"], "nomic-standin"]}),
        "anthropic": ("anthropic", {"models": [MODELS["anthropic"]], "api_key": SECRET}),
    }
    with ThreadPoolExecutor(len(kinds)) as pool:
        started = {name: pool.submit(standin_module, api, **kw) for name, (api, kw) in kinds.items()}
        return {name: future.result() for name, future in started.items()}


class Upstreams:
    """The module's stand-ins by name, each reset (models, fault, request log) the first
    time a test asks for it."""

    def __init__(self, standins: dict[str, StandIn]):
        self._standins = standins
        self._fresh: set[str] = set()

    def __getitem__(self, name: str) -> StandIn:
        s = self._standins[name]
        if name not in self._fresh:
            s.reset()
            self._fresh.add(name)
        return s


@pytest.fixture
def up(_upstreams: dict[str, StandIn]) -> Upstreams:
    return Upstreams(_upstreams)


@pytest.fixture
def two(up: Upstreams) -> tuple[StandIn, StandIn]:
    """Two equal OpenAI-compatible stand-ins, the URLs of one service (the first is tried first)."""
    return up["openai"], up["openai2"]


# ---- each format ------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "ollama", "anthropic"])
def test_generate_gets_the_whole_reply_streamed_from_the_upstream(up: Upstreams, api: str) -> None:
    s = up[api]
    done = run(service_config(api, [s.api_base]), lambda p: p.generate(chat()))
    assert done.text == TEXT
    assert (done.model, done.finish_reason) == (MODELS[api], "stop")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 12)
    [attempt] = done.attempts
    assert (attempt.service, attempt.url, attempt.error) == ("lan", s.url, None)
    [sent] = s.requests(PATHS[api])
    assert sent["body"]["stream"] is True  # generation is always streamed upstream
    assert sent["body"]["model"] == MODELS[api]


@pytest.mark.parametrize("api", ["openai", "ollama", "anthropic"])
def test_stream_yields_the_replys_tokens_then_done(up: Upstreams, api: str) -> None:
    s = up[api]
    events = run(service_config(api, [s.api_base]), lambda p: events_of(p, chat("default")))
    assert text_of(events) == TEXT
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop" and done.usage.completion_tokens == 12
    assert [(a.url, a.error) for a in done.attempts] == [(s.url, None)]
    assert all(isinstance(e, Token) for e in events[:-1])


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_a_raw_prompt_is_continued_by_the_formats_that_have_completions(up: Upstreams, api: str) -> None:
    s = up[api]

    async def both(p: RemoteProvider) -> tuple[Done, list[Event]]:
        return await p.generate(CompletionRequest(PROMPT, None)), await events_of(p, CompletionRequest(PROMPT, None))

    done, events = run(service_config(api, [s.api_base]), both)
    assert done.text == TEXT and text_of(events) == TEXT
    assert {r["path"] for r in s.requests()} == {"/v1/completions" if api == "openai" else "/api/generate"}


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_embed_gets_a_vector_per_input(up: Upstreams, api: str) -> None:
    s = up[api]
    model = "embed-standin" if api == "openai" else "nomic-standin"
    result = run(service_config(api, [s.api_base]), lambda p: p.embed(EmbeddingRequest(("a", "b c"), model)))
    assert result.model == model and len(result.vectors) == 2 and all(len(v) == 8 for v in result.vectors)
    assert result.vectors[0] != result.vectors[1]
    assert [(a.url, a.error) for a in result.attempts] == [(s.url, None)]


@pytest.mark.parametrize("call", ["embed", "generate", "stream"])
def test_what_the_anthropic_api_cannot_do_is_refused_naming_it(up: Upstreams, call: str) -> None:
    s = up["anthropic"]

    async def body(p: RemoteProvider) -> None:
        if call == "embed":
            await p.embed(EmbeddingRequest(("a",), None))
        elif call == "generate":
            await p.generate(CompletionRequest(PROMPT, None))
        else:
            p.stream(CompletionRequest(PROMPT, None))  # refused before any stream exists

    with pytest.raises(InvalidRequest) as exc:
        run(service_config("anthropic", [s.api_base]), body)
    assert exc.value.code == "unsupported_by_provider"
    assert "anthropic" in exc.value.message and "'lan'" in exc.value.message
    assert exc.value.details["param"] == ("model" if call == "embed" else "prompt")
    assert s.requests() == []  # nothing was sent


def test_anthropic_capabilities_say_so(up: Upstreams) -> None:
    async def body(p: RemoteProvider) -> dict:
        return p.status()

    status = run(service_config("anthropic", [up["anthropic"].api_base]), body)
    assert status["capabilities"] == {"chat": True, "completions": False, "stream": True, "embed": False, "tools": True}


# ---- failures within a reply -----------------------------------------------------------


def test_a_generate_survives_a_stream_cut_mid_reply_on_one_url(two: tuple[StandIn, StandIn]) -> None:
    a, b = two
    a.fault("cut", after_chunks=3, count=1)
    done = run(service_config("openai", [a.api_base, b.api_base]), lambda p: p.generate(chat()))
    assert done.text == TEXT and done.finish_reason == "stop"  # complete: the cut reply was retried whole
    assert attempts_of(done) == [(a.url, True), (b.url, False)]
    assert a.requests()[0]["fault"] == "cut"


def test_a_stream_cut_before_its_first_content_is_retried_unseen(two: tuple[StandIn, StandIn]) -> None:
    a, b = two
    a.fault("cut", after_chunks=0, count=1)
    events = run(service_config("openai", [a.api_base, b.api_base]), lambda p: events_of(p, chat()))
    assert text_of(events) == TEXT and isinstance(events[-1], Done)
    assert attempts_of(events[-1]) == [(a.url, True), (b.url, False)]


@pytest.mark.parametrize("api", ["openai", "ollama", "anthropic"])
def test_a_stream_cut_after_its_first_content_ends_with_failed_never_done(up: Upstreams, api: str) -> None:
    s = up[api]
    s.fault("cut", after_chunks=3, count=1)

    async def body(p: RemoteProvider) -> tuple[list[Event], RemoteProvider]:
        return await events_of(p, chat()), p

    events, p = run(service_config(api, [s.api_base]), body)
    assert not any(isinstance(e, Done) for e in events)
    assert text_of(events) and TEXT.startswith(text_of(events)) and text_of(events) != TEXT
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert isinstance(failed.error, UpstreamError) and failed.error.code == "upstream_stream_broken"
    assert failed.error.details["incomplete"] is True and failed.error.details["url"] == s.url
    assert len(s.requests(PATHS[api])) == 1  # not retried: the client has part of the reply
    assert p.pool.urls[0].in_flight == 0  # the URL was released


@pytest.mark.parametrize("call", ["generate", "stream"])
def test_a_first_token_slower_than_first_token_timeout_fails_over_to_the_other_url(
        two: tuple[StandIn, StandIn], call: str) -> None:
    a, b = two
    a.fault("slow_first", delay=2.0, count=1)
    cfg = service_config("openai", [a.api_base, b.api_base], first_token_timeout_sec=0.3)
    if call == "generate":
        done = run(cfg, lambda p: p.generate(chat()))
    else:
        events = run(cfg, lambda p: events_of(p, chat()))
        assert text_of(events) == TEXT
        done = events[-1]
    assert done.text == (TEXT if call == "generate" else "")
    assert attempts_of(done) == [(a.url, True), (b.url, False)]
    assert done.attempts[0].error.startswith(f"lan ({a.url}) did not answer in time")
    (asked_a,), (asked_b,) = a.requests(PATHS["openai"]), b.requests(PATHS["openai"])
    assert asked_b["monotonic"] - asked_a["monotonic"] < 2.0  # b was not kept waiting for a's slow first token


def test_a_429_with_retry_after_on_a_single_url_is_retried_after_it(up: Upstreams) -> None:
    s = up["openai"]
    retry_after = 1.0
    s.fault("status", status=429, retry_after=retry_after, count=1)
    cfg = service_config("openai", [s.api_base], first_token_timeout_sec=2.0)  # the longest wait for a cooling URL
    done = run(cfg, lambda p: p.generate(chat()))
    assert done.text == TEXT
    assert attempts_of(done) == [(s.url, True), (s.url, False)]
    assert "answered HTTP 429" in done.attempts[0].error
    first, second = s.requests(PATHS["openai"])
    gap = second["monotonic"] - first["monotonic"]
    assert gap >= retry_after, f"the retry came {gap:.3f} s after a 429 with Retry-After: {retry_after:g}"
    assert (first["fault"], second["fault"]) == ("status", None)


def test_a_429_whose_retry_after_is_longer_than_the_wait_allowed_gives_up_saying_when(up: Upstreams) -> None:
    s = up["openai"]
    s.fault("status", status=429, retry_after=30, count=1)
    with pytest.raises(Unavailable) as exc:
        run(service_config("openai", [s.api_base]), lambda p: p.generate(chat()))
    assert exc.value.code == "upstream_unavailable" and exc.value.retry_after == 30
    assert len(s.requests(PATHS["openai"])) == 1
    assert [a["url"] for a in exc.value.details["attempts"]] == [s.url]


@pytest.mark.parametrize("call", ["generate", "stream"])
def test_a_hanging_upstream_times_out_into_the_next_attempt(up: Upstreams, call: str) -> None:
    s = up["openai"]
    s.fault("hang", count=1)
    cfg = service_config("openai", [s.api_base], first_token_timeout_sec=0.3)
    if call == "generate":
        done = run(cfg, lambda p: p.generate(chat()))
        assert done.text == TEXT
    else:
        events = run(cfg, lambda p: events_of(p, chat()))
        assert text_of(events) == TEXT
        done = events[-1]
    assert attempts_of(done) == [(s.url, True), (s.url, False)]
    assert "did not answer in time" in done.attempts[0].error
    assert [r["fault"] for r in s.requests(PATHS["openai"])] == ["hang", None]


def test_a_hang_on_every_attempt_is_a_timeout_listing_each(up: Upstreams) -> None:
    s = up["openai"]
    s.fault("hang")
    cfg = service_config("openai", [s.api_base], first_token_timeout_sec=0.2, max_attempts=2)
    with pytest.raises(Timeout) as exc:
        run(cfg, lambda p: p.generate(chat()))
    assert exc.value.code == "upstream_timeout"
    assert [(a["url"], a["error"]) for a in exc.value.details["attempts"]] == [
        (s.url, f"lan ({s.url}) did not answer in time")] * 2
    assert exc.value.details["retryable"] is True


def test_a_500_on_every_url_is_an_upstream_error_after_max_attempts(two: tuple[StandIn, StandIn]) -> None:
    a, b = two
    for s in two:
        s.fault("status", status=500, message="the engine fell over")
    with pytest.raises(UpstreamError) as exc:
        run(service_config("openai", [a.api_base, b.api_base]), lambda p: p.generate(chat()))
    assert exc.value.code == "upstream_error" and exc.value.details["upstream_status"] == 500
    assert "the engine fell over" in exc.value.message
    assert [t["url"] for t in exc.value.details["attempts"]] == [a.url, b.url, a.url]


def test_an_unknown_model_is_not_retried(two: tuple[StandIn, StandIn]) -> None:
    a, b = two
    with pytest.raises(MstingError) as exc:
        run(service_config("openai", [a.api_base, b.api_base]), lambda p: p.generate(chat("nope")))
    assert exc.value.code == "model_not_found" and exc.value.details["retryable"] is False
    assert len(a.requests()) + len(b.requests()) == 1


# ---- health, discovery ------------------------------------------------------------------


def test_a_killed_url_goes_down_and_comes_back_up_after_a_restart(standin) -> None:  # noqa: F811
    a = standin("openai", models=[MODELS["openai"]], api_key=SECRET)
    b = standin("openai", models=[MODELS["openai"]], api_key=SECRET)
    cfg = service_config("openai", [a.api_base, b.api_base])

    async def body(p: RemoteProvider) -> None:
        ping = await p.ping()
        assert ping["status"] == "ready" and [u["ok"] for u in ping["urls"]] == [True, True]
        a.kill()
        ping = await p.ping()
        assert (ping["status"], ping["reason"]) == ("degraded", "1 of 2 URLs are down")
        assert [u["ok"] for u in ping["urls"]] == [False, True]
        assert ping["urls"][0]["error"].startswith(f"cannot connect to lan at {a.url}")
        states = p.status()["urls"]
        assert [u["state"] for u in states] == ["down", "up"]
        assert states[0]["last_error"].startswith("health check: cannot connect") and states[0]["cooling_until"]
        # a request goes to the URL that is up, without trying the down one
        done = await p.generate(chat())
        assert attempts_of(done) == [(b.url, False)]
        a.restart()
        ping = await p.ping()
        assert ping["status"] == "ready" and [u["ok"] for u in ping["urls"]] == [True, True]
        assert [u["state"] for u in p.status()["urls"]] == ["up", "up"]
        assert (await p.generate(chat())).attempts[0].url == a.url  # its turn again
        # every URL down: the service is failed, and a request says so at once
        a.kill()
        b.kill()
        ping = await p.ping()
        assert (ping["status"], ping["reason"]) == ("failed", "every URL is down")
        assert {m.state for m in p.models()} == {"unreachable"}
        with pytest.raises(Unavailable) as exc:
            await p.generate(chat())
        assert exc.value.message.startswith("every URL of lan is down")
        assert [t["url"] for t in exc.value.details["attempts"]] == [a.url, b.url]

    run(cfg, body)


def test_discovery_picks_up_a_model_added_live_and_drops_a_removed_one(up: Upstreams) -> None:
    s = up["openai"]
    cfg = service_config("openai", [s.api_base], models=("configured-only",))

    async def body(p: RemoteProvider) -> None:
        assert p.catalog.names() == ["configured-only", MODELS["openai"]]  # before any check: the config's list
        await p.ping()
        assert p.catalog.names() == ["configured-only", MODELS["openai"], "embed-standin"]
        s.set_models(add=["fresh-standin"])
        await p.ping()
        assert "fresh-standin" in [m.id for m in p.models()]
        assert "fresh-standin" in p.status()["models"]
        info = p.model("fresh-standin")
        assert (info.service, info.upstream, info.state) == ("lan", "fresh-standin", "available")
        assert (await p.generate(chat("fresh-standin"))).text == TEXT  # and it answers
        s.set_models(remove=["fresh-standin", "embed-standin"])
        await p.ping()
        assert p.catalog.names() == ["configured-only", MODELS["openai"]]  # the configured ones stay
        assert p.status()["discovery"]["refreshed_at"] is not None

    run(cfg, body)


def test_discovery_can_be_turned_off(up: Upstreams) -> None:
    s = up["openai"]

    async def body(p: RemoteProvider) -> list[str]:
        await p.ping()
        return p.catalog.names()

    assert run(service_config("openai", [s.api_base], enable_discovery=False), body) == [MODELS["openai"]]


# ---- the API key ------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_the_api_key_is_sent_and_never_shown(up: Upstreams, api: str) -> None:
    s = up[api]

    async def body(p: RemoteProvider) -> tuple[Done, dict, dict, list[Event]]:
        return await p.generate(chat()), p.status(), await p.ping(), await events_of(p, chat())

    done, status, ping, events = run(service_config(api, [s.api_base]), body)
    assert done.text == TEXT and text_of(events) == TEXT  # the stand-in checks the key: it was sent
    assert all(r["auth"] for r in s.requests())
    assert status["key_source"] == f"env {KEY_VAR}"
    for shown in (status, ping, [a.as_dict() for a in done.attempts]):
        assert SECRET not in json.dumps(shown)


@pytest.mark.parametrize("env", [{}, {KEY_VAR: "sk-wrong-key-9999"}], ids=["no key", "a wrong key"])
def test_a_refused_key_is_an_auth_error_not_retried_that_does_not_show_the_key(up: Upstreams,
                                                                               env: dict[str, str]) -> None:
    s = up["openai"]

    async def body(p: RemoteProvider) -> tuple[MstingError, dict, dict]:
        with pytest.raises(UpstreamError) as exc:
            await p.generate(chat())
        return exc.value, await p.ping(), p.status()

    error, ping, status = run(service_config("openai", [s.api_base]), body, env=env)
    assert error.code == "upstream_auth_failed" and error.details["upstream_status"] == 401
    assert "check the service's API key" in error.message
    assert len(error.details["attempts"]) == 1 and error.details["retryable"] is False
    assert not ping["urls"][0]["ok"]
    shown = json.dumps([error.message, error.details, ping, status])
    assert SECRET not in shown and "sk-wrong-key-9999" not in shown


def test_a_key_given_in_the_config_is_sent_and_masked(up: Upstreams) -> None:
    s = up["openai"]
    data = {"llm": {"services": {"lan": {"api_format": "openai", "urls": [s.api_base], "api_key": SECRET,
                                         "default_model": MODELS["openai"], "upstream": FAST}}}}
    config = parse_config(data, None)
    cfg = config.llm.service("lan")
    assert SECRET not in repr(cfg) and SECRET not in json.dumps(config.as_dict())

    async def body(p: RemoteProvider) -> tuple[Done, dict]:
        return await p.generate(chat()), p.status()

    done, status = run(cfg, body, env={})
    assert done.text == TEXT and status["key_source"] == "config" and SECRET not in json.dumps(status)


def test_leaving_a_stream_early_releases_its_url(up: Upstreams) -> None:
    s = up["openai"]

    async def body(p: RemoteProvider) -> tuple[Event, int, int]:
        stream = p.stream(chat())
        first = await stream.__aiter__().__anext__()
        during = p.pool.urls[0].in_flight
        await stream.aclose()
        return first, during, p.pool.urls[0].in_flight

    first, during, after = run(service_config("openai", [s.api_base]), body)
    assert isinstance(first, Token) and TEXT.startswith(first.text)
    assert (during, after) == (1, 0)
