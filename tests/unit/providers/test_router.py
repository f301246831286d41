"""msting.providers.router: `service~model` name resolution (bare names by unique match,
close matches, ambiguity), the request copy each provider gets, the public names of
replies and model lists, and the fallback chain across services (generate, embed,
stream; a stream fails over only before its first event).

The router's contract is msting.providers.base.Provider, so most tests use small
providers of that shape that record what they were asked and fail as told. The last
ones put the real `local` provider (a LocalService on real models of a real GGUF file)
behind the router."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from msting.api.errors import (InvalidRequest, MstingError, NotFound, ServerError, Timeout, Unavailable, UpstreamError,
                               unknown_model)
from msting.api.events import Attempt, Done, Embeddings, Event, Failed, Token, ToolCallDelta, Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.api.tools import Tool, ToolCall
from msting.config import resolve_paths
from msting.daemon.local.service import LocalService
from msting.daemon.store import Store
from msting.providers.base import Capabilities, ModelInfo, ProviderHealth
from msting.providers.local import LocalProvider
from msting.providers.router import RoutedStream, Router
from msting.providers.stub import STUB_MARK, StubProvider

from local_testing import build, make_config, spec, stop_all

HI = [Token("hi")]  # what a FakeStream yields before its Done, unless told otherwise


@dataclass
class FakeStream:
    """A provider's stream: `script` is what it yields in order (an MstingError in it is
    raised at that point); a Done at the end unless the script ends in Done or Failed."""

    model: str
    request: object
    script: list
    attempts: tuple = ()
    closed: bool = False

    def __aiter__(self):
        return self._events()

    async def _events(self):
        for item in self.script:
            if isinstance(item, MstingError):
                raise item
            yield item
            if isinstance(item, (Done, Failed)):
                return
        yield Done(self.model, "", "stop", attempts=self.attempts)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeProvider:
    """A provider serving `model_names` (the first is its default, unless `no_default`);
    it records each request. `fails` is raised by generate, embed and stream() (before any
    stream exists: an admission error); `script` is what its streams yield; `own` the
    attempts it reports (a remote service lists its URLs' attempts)."""

    name: str
    model_names: list[str]
    capabilities: Capabilities = field(default_factory=Capabilities)
    seen: list = field(default_factory=list)
    fails: MstingError | None = None
    script: list = field(default_factory=lambda: list(HI))
    own: tuple = ()
    no_default: bool = False
    streams: list = field(default_factory=list)

    def _resolve(self, model: str | None) -> str:
        if model is None or model in ("", "default"):
            if self.no_default:
                raise InvalidRequest("model_required", f"{self.name} has no default model", param="model")
            return self.model_names[0]
        if model not in self.model_names:
            raise unknown_model(model, sorted(self.model_names))
        return model

    def _call(self, kind: str, request) -> str:
        self.seen.append((kind, request))
        if self.fails is not None:
            raise self.fails
        return self._resolve(request.model)

    async def generate(self, request) -> Done:
        model = self._call("generate", request)
        return Done(model, "text", "stop", Usage(1, 1), attempts=self.own)

    def stream(self, request) -> FakeStream:
        stream = FakeStream(self._call("stream", request), request, list(self.script), attempts=self.own)
        self.streams.append(stream)
        return stream

    async def embed(self, request) -> Embeddings:
        model = self._call("embed", request)
        return Embeddings(model, [[1.0]] * len(request.inputs), attempts=self.own)

    def models(self) -> list[ModelInfo]:
        return [self.model(n) for n in self.model_names]

    def model(self, name: str | None) -> ModelInfo:
        resolved = self._resolve(name)
        return ModelInfo(resolved, self.name, "ready", "llm", 2048, resolved == self.model_names[0] and not self.no_default, 0)

    def health(self) -> ProviderHealth:
        return ProviderHealth("ready", None)

    def status(self) -> dict:
        return {"name": self.name, "status": "ready", "models": list(self.model_names)}


@pytest.fixture
def local() -> FakeProvider:
    return FakeProvider("local", ["story", "chat"])


@pytest.fixture
def remote() -> FakeProvider:
    return FakeProvider("remote", ["big", "small"])


@pytest.fixture
def router(local: FakeProvider, remote: FakeProvider) -> Router:
    return Router([local, remote])


def generate(router: Router, model: str | None) -> Done:
    return asyncio.run(router.generate(CompletionRequest("Once", model)))


def embed(router: Router, model: str | None) -> Embeddings:
    return asyncio.run(router.embed(EmbeddingRequest(("a", "b"), model)))


def stream_events(router: Router, model: str | None) -> tuple[RoutedStream, list[Event]]:
    """The routed stream (opened in the event loop, as a route opens it) and its events."""
    async def main() -> tuple[RoutedStream, list[Event]]:
        routed = router.stream(CompletionRequest("Once", model))
        async with routed:
            return routed, [e async for e in routed]

    return asyncio.run(main())


# ---- resolve ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "service", "model"), [
    ("story", "local", "story"),  # a plain name the default service knows is the default service's
    ("big", "remote", "big"),  # a plain name only one other service lists goes there
    ("huge", "local", "huge"),  # a name nobody lists: the default service decides (and refuses it)
    ("local~story", "local", "story"),
    ("remote~big", "remote", "big"),
    ("local~", "local", ""),  # the service's default model
    ("local~default", "local", "default"),
    ("remote~", "remote", ""),
    (None, "local", None),  # the default service's default model
    ("default", "local", "default"),
    ("", "local", ""),
])
def test_resolve(router: Router, name: str | None, service: str, model: str | None) -> None:
    provider, local_name = router.resolve(name)
    assert provider.name == service
    assert local_name == model


def test_the_default_service_wins_a_name_it_lists_even_when_another_service_lists_it_too(local: FakeProvider) -> None:
    other = FakeProvider("other", ["story", "x"])
    assert Router([local, other]).resolve("story") == (local, "story")
    assert Router([local, other]).resolve("x") == (other, "x")


def test_a_plain_name_that_two_other_services_list_is_ambiguous_naming_both(local: FakeProvider) -> None:
    a, b = FakeProvider("a", ["big", "a1"]), FakeProvider("b", ["b1", "big"])
    router = Router([local, a, b])
    with pytest.raises(NotFound) as exc:
        router.resolve("big")
    assert exc.value.code == "model_ambiguous"
    assert exc.value.message == "model 'big' is served by several services; name one: a~big, b~big"
    with pytest.raises(NotFound, match="served by several services; name one: a~big, b~big$"):
        generate(router, "big")  # no close matches appended, and nobody was asked
    assert router.resolve("a~big") == (a, "big")
    assert a.seen == [] and b.seen == [] and local.seen == []


def test_a_plain_name_only_the_stub_lists_does_not_go_to_the_stub(local: FakeProvider) -> None:
    router = Router([local, StubProvider()])
    provider, model = router.resolve("stub")
    assert (provider.name, model) == ("local", "stub")
    with pytest.raises(NotFound, match="^model 'stub' is not known; known models: chat, story"):
        generate(router, "stub")
    assert router.resolve("stub~stub")[0].name == "stub"


def test_the_default_service_is_the_first_provider_unless_named(local: FakeProvider, remote: FakeProvider) -> None:
    assert Router([remote, local]).resolve("x")[0] is remote
    r = Router([local, remote], default="remote")
    assert r.resolve(None) == (remote, None)
    assert r.resolve("small") == (remote, "small")
    assert r.resolve("local~story") == (local, "story")
    assert r.resolve("chat") == (local, "chat")  # the one other service that lists it


def test_a_default_service_that_is_no_provider_is_refused_when_the_router_is_built(local: FakeProvider) -> None:
    with pytest.raises(ValueError, match="the default service 'ollama' is not one of: local"):
        Router([local], default="ollama")


def test_a_fallback_chain_naming_unknown_services_is_refused_when_the_router_is_built(local: FakeProvider) -> None:
    with pytest.raises(ValueError, match="the fallback chain names unknown services: lan, gpu"):
        Router([local], fallback_chain=("local", "lan", "gpu"))


def test_an_unknown_service_is_not_found_naming_the_services_and_the_known_models(router: Router) -> None:
    with pytest.raises(NotFound) as exc:
        router.resolve("nope~story")
    assert exc.value.code == "model_not_found"
    assert exc.value.message == "unknown service 'nope'; the services are: local, remote; known models: chat, story"


def test_the_unknown_service_message_sorts_services_and_lists_the_default_services_models(
        local: FakeProvider, remote: FakeProvider) -> None:
    with pytest.raises(NotFound) as exc:
        Router([remote, local]).resolve("nope~x")  # remote is the default service here
    assert exc.value.message == "unknown service 'nope'; the services are: local, remote; known models: big, small"


@pytest.mark.parametrize("call", ["generate", "stream", "embed", "model"])
def test_an_unknown_service_reaches_no_provider(router: Router, local: FakeProvider, remote: FakeProvider, call: str) -> None:
    async def main() -> None:
        if call == "generate":
            await router.generate(CompletionRequest("x", "nope~story"))
        elif call == "stream":
            router.stream(CompletionRequest("x", "nope~story"))
        elif call == "embed":
            await router.embed(EmbeddingRequest(("x",), "nope~story"))
        else:
            router.model("nope~story")

    with pytest.raises(NotFound, match="unknown service 'nope'"):
        asyncio.run(main())
    assert local.seen == [] and remote.seen == []


def test_an_unknown_model_is_the_providers_not_found_with_close_matches(router: Router, remote: FakeProvider) -> None:
    with pytest.raises(NotFound) as exc:
        generate(router, "remote~huge")
    assert exc.value.message == ("model 'huge' is not known; known models: big, small; "
                                 "close matches: remote~big, remote~small")
    assert exc.value.details["close_matches"] == ["remote~big", "remote~small"]
    assert [r.model for _, r in remote.seen] == ["huge"]  # the provider-local name, without the service


# ---- close matches ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "close"), [
    ("stroy", ["story"]),  # a typo of the default service's model: its bare name
    ("bgi", ["remote~big"]),  # a typo of another service's model: the name that routes there
    ("smal", ["remote~small"]),  # found as "small" and as "remote~small": listed once
    ("zzzz", []),
])
@pytest.mark.parametrize("call", ["generate", "embed", "stream", "model"])
def test_an_unknown_model_lists_its_close_matches_as_requests_name_them(router: Router, name: str, close: list[str],
                                                                          call: str) -> None:
    async def main() -> None:
        if call == "generate":
            await router.generate(CompletionRequest("x", name))
        elif call == "embed":
            await router.embed(EmbeddingRequest(("x",), name))
        elif call == "stream":
            router.stream(CompletionRequest("x", name))  # refused before any event
        else:
            router.model(name)

    with pytest.raises(NotFound) as exc:
        asyncio.run(main())
    assert exc.value.code == "model_not_found"
    assert exc.value.details["close_matches"] == close
    base = f"model '{name}' is not known; known models: chat, story"
    assert exc.value.message == (f"{base}; close matches: {', '.join(close)}" if close else base)
    assert str(exc.value) == exc.value.message


def test_close_matches_span_every_service_and_come_sorted(local: FakeProvider) -> None:
    a = FakeProvider("a", ["llama3.2:3b", "qwen"])
    b = FakeProvider("b", ["llama3.1:8b"])
    router = Router([local, a, b])
    assert router.close_matches("llama3.2") == ["a~llama3.2:3b", "b~llama3.1:8b"]
    assert router.close_matches("a~llama3.2:1b") == ["a~llama3.2:3b", "b~llama3.1:8b"]
    assert router.close_matches("stry") == ["story"]


@pytest.mark.parametrize("call", ["generate", "embed", "stream", "model"])
def test_an_unknown_service_lists_close_matches_too(router: Router, call: str) -> None:
    async def main() -> None:
        if call == "generate":
            await router.generate(CompletionRequest("x", "nope~story"))
        elif call == "embed":
            await router.embed(EmbeddingRequest(("x",), "nope~story"))
        elif call == "stream":
            router.stream(CompletionRequest("x", "nope~story"))
        else:
            router.model("nope~story")  # GET /v1/models/nope~story, /llm/models/nope~story

    with pytest.raises(NotFound) as exc:
        asyncio.run(main())
    assert exc.value.details["close_matches"] == ["story"]
    assert exc.value.message.endswith("known models: chat, story; close matches: story")


# ---- public names ----------------------------------------------------------------------


def test_public_names_are_bare_for_the_default_service_and_prefixed_for_the_others(local: FakeProvider,
                                                                                    remote: FakeProvider) -> None:
    router = Router([local, remote, StubProvider()])
    assert router.public_name("local", "story") == "story"
    assert router.public_name("remote", "big") == "remote~big"
    assert router.public_name("stub", "stub") == "stub~stub"
    other = Router([local, remote], default="remote")
    assert other.public_name("remote", "big") == "big"
    assert other.public_name("local", "story") == "local~story"


def test_the_stub_is_always_prefixed_even_as_the_default_service(local: FakeProvider) -> None:
    router = Router([StubProvider(), local], default="stub")
    assert router.public_name("stub", "stub") == "stub~stub"
    assert router.public_name("stub", "anything") == "stub~anything"
    assert [m.id for m in router.models()] == ["stub~stub", "local~story", "local~chat"]
    done = generate(router, None)
    assert done.model == "stub~stub" and done.text.startswith(STUB_MARK)
    assert generate(router, "stub~gpt-5").model == "stub~gpt-5"
    assert embed(router, "x").model == "stub~x"
    _, events = stream_events(router, "local~chat")
    assert events[-1].model == "local~chat"


# ---- the request each provider gets ----------------------------------------------------


def test_the_provider_gets_a_copy_naming_its_own_model_and_the_callers_request_is_unchanged(
        router: Router, remote: FakeProvider, local: FakeProvider) -> None:
    sampling = SamplingParams(max_tokens=9, temperature=0.3, stop=("\n",), seed=7)
    request = ChatRequest((Message("user", "hi"),), "remote~small", sampling)
    done = asyncio.run(router.generate(request))
    assert done.model == "remote~small"  # the reply names the model as requests name it
    assert request.model == "remote~small"  # the caller's request is untouched
    [(kind, seen)] = remote.seen
    assert kind == "generate"
    assert seen.model == "small"
    assert seen.messages == request.messages and seen.sampling == sampling  # only the name differs
    assert local.seen == []


def test_a_plain_name_reaches_the_default_provider_as_it_is(router: Router, local: FakeProvider) -> None:
    request = CompletionRequest("Once", "chat", SamplingParams(max_tokens=2))
    assert asyncio.run(router.generate(request)).model == "chat"
    [(_, seen)] = local.seen
    assert seen == request


def test_a_plain_name_of_another_service_reaches_it_as_it_is_and_the_reply_names_the_service(
        router: Router, remote: FakeProvider) -> None:
    request = CompletionRequest("Once", "small")
    assert asyncio.run(router.generate(request)).model == "remote~small"
    [(_, seen)] = remote.seen
    assert seen == request


def test_no_name_reaches_the_default_provider_as_none(router: Router, local: FakeProvider) -> None:
    assert generate(router, None).model == "story"
    assert local.seen[0][1].model is None


def test_stream_is_the_providers_stream_for_the_renamed_request(router: Router, remote: FakeProvider) -> None:
    request = CompletionRequest("Once", "remote~big")

    async def main() -> tuple[RoutedStream, list[Event]]:
        stream = router.stream(request)
        assert isinstance(stream, RoutedStream) and stream.model == "remote~big"  # named before the first event
        events = [e async for e in stream]
        await stream.aclose()
        return stream, events

    stream, events = asyncio.run(main())
    assert events == [Token("hi"), Done("remote~big", "", "stop", attempts=(Attempt("remote"),))]
    assert [(k, r.model) for k, r in remote.seen] == [("stream", "big")]
    [provider_stream] = remote.streams
    assert provider_stream.closed
    assert (stream.service, stream.model, stream.attempts) == ("remote", "remote~big", [Attempt("remote")])
    assert request.model == "remote~big"


def test_embed_goes_to_the_named_service(router: Router, remote: FakeProvider, local: FakeProvider) -> None:
    request = EmbeddingRequest(("a", "b"), "remote~")
    result = asyncio.run(router.embed(request))
    assert result.model == "remote~big" and len(result.vectors) == 2
    [(kind, seen)] = remote.seen
    assert kind == "embed" and seen.model == "" and seen.inputs == ("a", "b")
    assert request.model == "remote~" and local.seen == []


def test_a_reply_without_attempts_gets_one_naming_the_service(router: Router) -> None:
    done = generate(router, "remote~big")
    [attempt] = done.attempts
    assert (attempt.service, attempt.url, attempt.error) == ("remote", None, None) and attempt.ms >= 0
    [attempt] = embed(router, "chat").attempts
    assert (attempt.service, attempt.url, attempt.error) == ("local", None, None)


def test_the_providers_own_attempts_are_kept(local: FakeProvider) -> None:
    own = (Attempt("lan", "http://a", "boom", 3.0), Attempt("lan", "http://b", None, 2.0))
    lan = FakeProvider("lan", ["m"], own=own)
    router = Router([local, lan])
    assert generate(router, "m").attempts == own
    assert embed(router, "m").attempts == own
    _, events = stream_events(router, "m")
    assert events[-1].attempts == own


# ---- models ----------------------------------------------------------------------------


def test_models_lists_every_providers_models_in_provider_order_named_as_requests_name_them(router: Router) -> None:
    assert [(m.service, m.id, m.upstream, m.is_default) for m in router.models()] == [
        ("local", "story", "story", True), ("local", "chat", "chat", False),
        ("remote", "remote~big", "big", True), ("remote", "remote~small", "small", False)]


def test_an_upstream_name_the_provider_gives_is_kept() -> None:
    class Renaming(FakeProvider):
        def model(self, name):
            info = super().model(name)
            return ModelInfo(info.id, info.service, info.state, info.type, info.context_length, info.is_default, 0,
                             upstream=f"{info.id}:latest")

    router = Router([FakeProvider("local", ["story"]), Renaming("ol", ["llama"])])
    [_, llama] = router.models()
    assert (llama.id, llama.upstream) == ("ol~llama", "llama:latest")
    assert router.model("llama").upstream == "llama:latest"


@pytest.mark.parametrize(("name", "service", "model", "upstream"), [
    ("chat", "local", "chat", "chat"), ("local~", "local", "story", "story"),
    ("remote~small", "remote", "remote~small", "small"), ("remote~default", "remote", "remote~big", "big"),
    ("small", "remote", "remote~small", "small"), (None, "local", "story", "story"),
])
def test_model_resolves_across_providers(router: Router, name: str | None, service: str, model: str, upstream: str) -> None:
    info = router.model(name)
    assert (info.service, info.id, info.upstream) == (service, model, upstream)


def test_services_mark_the_default_one_and_the_fallback_chain(local: FakeProvider, remote: FakeProvider) -> None:
    router = Router([local, remote, FakeProvider("spare", ["s"])], default="remote", fallback_chain=("remote", "local"))
    assert [(s["name"], s["is_default"], s["in_fallback_chain"]) for s in router.services()] == [
        ("local", False, True), ("remote", True, True), ("spare", False, False)]
    assert router.service("spare").name == "spare"
    with pytest.raises(NotFound, match="unknown service 'nope'; the services are: local, remote, spare") as exc:
        router.service("nope")
    assert exc.value.code == "service_not_found"


# ---- the fallback chain ----------------------------------------------------------------


def chain(*providers: FakeProvider, default: str | None = None) -> Router:
    """A router whose fallback chain is every provider, in order."""
    return Router(list(providers), default=default, fallback_chain=tuple(p.name for p in providers))


def _unavailable(service: str, retry_after: int | None = None) -> Unavailable:
    return Unavailable("upstream_unavailable", f"{service} is down", retry_after=retry_after)


def _upstream(service: str) -> UpstreamError:
    return UpstreamError("upstream_error", f"{service} answered HTTP 500")


FAILURES = {
    "unavailable": lambda s: _unavailable(s),
    "timeout": lambda s: Timeout("upstream_timeout", f"{s} did not answer in time"),
    "upstream": _upstream,
    "server": lambda s: ServerError("engine_error", f"{s} crashed"),
}

CALLS = ("generate", "embed", "stream")


def call(router: Router, how: str, model: str | None) -> Done | Embeddings:
    """The answer of `router` through `how`: a generate's Done, an embed's Embeddings,
    or a stream's Done (after its tokens)."""
    if how == "generate":
        return generate(router, model)
    if how == "embed":
        return embed(router, model)
    _, events = stream_events(router, model)
    assert events[:-1] == HI, events
    return events[-1]


def asked(provider: FakeProvider) -> list[str | None]:
    return [r.model for _, r in provider.seen]


@pytest.mark.parametrize("how", CALLS)
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_service_hands_the_request_to_the_next_one_in_the_chain(how: str, failure: str) -> None:
    a = FakeProvider("a", ["m", "n"], fails=FAILURES[failure]("a"))
    b = FakeProvider("b", ["other", "m"])
    answer = call(chain(a, b), how, "m")
    assert asked(a) == ["m"] and asked(b) == ["m"]  # b lists "m": it gets the same name
    assert answer.model == "b~m"
    assert [(t.service, t.error) for t in answer.attempts] == [("a", a.fails.message), ("b", None)]


@pytest.mark.parametrize("how", CALLS)
def test_a_fallback_that_does_not_list_the_model_gets_its_default(how: str) -> None:
    a = FakeProvider("a", ["m"], fails=_unavailable("a"))
    b = FakeProvider("b", ["bdef", "x"])
    answer = call(chain(a, b), how, "m")
    assert asked(b) == [None]
    assert answer.model == "b~bdef"


@pytest.mark.parametrize("how", CALLS)
def test_a_fallback_without_a_default_model_gets_the_same_name(how: str) -> None:
    a = FakeProvider("a", ["m"], fails=_unavailable("a"))
    b = FakeProvider("b", ["m2"], no_default=True)
    with pytest.raises(UpstreamError):  # b refuses a model it does not serve: every service failed
        call(chain(a, b), how, "m")
    assert asked(b) == ["m"]


@pytest.mark.parametrize("how", CALLS)
def test_the_request_sent_to_a_fallback_differs_only_in_its_model(how: str) -> None:
    a = FakeProvider("a", ["m"], fails=_unavailable("a"))
    b = FakeProvider("b", ["bdef"])
    sampling = SamplingParams(max_tokens=3, temperature=0.1, seed=5)
    if how == "embed":
        request = EmbeddingRequest(("x", "y"), "m")
        asyncio.run(chain(a, b).embed(request))
    else:
        request = ChatRequest((Message("user", "hi"),), "m", sampling)
        if how == "generate":
            asyncio.run(chain(a, b).generate(request))
        else:
            async def main() -> None:
                async with chain(a, b).stream(request) as routed:
                    [e async for e in routed]
            asyncio.run(main())
    [(_, first)] = a.seen
    [(_, second)] = b.seen
    assert first is request and request.model == "m"
    assert second.model is None
    assert second == replace(request, model=None)


@pytest.mark.parametrize("how", CALLS)
def test_an_invalid_request_from_the_first_service_is_returned_without_fallback(how: str) -> None:
    bad = InvalidRequest("invalid_parameter", "temperature out of range", param="temperature")
    a = FakeProvider("a", ["m"], fails=bad)
    b = FakeProvider("b", ["m"])
    with pytest.raises(InvalidRequest) as exc:
        call(chain(a, b), how, "m")
    assert exc.value is bad
    assert b.seen == []


@pytest.mark.parametrize("how", CALLS)
def test_not_found_from_the_first_service_is_returned_without_fallback(how: str) -> None:
    a = FakeProvider("a", ["m"])
    b = FakeProvider("b", ["m"])
    with pytest.raises(NotFound, match="^model 'mm' is not known; known models: m; close matches: "):
        call(chain(a, b), how, "a~mm")
    assert b.seen == []


@pytest.mark.parametrize("how", CALLS)
def test_after_the_first_service_errors_of_any_kind_move_on(how: str) -> None:
    a = FakeProvider("a", ["m"], fails=_unavailable("a"))
    b = FakeProvider("b", ["m"], fails=InvalidRequest("invalid_parameter", "b cannot take a seed", param="seed"))
    c = FakeProvider("c", ["m"], fails=NotFound("model_not_found", "c has no m"))
    d = FakeProvider("d", ["m"])
    answer = call(chain(a, b, c, d), how, "m")
    assert answer.model == "d~m"
    assert [(t.service, t.error) for t in answer.attempts] == [
        ("a", "a is down"), ("b", "b cannot take a seed"), ("c", "c has no m"), ("d", None)]


@pytest.mark.parametrize("how", CALLS)
def test_when_every_service_is_unavailable_the_error_is_unavailable_naming_each(how: str) -> None:
    a = FakeProvider("a", ["m"], fails=_unavailable("a", retry_after=7))
    b = FakeProvider("b", ["m"], fails=_unavailable("b", retry_after=3))
    c = FakeProvider("c", ["m"], fails=_unavailable("c"))
    with pytest.raises(MstingError) as exc:
        call(chain(a, b, c), how, "m")
    error = exc.value
    assert type(error) is Unavailable and error.code == "all_services_failed"
    assert error.retry_after == 3  # the soonest any of them said
    assert error.message == "no service could answer (3 attempts): a: a is down; b: b is down; c: c is down"
    assert error.details["services"] == ["a", "b", "c"]
    assert [(t["service"], t["url"], t["error"]) for t in error.details["attempts"]] == [
        ("a", None, "a is down"), ("b", None, "b is down"), ("c", None, "c is down")]


def test_when_every_service_is_unavailable_without_a_retry_after_the_error_says_one_second() -> None:
    with pytest.raises(Unavailable) as exc:
        generate(chain(FakeProvider("a", ["m"], fails=_unavailable("a")), FakeProvider("b", ["m"], fails=_unavailable("b"))), "m")
    assert exc.value.retry_after == 1


@pytest.mark.parametrize("how", CALLS)
def test_when_every_service_fails_otherwise_the_error_is_an_upstream_error_naming_each(how: str) -> None:
    a = FakeProvider("a", ["m"], fails=_unavailable("a"))
    b = FakeProvider("b", ["m"], fails=Timeout("upstream_timeout", "b did not answer in time"))
    c = FakeProvider("c", ["m"], fails=_upstream("c"))
    with pytest.raises(MstingError) as exc:
        call(chain(a, b, c), how, "m")
    error = exc.value
    assert type(error) is UpstreamError and error.code == "all_services_failed"
    for service in ("a", "b", "c"):
        assert f"{service}: " in error.message
    assert error.message.startswith("no service could answer (3 attempts): a: a is down; b: b did not answer in time; ")
    assert error.details["services"] == ["a", "b", "c"]
    assert [t["service"] for t in error.details["attempts"]] == ["a", "b", "c"]


@pytest.mark.parametrize("how", CALLS)
def test_attempts_accumulate_in_order_across_services(how: str) -> None:
    listed = [{"service": "a", "url": "http://a1", "error": "a1 refused", "ms": 1.0},
              {"service": "a", "url": "http://a2", "error": "a2 timed out", "ms": 2.0}]
    a = FakeProvider("a", ["m"], fails=UpstreamError("upstream_error", "a gave up", attempts=listed))
    b = FakeProvider("b", ["m"], fails=_unavailable("b"))
    c = FakeProvider("c", ["m"], own=(Attempt("c", "http://c1", "c1 broke", 4.0), Attempt("c", "http://c2", None, 5.0)))
    answer = call(chain(a, b, c), how, "m")
    assert [(t.service, t.url, t.error) for t in answer.attempts] == [
        ("a", "http://a1", "a1 refused"), ("a", "http://a2", "a2 timed out"), ("b", None, "b is down"),
        ("c", "http://c1", "c1 broke"), ("c", "http://c2", None)]
    assert [t.ms for t in answer.attempts][:2] == [1.0, 2.0] and answer.attempts[-1].ms == 5.0


def test_attempts_of_every_failed_service_are_in_the_final_error() -> None:
    listed = [{"service": "a", "url": "http://a1", "error": "refused", "ms": 1.0}] * 2
    a = FakeProvider("a", ["m"], fails=UpstreamError("upstream_error", "a gave up", attempts=listed))
    b = FakeProvider("b", ["m"], fails=_unavailable("b"))
    with pytest.raises(UpstreamError) as exc:
        generate(chain(a, b), "m")
    assert exc.value.message.startswith("no service could answer (3 attempts): a: a gave up; b: b is down")
    assert [t["service"] for t in exc.value.details["attempts"]] == ["a", "a", "b"]


def test_the_chain_goes_on_from_the_resolved_service_and_skips_the_ones_before_it() -> None:
    a = FakeProvider("a", ["m"])
    b = FakeProvider("b", ["m"], fails=_unavailable("b"))
    c = FakeProvider("c", ["m"])
    answer = generate(chain(a, b, c), "b~m")
    assert answer.model == "c~m" and a.seen == []


def test_a_service_outside_the_chain_has_no_fallback() -> None:
    a = FakeProvider("a", ["m"])
    b = FakeProvider("b", ["m"])
    error = _unavailable("off")
    off = FakeProvider("off", ["m"], fails=error)
    router = Router([a, b, off], fallback_chain=("b", "a"))
    with pytest.raises(Unavailable) as exc:
        generate(router, "off~m")  # the chain backs up b and a, not a service nobody put in it
    assert exc.value is error
    assert asked(a) == [] and asked(b) == []


def test_without_a_chain_a_failure_is_the_services_own_error() -> None:
    error = _unavailable("a", retry_after=4)
    router = Router([FakeProvider("local", ["x"]), FakeProvider("a", ["m"], fails=error)])
    with pytest.raises(Unavailable) as exc:
        generate(router, "m")
    assert exc.value is error


def test_the_last_service_of_the_chain_failing_alone_is_its_own_error() -> None:
    error = _unavailable("b")
    router = chain(FakeProvider("a", ["m"]), FakeProvider("b", ["m"], fails=error))
    with pytest.raises(Unavailable) as exc:
        generate(router, "b~m")  # b is last in the chain: nothing after it
    assert exc.value is error


def test_the_stub_as_the_last_fallback_answers_plainly_marked(local: FakeProvider) -> None:
    lan = FakeProvider("lan", ["m"], fails=_unavailable("lan"))
    router = Router([local, lan, StubProvider()], fallback_chain=("lan", "stub"))
    done = generate(router, "m")
    assert done.model == "stub~stub" and done.text.startswith(STUB_MARK)
    assert [a.service for a in done.attempts] == ["lan", "stub"]


# ---- the fallback chain of a stream ----------------------------------------------------


def test_a_stream_that_fails_before_its_first_event_fails_over() -> None:
    a = FakeProvider("a", ["m"], script=[_unavailable("a")])
    b = FakeProvider("b", ["m"])
    routed, events = stream_events(chain(a, b), "m")
    assert events[0] == Token("hi") and events[-1].model == "b~m"
    assert a.streams[0].closed
    assert (routed.service, routed.model) == ("b", "b~m")
    assert [(t.service, t.error) for t in routed.attempts] == [("a", "a is down"), ("b", None)]


@pytest.mark.parametrize("error", [_unavailable("a"), _upstream("a"), Timeout("upstream_timeout", "a timed out"),
                                   ServerError("engine_error", "a crashed")], ids=lambda e: type(e).__name__)
def test_a_stream_whose_first_event_is_failed_fails_over(error: MstingError) -> None:
    a = FakeProvider("a", ["m"], script=[Failed(error)])
    b = FakeProvider("b", ["m"])
    routed, events = stream_events(chain(a, b), "m")
    assert events == [Token("hi"), Done("b~m", "", "stop", attempts=tuple(routed.attempts))]
    assert a.streams[0].closed
    assert [(t.service, t.error) for t in routed.attempts] == [("a", error.message), ("b", None)]


def test_a_stream_that_ends_without_any_event_fails_over() -> None:
    class Empty(FakeStream):
        async def _events(self):
            return
            yield

    a = FakeProvider("a", ["m"])
    a.stream = lambda request: Empty("m", request, [])  # type: ignore[method-assign]
    b = FakeProvider("b", ["m"])
    routed, events = stream_events(chain(a, b), "m")
    assert events[-1].model == "b~m"
    assert routed.attempts[0].error == "a ended the stream without a reply"


def test_a_stream_that_yielded_a_token_then_failed_is_not_failed_over() -> None:
    broken = UpstreamError("upstream_stream_broken", "the reply was cut short")
    a = FakeProvider("a", ["m"], script=[Token("par"), Failed(broken)])
    b = FakeProvider("b", ["m"])
    routed, events = stream_events(chain(a, b), "m")
    assert events == [Token("par"), Failed(broken)]
    assert b.seen == []
    assert routed.service == "a"


@pytest.mark.parametrize("where", ["admission", "first event", "Failed first"])
def test_an_invalid_request_from_the_first_streams_service_is_not_failed_over(where: str) -> None:
    bad = InvalidRequest("invalid_parameter", "a refuses this seed", param="seed")
    a = FakeProvider("a", ["m"], fails=bad if where == "admission" else None,
                     script=[bad] if where == "first event" else [Failed(bad)])
    b = FakeProvider("b", ["m"])
    if where == "Failed first":
        _, events = stream_events(chain(a, b), "m")  # the service answers: with its error, as its only event
        assert events == [Failed(bad)]
    else:
        with pytest.raises(InvalidRequest) as exc:
            stream_events(chain(a, b), "m")
        assert exc.value is bad
    assert b.seen == []


def test_a_streams_admission_error_is_raised_before_any_event_unless_a_fallback_may_answer() -> None:
    error = _unavailable("a")
    with pytest.raises(Unavailable) as exc:
        Router([FakeProvider("a", ["m"], fails=error)]).stream(CompletionRequest("x", "m"))
    assert exc.value is error
    # with a fallback, the stream opens (the fallback gets its turn when it is read)
    a, b = FakeProvider("a", ["m"], fails=_unavailable("a")), FakeProvider("b", ["m"])
    routed, events = stream_events(chain(a, b), "m")
    assert events[-1].model == "b~m" and [t.service for t in routed.attempts] == ["a", "b"]


@pytest.mark.parametrize("last", ["raises", "Failed first", "admission"])
def test_a_stream_every_service_fails_raises_before_any_event_naming_each(last: str) -> None:
    a = FakeProvider("a", ["m"], script=[_unavailable("a")])
    b = FakeProvider("b", ["m"], fails=_upstream("b"))
    error = Timeout("upstream_timeout", "c did not answer in time")
    c = FakeProvider("c", ["m"], fails=error if last == "admission" else None,
                     script=[error] if last == "raises" else [Failed(error)])
    with pytest.raises(UpstreamError) as exc:
        stream_events(chain(a, b, c), "m")
    assert exc.value.code == "all_services_failed"
    assert exc.value.message == ("no service could answer (3 attempts): a: a is down; b: b answered HTTP 500; "
                                 "c: c did not answer in time")
    assert exc.value.details["services"] == ["a", "b", "c"]
    assert all(s.closed for p in (a, c) for s in p.streams)


def test_a_stream_attempts_accumulate_across_admission_and_first_event_failures() -> None:
    a = FakeProvider("a", ["m"], fails=UpstreamError("upstream_error", "a gave up", attempts=[
        {"service": "a", "url": "http://a1", "error": "refused", "ms": 1.0}]))
    b = FakeProvider("b", ["m"], script=[Failed(_upstream("b"))])
    c = FakeProvider("c", ["m"], script=[_unavailable("c")])
    d = FakeProvider("d", ["m"], own=(Attempt("d", "http://d1", None, 1.0),))
    routed, events = stream_events(chain(a, b, c, d), "m")
    assert [(t.service, t.url, t.error) for t in routed.attempts] == [
        ("a", "http://a1", "refused"), ("b", None, "b answered HTTP 500"), ("c", None, "c is down"), ("d", "http://d1", None)]
    assert events[-1].attempts == tuple(routed.attempts)


def test_leaving_a_routed_stream_early_closes_the_providers_stream() -> None:
    a = FakeProvider("a", ["m"], script=[Token("one"), Token("two"), Token("three")])

    async def main() -> list[Event]:
        routed = Router([a]).stream(CompletionRequest("x", "m"))
        got = []
        async for event in routed:
            got.append(event)
            break
        await routed.aclose()
        return got

    assert asyncio.run(main()) == [Token("one")]
    assert a.streams[0].closed


# ---- the real local provider behind the router -----------------------------------------


@pytest.fixture
def service(tmp_path: Path, store: Store, stories_model_path: Path) -> LocalService:
    """A LocalService (not started: no worker process) serving `story` (default) and the
    embeddings model `vec`, both on the real stories260K GGUF."""
    config = make_config()
    routing = build(store, config, spec("story", stories_model_path, max_tokens=4, temperature=0.0),
                    spec("vec", stories_model_path, type="embeddings"), profile="p")
    return LocalService(config, resolve_paths({"MSTING_HOME": str(tmp_path / "home")}), routing, store)


@pytest.mark.parametrize("name", ["story", "local~story", "local~", "local~default", None, "default", ""])
def test_the_local_provider_resolves_the_names_the_router_hands_it(service: LocalService, name: str | None) -> None:
    info = Router([LocalProvider(service)]).model(name)
    assert (info.id, info.service, info.is_default, info.type, info.context_length) == ("story", "local", True, "llm", 256)


def test_an_unknown_local_model_is_not_found_listing_the_models_and_starts_nothing(service: LocalService) -> None:
    router = Router([LocalProvider(service)])
    with pytest.raises(NotFound) as exc:
        router.model("local~nope")
    assert exc.value.code == "model_not_found"
    assert exc.value.message == "model 'nope' is not known; known models: story, vec"
    with pytest.raises(NotFound, match="^model 'nope' is not known; known models: story, vec$"):
        asyncio.run(router.generate(CompletionRequest("x", "nope")))
    with pytest.raises(NotFound, match="unknown service 'remote'; the services are: local; known models: story, vec"):
        router.model("remote~story")
    assert not any(m.started for m in service.routing.all_models())


def test_the_local_provider_lists_its_models(service: LocalService) -> None:
    infos = Router([LocalProvider(service)]).models()
    assert [(m.id, m.service, m.type, m.state, m.is_default) for m in infos] == [
        ("story", "local", "llm", "stopped", True), ("vec", "local", "embeddings", "stopped", False)]


def test_the_local_models_details_are_read_by_refresh_details_not_by_models(service: LocalService,
                                                                           stories_model_path: Path) -> None:
    from msting.models.capabilities import capabilities_of

    router = Router([LocalProvider(service)])
    assert [m.details for m in router.models()] == [None, None]  # models() reads no file
    asyncio.run(router.refresh_details())  # the headers, read in a thread
    expected = capabilities_of(stories_model_path)
    assert [m.details for m in router.models()] == [expected, expected]
    assert router.model("vec").details == expected


def test_a_generate_through_the_router_is_served_by_a_real_local_worker(service: LocalService) -> None:
    """Router → LocalProvider → Admission → the model's queue → a real worker process."""
    request = CompletionRequest("Once upon a time", "local~story")

    async def main() -> Done:
        try:
            return await asyncio.wait_for(Router([LocalProvider(service)]).generate(request), timeout=60)
        finally:
            await stop_all(service.routing)

    done = asyncio.run(main())
    assert done.model == "story"
    # the profile's max_tokens (4) applied: the request left it out
    assert (done.finish_reason, done.usage.completion_tokens) == ("length", 4)
    assert done.text and "queue_ms" in done.timings
    assert request.model == "local~story" and request.sampling.max_tokens is None


# ---- tool calling: a service without it (the daemon's own workers, the stub) is never sent a
# request that uses tools: alone a 400 naming service and model, in a chain passed over as an
# attempt, and when no service can, a 400 listing why for each


TOOL = Tool("get_weather", "The weather", '{"type":"object"}')
WITH_TOOLS = ChatRequest((Message("user", "weather in Paris?"),), "m", tools=(TOOL,))
CALLED = ChatRequest((Message("user", "weather?"), Message("assistant", "", tool_calls=(ToolCall("c1", "get_weather", "{}"),)),
                      Message("tool", "sunny", tool_call_id="c1")), "m")


def capable(name: str, script: list | None = None) -> FakeProvider:
    provider = FakeProvider(name, ["m"], capabilities=Capabilities(tools=True))
    if script is not None:
        provider.script = script
    return provider


def tool_run(router: Router, request, how: str):
    if how == "generate":
        return asyncio.run(router.generate(request))

    async def main():
        async with router.stream(request) as routed:
            return [e async for e in routed]

    return asyncio.run(main())[-1]


def test_uses_tools_counts_declared_tools_calls_and_results():
    assert WITH_TOOLS.uses_tools and CALLED.uses_tools
    assert not ChatRequest((Message("user", "hi"),)).uses_tools


@pytest.mark.parametrize("how", ["generate", "stream"])
@pytest.mark.parametrize("request_", [WITH_TOOLS, CALLED], ids=["tools", "tool-messages"])
def test_a_service_without_tools_alone_is_a_400_naming_service_and_model(how, request_):
    no_tools = FakeProvider("local", ["m"])
    with pytest.raises(InvalidRequest) as exc:
        tool_run(Router([no_tools]), request_, how)
    assert exc.value.code == "tools_unsupported"
    assert "the service 'local' (model 'm') does not support tools" in exc.value.message
    assert exc.value.details["param"] == ("tools" if request_.tools else "messages")
    assert no_tools.seen == []  # never sent


@pytest.mark.parametrize("how", ["generate", "stream"])
def test_the_stub_does_not_support_tools_and_names_its_model(how):
    with pytest.raises(InvalidRequest, match=r"the service 'stub' \(model 'anything'\) does not support tools"):
        tool_run(Router([StubProvider()]), ChatRequest(WITH_TOOLS.messages, "anything", tools=(TOOL,)), how)


@pytest.mark.parametrize("how", ["generate", "stream"])
def test_a_chain_passes_over_services_without_tools_as_attempts(how):
    local, stub, remote = FakeProvider("local", ["m"]), StubProvider(), capable("remote")
    answer = tool_run(chain(local, stub, remote), WITH_TOOLS, how)  # type: ignore[arg-type]
    assert isinstance(answer, Done) and answer.model == "remote~m"
    assert [(a.service, a.error is None) for a in answer.attempts] == [("local", False), ("stub", False), ("remote", True)]
    assert "does not support tools" in answer.attempts[0].error
    assert local.seen == [] and [kind for kind, _ in remote.seen] == [how]


@pytest.mark.parametrize("how", ["generate", "stream"])
def test_a_chain_where_no_service_can_is_a_400_listing_why(how):
    with pytest.raises(InvalidRequest) as exc:
        tool_run(chain(FakeProvider("local", ["m"]), StubProvider()), WITH_TOOLS, how)  # type: ignore[arg-type]
    error = exc.value
    assert error.code == "no_service_can_serve" and error.details["param"] == "tools"
    assert error.message.startswith("no service could answer (2 attempts): local: the service 'local' (model 'm') does not "
                                    "support tools")
    assert "stub: the service 'stub'" in error.message
    assert [a["service"] for a in error.details["attempts"]] == ["local", "stub"]


def test_a_plain_request_is_not_held_back():
    local = FakeProvider("local", ["m"])
    assert tool_run(chain(local, capable("remote")), ChatRequest((Message("user", "hi"),), "m"), "generate").model == "m"
    assert tool_run(Router([local]), CompletionRequest("Once", "m"), "stream").model == "m"


def test_a_streamed_tool_call_counts_as_the_first_token():
    ended = []

    class Observer:
        def request_ended(self, e):
            ended.append(e)

    remote = capable("remote", [ToolCallDelta(0, "c1", "get_weather", ""), ToolCallDelta(0, arguments="{}")])
    router = Router([remote], observer=Observer())
    assert tool_run(router, WITH_TOOLS, "stream").finish_reason == "stop"
    assert ended[0].first_token_sec is not None
