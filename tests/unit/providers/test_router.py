"""msting.providers.router: `service~model` name resolution, the request copy each
provider gets, and the model list across providers.

The router's contract is msting.providers.base.Provider, so most tests use small
providers of that shape that record what they were asked. The last ones put the real
`local` provider (a LocalService on real models of a real GGUF file) behind the router."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from msting.api.errors import NotFound, unknown_model
from msting.api.events import Done, Embeddings, Event, Token, Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.config import resolve_paths
from msting.daemon.local.service import LocalService
from msting.daemon.store import Store
from msting.providers.base import Capabilities, ModelInfo, ProviderHealth
from msting.providers.local import LocalProvider
from msting.providers.router import Router

from local_testing import build, make_config, spec, stop_all


@dataclass
class RecordingStream:
    model: str
    request: object
    closed: bool = False

    def __aiter__(self):
        return self._events()

    async def _events(self):
        yield Token("hi")
        yield Done(self.model, "", "stop")

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeProvider:
    """A provider serving `models` (the first is its default); it records each request."""

    name: str
    model_names: list[str]
    capabilities: Capabilities = field(default_factory=Capabilities)
    seen: list = field(default_factory=list)

    def _resolve(self, model: str | None) -> str:
        if model is None or model in ("", "default"):
            return self.model_names[0]
        if model not in self.model_names:
            raise unknown_model(model, sorted(self.model_names))
        return model

    async def generate(self, request) -> Done:
        self.seen.append(("generate", request))
        return Done(self._resolve(request.model), "text", "stop", Usage(1, 1))

    def stream(self, request) -> RecordingStream:
        self.seen.append(("stream", request))
        return RecordingStream(self._resolve(request.model), request)

    async def embed(self, request) -> Embeddings:
        self.seen.append(("embed", request))
        return Embeddings(self._resolve(request.model), [[1.0]] * len(request.inputs))

    def models(self) -> list[ModelInfo]:
        return [self.model(n) for n in self.model_names]

    def model(self, name: str | None) -> ModelInfo:
        resolved = self._resolve(name)
        return ModelInfo(resolved, self.name, "ready", "llm", 2048, resolved == self.model_names[0], 0)

    def health(self) -> ProviderHealth:
        return ProviderHealth("ready", None)


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


# ---- resolve ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "service", "model"), [
    ("story", "local", "story"),  # a plain name is the default service's
    ("big", "local", "big"),  # even when another service has it: no guessing
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


def test_the_default_service_is_the_first_provider_unless_named(local: FakeProvider, remote: FakeProvider) -> None:
    assert Router([remote, local]).resolve("x")[0] is remote
    r = Router([local, remote], default="remote")
    assert r.resolve(None) == (remote, None)
    assert r.resolve("small") == (remote, "small")
    assert r.resolve("local~story") == (local, "story")


def test_a_default_service_that_is_no_provider_is_refused_when_the_router_is_built(local: FakeProvider) -> None:
    with pytest.raises(ValueError, match="the default service 'ollama' is not one of: local"):
        Router([local], default="ollama")


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


def test_an_unknown_model_is_the_providers_not_found(router: Router, remote: FakeProvider) -> None:
    with pytest.raises(NotFound) as exc:
        generate(router, "remote~huge")
    assert exc.value.message == "model 'huge' is not known; known models: big, small"
    assert [r.model for _, r in remote.seen] == ["huge"]  # the provider-local name, without the service


# ---- the request each provider gets ----------------------------------------------------


def test_the_provider_gets_a_copy_naming_its_own_model_and_the_callers_request_is_unchanged(
        router: Router, remote: FakeProvider, local: FakeProvider) -> None:
    sampling = SamplingParams(max_tokens=9, temperature=0.3, stop=("\n",), seed=7)
    request = ChatRequest((Message("user", "hi"),), "remote~small", sampling)
    done = asyncio.run(router.generate(request))
    assert done.model == "small"
    assert request.model == "remote~small"  # the caller's request is untouched
    [(kind, seen)] = remote.seen
    assert kind == "generate"
    assert seen.model == "small"
    assert seen.messages == request.messages and seen.sampling == sampling  # only the name differs
    assert local.seen == []


def test_a_plain_name_reaches_the_default_provider_as_it_is(router: Router, local: FakeProvider) -> None:
    request = CompletionRequest("Once", "chat", SamplingParams(max_tokens=2))
    asyncio.run(router.generate(request))
    [(_, seen)] = local.seen
    assert seen == request


def test_no_name_reaches_the_default_provider_as_none(router: Router, local: FakeProvider) -> None:
    assert generate(router, None).model == "story"
    assert local.seen[0][1].model is None


def test_stream_is_the_providers_stream_for_the_renamed_request(router: Router, remote: FakeProvider) -> None:
    request = CompletionRequest("Once", "remote~big")

    async def main() -> list[Event]:
        stream = router.stream(request)
        assert isinstance(stream, RecordingStream) and stream.model == "big"
        events = [e async for e in stream]
        await stream.aclose()
        assert stream.closed
        return events

    events = asyncio.run(main())
    assert events == [Token("hi"), Done("big", "", "stop")]
    assert [(k, r.model) for k, r in remote.seen] == [("stream", "big")]
    assert request.model == "remote~big"


def test_embed_goes_to_the_named_service(router: Router, remote: FakeProvider, local: FakeProvider) -> None:
    request = EmbeddingRequest(("a", "b"), "remote~")
    result = asyncio.run(router.embed(request))
    assert result.model == "big" and len(result.vectors) == 2
    [(kind, seen)] = remote.seen
    assert kind == "embed" and seen.model == "" and seen.inputs == ("a", "b")
    assert request.model == "remote~" and local.seen == []


# ---- models ----------------------------------------------------------------------------


def test_models_lists_every_providers_models_in_provider_order(router: Router) -> None:
    assert [(m.service, m.id, m.is_default) for m in router.models()] == [
        ("local", "story", True), ("local", "chat", False), ("remote", "big", True), ("remote", "small", False)]


@pytest.mark.parametrize(("name", "service", "model"), [
    ("chat", "local", "chat"), ("local~", "local", "story"), ("remote~small", "remote", "small"),
    ("remote~default", "remote", "big"), (None, "local", "story"),
])
def test_model_resolves_across_providers(router: Router, name: str | None, service: str, model: str) -> None:
    info = router.model(name)
    assert (info.service, info.id) == (service, model)


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
