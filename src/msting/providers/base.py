"""The provider interface: what serves requests behind the router.

A provider is `generate` / `stream` / `embed` / `models` / `health` /
`capabilities`. The daemon's own llama.cpp workers are the `local` provider; remote
engines are providers of the same shape. Providers raise the errors of
`msting.api.errors` and know nothing of HTTP.

`stream(request)` checks what it can at once (the model's name, a full queue) and
raises before any event, so a route can still answer with an error status; it returns
a `Stream`. Leaving a stream early (`aclose()`, or `async with`) cancels the
generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from msting.api.events import Done, Embeddings, Event
from msting.api.requests import EmbeddingRequest, GenerationRequest


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do. Asking for what it lacks is a 400 naming the provider."""

    chat: bool = True  # messages in, a reply out
    completions: bool = True  # a raw prompt continued
    stream: bool = True
    embed: bool = True
    tools: bool = False  # tool calling (a chat's `tools`, tool calls and their results)

    def as_dict(self) -> dict:
        return {"chat": self.chat, "completions": self.completions, "stream": self.stream, "embed": self.embed,
                "tools": self.tools}


@dataclass(frozen=True)
class ModelInfo:
    """One model a provider serves, as /v1/models lists it."""

    id: str
    service: str
    state: str
    type: str  # "llm" | "embeddings"
    context_length: int | None
    is_default: bool
    created: int  # unix time the provider started serving it
    upstream: str | None = None  # the name the upstream engine knows it by (remote services)
    capabilities: Capabilities | None = None  # None: the provider's own
    # What the model file is (msting.models.capabilities.capabilities_of: type, arch,
    # quantization, parameters, flags), for the daemon's own models; None where no
    # file is read (remote services, the stub, an unreadable file). Distinct from
    # `capabilities`, which says what the endpoint serving it can do.
    details: dict | None = None


@dataclass(frozen=True)
class ProviderHealth:
    status: str  # ready | loading | degraded | failed | idle | stopping
    reason: str | None


class Stream(Protocol):
    model: str  # the model serving it, resolved (never "default")

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str
    capabilities: Capabilities

    async def generate(self, request: GenerationRequest) -> Done: ...

    def stream(self, request: GenerationRequest) -> Stream: ...

    async def embed(self, request: EmbeddingRequest) -> Embeddings: ...

    def models(self) -> list[ModelInfo]: ...

    def model(self, name: str | None) -> ModelInfo: ...

    async def refresh_details(self) -> None:
        """Bring the models' `details` up to date, off the event loop where that reads
        files; `models()` and `model()` then only look them up."""
        ...

    def health(self) -> ProviderHealth: ...

    def status(self) -> dict:
        """The service as /llm/services shows it: name, api_format, builtin, status,
        reason, models, default_model, capabilities, urls (each with its state)."""
        ...

    async def ping(self) -> dict:
        """A live check now: name, status, reason, urls (each url, ok, latency_ms, error)."""
        ...
