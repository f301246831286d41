"""`local`: the daemon's own llama.cpp workers as a provider.

It wraps the local service unchanged: admission puts a job in its model's queue (a
free worker takes it inside `put()`, before the route has even sent its headers), and
the job's events come back as the typed events of msting.api.events. Leaving a stream
or cancelling a `generate` cancels the job: a queued job is dropped, a running one is
stopped in its worker within a token or two.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from msting.api.errors import ServerError
from msting.api.events import Done, Embeddings, Event, Failed, Token
from msting.api.requests import EmbeddingRequest, GenerationRequest
from msting.daemon.local.queue import LocalJob
from msting.daemon.local.readiness import readiness
from msting.daemon.local.service import LocalService
from msting.providers.base import Capabilities, ModelInfo, ProviderHealth


class LocalStream:
    """A job's events: Token (tokens that piled up while the client read slowly come
    out as one, so a slow reader costs one frame per read, not one per token), then
    one Done or Failed. `aclose()` before the end cancels the job."""

    def __init__(self, service: LocalService, job: LocalJob):
        self.model = job.model
        self._service = service
        self._job = job
        self._ended = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        events = self._job.events
        pending: Event | None = None
        try:
            while True:
                event = pending or await events.get()
                pending = None
                if not isinstance(event, Token):
                    self._ended = True
                    yield event
                    return
                pieces = [event.text]
                while not events.empty():
                    nxt = events.get_nowait()
                    if not isinstance(nxt, Token):
                        pending = nxt
                        break
                    pieces.append(nxt.text)
                yield Token("".join(pieces))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if not self._ended:
            self._ended = True
            self._service.admission.cancel(self._job)

    async def __aenter__(self) -> LocalStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LocalProvider:
    name = "local"
    capabilities = Capabilities()

    def __init__(self, service: LocalService):
        from msting.models.capabilities import CapabilitiesCache

        self.service = service
        self._details = CapabilitiesCache()  # each model file's header, read once (in a thread)

    async def _answer(self, job: LocalJob) -> Done | Embeddings:
        try:
            event = await job.events.get()
        finally:
            if not job.over:
                self.service.admission.cancel(job)  # the caller went away: free the worker
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, (Done, Embeddings)):
            return event
        raise ServerError("engine_error", "a non-streamed request got a streamed token")

    async def generate(self, request: GenerationRequest) -> Done:
        result = await self._answer(self.service.admission.job(request))
        assert isinstance(result, Done)
        return result

    def stream(self, request: GenerationRequest) -> LocalStream:
        return LocalStream(self.service, self.service.admission.job(request, stream=True))

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        result = await self._answer(self.service.admission.job(request))
        assert isinstance(result, Embeddings)
        return result

    def _info(self, model) -> ModelInfo:
        routing = self.service.routing
        return ModelInfo(id=model.name, service=self.name, state=model.state.value, type=model.spec.type,
                         context_length=model.spec.n_ctx, is_default=model.name == routing.default_model,
                         created=int(self.service.started_at), details=self._details.cached(model.spec.path))

    async def refresh_details(self) -> None:
        """Read the headers of the routing's model files not read yet, or changed since,
        in a thread: a large file list, or a slow disk, never stalls the event loop."""
        paths = [m.spec.path for m in self.service.routing.models.values()]
        await asyncio.to_thread(self._details.refresh, paths)

    def models(self) -> list[ModelInfo]:
        return [self._info(m) for m in self.service.routing.models.values()]

    def model(self, name: str | None) -> ModelInfo:
        return self._info(self.service.admission.find(name))

    def health(self) -> ProviderHealth:
        service = self.service
        status, reason = readiness(list(service.routing.models.values()), stopping=service.stopping,
                                   always_ready=service.config.llm_service.always_ready)
        return ProviderHealth(status, reason)

    def status(self) -> dict:
        health = self.health()
        return {"name": self.name, "api_format": "local", "builtin": True, "status": health.status, "reason": health.reason,
                "default_model": self.service.routing.default_model, "models": [m.id for m in self.models()],
                "capabilities": self.capabilities.as_dict(), "urls": []}

    async def ping(self) -> dict:
        health = self.health()
        return {"name": self.name, "status": health.status, "reason": health.reason, "urls": []}
