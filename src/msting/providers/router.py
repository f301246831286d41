"""The one entry point of every route: resolve a model name to a provider, and call it.

A name is `model` (the default service's), `service~model`, or None/"default" for the
default service's default model. Never a silent substitute: an unknown service or
model is a `NotFound` that lists what is known.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from msting.api.errors import unknown_model
from msting.api.events import Done, Embeddings
from msting.api.requests import EmbeddingRequest, GenerationRequest
from msting.providers.base import ModelInfo, Provider, Stream

SEPARATOR = "~"

R = TypeVar("R", bound="GenerationRequest | EmbeddingRequest")


class Router:
    def __init__(self, providers: list[Provider], default: str | None = None):
        self.providers = {p.name: p for p in providers}
        self.default = default or providers[0].name
        if self.default not in self.providers:
            raise ValueError(f"the default service '{self.default}' is not one of: {', '.join(sorted(self.providers))}")

    def resolve(self, name: str | None) -> tuple[Provider, str | None]:
        """The provider for `name`, and the model name within it (None: its default)."""
        if name is not None:
            service, sep, model = name.partition(SEPARATOR)
            if sep:
                provider = self.providers.get(service)
                if provider is None:
                    raise unknown_model(name, self._known(), f"unknown service '{service}'; the services are: "
                                        + ", ".join(sorted(self.providers)))
                return provider, model
        return self.providers[self.default], name

    def _known(self) -> list[str]:
        return sorted(info.id for info in self.providers[self.default].models())

    def _routed(self, request: R) -> tuple[Provider, R]:
        provider, model = self.resolve(request.model)
        return provider, request if model == request.model else replace(request, model=model)

    async def generate(self, request: GenerationRequest) -> Done:
        provider, request = self._routed(request)
        return await provider.generate(request)

    def stream(self, request: GenerationRequest) -> Stream:
        provider, request = self._routed(request)
        return provider.stream(request)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        provider, request = self._routed(request)
        return await provider.embed(request)

    def models(self) -> list[ModelInfo]:
        return [info for provider in self.providers.values() for info in provider.models()]

    def model(self, name: str) -> ModelInfo:
        provider, model = self.resolve(name)
        return provider.model(model)
