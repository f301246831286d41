"""`stub`: a deterministic, offline provider, plainly marked as not a model.

It answers only where a fallback chain or a client names it (`stub~anything`). Its
reply is built from the request's own words, so the same request always gets the same
reply, and every reply starts with STUB_MARK; the router names its model `stub~...`,
the response headers name the `stub` provider, and each reply logs a warning. Nobody should
mistake it for a model.

`stub_reply` is shared with msting.client, whose offline fallback gives the same text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import AsyncIterator

from msting.api.errors import InvalidRequest
from msting.api.events import Done, Embeddings, Event, Token, Usage
from msting.api.requests import ChatRequest, EmbeddingRequest, GenerationRequest
from msting.api.limits import DEFAULT_MAX_TOKENS
from msting.providers.base import Capabilities, ModelInfo, ProviderHealth

NAME = "stub"
MODEL = "stub"
STUB_MARK = "[stub reply: no model was used]"
EMBEDDING_DIMENSIONS = 8

log = logging.getLogger("msting.stub")


def stub_reply(text: str, max_tokens: int | None = None) -> list[str]:
    """The reply's pieces (words with their leading space): the mark, then the request's
    last words echoed, cut to `max_tokens` pieces."""
    words = text.split()[-12:] or ["(empty", "request)"]
    pieces = [STUB_MARK] + [" " + w for w in ["echo:", *words]]
    return pieces[: max(1, max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS)]


def _request_text(request: GenerationRequest) -> str:
    if isinstance(request, ChatRequest):
        users = [m.content for m in request.messages if m.role == "user"]
        return users[-1] if users else (request.messages[-1].content if request.messages else "")
    return request.prompt


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return [round(b / 255.0 - 0.5, 6) for b in digest[:EMBEDDING_DIMENSIONS]]


class StubStream:
    def __init__(self, request: GenerationRequest):
        self.model = request.model or MODEL
        self._pieces = stub_reply(_request_text(request), request.sampling.max_tokens)
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        log.warning("stub answered a request for %s: the reply is not from a model", self.model)
        for piece in self._pieces:
            if self._closed:
                return
            yield Token(piece)
            await asyncio.sleep(0)
        yield Done(model=self.model, finish_reason="stop", usage=Usage(0, len(self._pieces)))

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> StubStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class StubProvider:
    name = NAME
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.started = int(time.time())

    async def generate(self, request: GenerationRequest) -> Done:
        model = request.model or MODEL
        pieces = stub_reply(_request_text(request), request.sampling.max_tokens)
        log.warning("stub answered a request for %s: the reply is not from a model", model)
        return Done(model=model, text="".join(pieces), finish_reason="stop", usage=Usage(0, len(pieces)))

    def stream(self, request: GenerationRequest) -> StubStream:
        return StubStream(request)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        if not request.inputs:
            raise InvalidRequest("invalid_input", "no input to embed", param="input")
        log.warning("stub answered an embedding request: the vectors are not from a model")
        return Embeddings(model=request.model or MODEL, vectors=[_vector(t) for t in request.inputs])

    def _info(self, name: str) -> ModelInfo:
        return ModelInfo(id=name, service=NAME, state="ready", type="llm", context_length=None,
                         is_default=name == MODEL, created=self.started)

    def models(self) -> list[ModelInfo]:
        return [self._info(MODEL)]

    def model(self, name: str | None) -> ModelInfo:
        return self._info(name or MODEL)  # any name: the stub answers for every model

    async def refresh_details(self) -> None:
        """No file behind the stub: nothing to read."""

    def health(self) -> ProviderHealth:
        return ProviderHealth("ready", None)

    def status(self) -> dict:
        return {"name": NAME, "api_format": "stub", "builtin": True, "status": "ready", "reason": None,
                "default_model": MODEL, "models": [MODEL], "capabilities": self.capabilities.as_dict(), "urls": []}

    async def ping(self) -> dict:
        return {"name": NAME, "status": "ready", "reason": None, "urls": []}
