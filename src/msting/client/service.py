"""The interface an application uses for LLM work: :class:`LLMClient` (and
:class:`AsyncLLMClient`), configured by the ``LLM_*`` environment variables, and the
module-level functions that build one from the environment for a single call.

    from msting.client import LLMRequest, generate

    reply = generate(LLMRequest(prompt="Once upon a time", max_tokens=32))
    print(reply.text, reply.model, reply.provider, reply.fallback_used)

The fallback provider (``LLM_PROVIDER_FALLBACK``, the offline stub unless told) answers
when the primary has an outage (see :func:`msting.client.llm.is_outage`), with an
:class:`LLMFallbackWarning` and a warning on the ``msting.client`` logger; a request the
primary refuses as wrong (a 4xx) raises. A stream falls back only before its first
piece of text: after that, an error raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from msting.client.backends import (
    AsyncDaemonBackend,
    AsyncOpenAIBackend,
    AsyncStubBackend,
    DaemonBackend,
    OpenAIBackend,
    StubBackend,
)
from msting.client.daemon import MstingClient, MstingError
from msting.client.llm import LLMFallbackWarning, LLMRequest, LLMResponse, as_request, is_outage
from msting.client.settings import ClientSettings
from msting.client.wire import server_root

log = logging.getLogger("msting.client")


def _daemon_client(settings: ClientSettings, *, primary: bool) -> MstingClient:
    """The daemon a lan/local backend talks to: ``socket_path`` when given, else the
    primary's ``LLM_BASE_URL``, else the local daemon's socket (MSTING_HOME aware)."""
    if settings.socket_path is not None:
        return MstingClient(socket_path=settings.socket_path, timeout=settings.timeout, api_key=settings.api_key)
    if primary and settings.base_url is not None:
        return MstingClient(url=server_root(settings.base_url), timeout=settings.timeout, api_key=settings.api_key)
    return MstingClient.from_env(timeout=settings.timeout)


def _backend(kind: str, settings: ClientSettings, *, primary: bool) -> Any:
    if kind == "stub":
        return StubBackend()
    if kind == "openai":
        assert settings.base_url is not None  # ClientSettings requires it
        return OpenAIBackend(settings.base_url, api_key=settings.api_key, timeout=settings.timeout)
    return DaemonBackend(_daemon_client(settings, primary=primary), local=kind == "local")


def _async_backend(kind: str, settings: ClientSettings, *, primary: bool) -> Any:
    if kind == "stub":
        return AsyncStubBackend()
    if kind == "openai":
        assert settings.base_url is not None
        return AsyncOpenAIBackend(settings.base_url, api_key=settings.api_key, timeout=settings.timeout)
    return AsyncDaemonBackend(_daemon_client(settings, primary=primary), local=kind == "local",
                              api_key=settings.api_key, timeout=settings.timeout)


class _Base:
    """What both clients share: settings, the fallback decision and its warning, status."""

    _make_backend: Any  # _backend or _async_backend

    def __init__(
        self,
        *,
        provider: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        fallback: str | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        overrides = dict(provider=provider, base_url=base_url, api_key=api_key, timeout=timeout, fallback=fallback,
                         socket_path=socket_path)
        if settings is not None and (environ is not None or any(v is not None for v in overrides.values())):
            raise ValueError("give either settings or environ/keyword overrides, not both")
        self.settings = settings if settings is not None else ClientSettings.from_env(environ, **overrides)
        self._primary = type(self)._make_backend(self.settings.provider, self.settings, primary=True)
        self._secondary: Any = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
        return cls(environ=environ, **overrides)

    def _fallback_backend(self) -> Any:
        if self._secondary is None:
            assert self.settings.fallback is not None
            self._secondary = type(self)._make_backend(self.settings.fallback, self.settings, primary=False)
        return self._secondary

    @property
    def provider(self) -> str:
        return self.settings.provider

    @property
    def fallback(self) -> str | None:
        return self.settings.fallback

    def _timeout(self, request: LLMRequest) -> float:
        return request.timeout if request.timeout is not None else self.settings.timeout

    def _falls_back(self, exc: MstingError, what: str) -> bool:
        """Whether the fallback answers instead (it then warns, once per request)."""
        if self.settings.fallback is None or not is_outage(exc):
            return False
        message = (f"the LLM provider {self.settings.provider!r} failed ({exc}); "
                   f"the fallback provider {self.settings.fallback!r} answers {what}")
        log.warning("%s", message)
        warnings.warn(message, LLMFallbackWarning, stacklevel=3)
        return True

    def _view(self, address: dict[str, Any]) -> dict[str, Any]:
        """The client's own view, part of every status."""
        return {"provider": self.settings.provider, "fallback": self.settings.fallback, **address}

    def _address(self, backend: Any) -> dict[str, Any]:
        daemon = getattr(backend, "daemon", None)
        if isinstance(daemon, MstingClient):
            return {"base_url": daemon.url, "socket": str(daemon.socket_path) if daemon.socket_path else None}
        return {"base_url": getattr(backend, "address", None), "socket": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self.provider!r}, fallback={self.fallback!r}, {self._where()})"

    def _where(self) -> str:
        address = self._address(self._primary)  # type: ignore[attr-defined]
        return f"socket={address['socket']!r}" if address["socket"] else f"base_url={address['base_url']!r}"


class LLMClient(_Base):
    """A client for LLM work through the provider ``LLM_PROVIDER`` names (see
    :class:`ClientSettings`). Keyword arguments that are not None override the
    environment. Close it (or use it as a context manager) when done."""

    _make_backend = staticmethod(_backend)

    def generate(self, request: LLMRequest | str) -> LLMResponse:
        """One whole reply (a bare string is a prompt)."""
        request = as_request(request)
        try:
            return self._primary.generate(request, self._timeout(request))
        except MstingError as exc:
            if not self._falls_back(exc, "this request"):
                raise
        reply = self._fallback_backend().generate(request, self._timeout(request))
        return dataclasses.replace(reply, fallback_used=True)

    def stream_generate(self, request: LLMRequest | str) -> Iterator[str]:
        """The reply's text pieces as they come. A stream cut short, or failed with an
        error event, raises: it never ends like a complete reply."""
        request = as_request(request)
        yielded = False
        try:
            with contextlib.closing(self._primary.stream(request, self._timeout(request))) as pieces:
                for piece in pieces:
                    yielded = True
                    yield piece
            return
        except MstingError as exc:
            if yielded or not self._falls_back(exc, "this stream"):
                raise
        with contextlib.closing(self._fallback_backend().stream(request, self._timeout(request))) as pieces:
            yield from pieces

    def get_available_models(self) -> list[dict[str, Any]]:
        """The provider's models (``GET /v1/models``'s ``data``); the fallback's on an outage."""
        try:
            return self._primary.models(self.settings.timeout)
        except MstingError as exc:
            if not self._falls_back(exc, "the model list"):
                raise
        return self._fallback_backend().models(self.settings.timeout)

    def get_provider_status(self) -> dict[str, Any]:
        """The primary provider's health, with the client's own view (provider, fallback,
        base URL or socket). An unreachable provider is ``"status": "down"``, not an error."""
        return {**self._view(self._address(self._primary)), **self._primary.status(self.settings.timeout)}

    def close(self) -> None:
        for backend in (self._primary, self._secondary):
            if backend is not None:
                backend.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLLMClient(_Base):
    """:class:`LLMClient` for asyncio (``httpx.AsyncClient``); close it with ``aclose``
    or use ``async with``."""

    _make_backend = staticmethod(_async_backend)

    async def generate(self, request: LLMRequest | str) -> LLMResponse:
        request = as_request(request)
        try:
            return await self._primary.generate(request, self._timeout(request))
        except MstingError as exc:
            if not self._falls_back(exc, "this request"):
                raise
        reply = await self._fallback_backend().generate(request, self._timeout(request))
        return dataclasses.replace(reply, fallback_used=True)

    async def stream_generate(self, request: LLMRequest | str) -> AsyncIterator[str]:
        request = as_request(request)
        yielded = False
        try:
            async with contextlib.aclosing(self._primary.stream(request, self._timeout(request))) as pieces:
                async for piece in pieces:
                    yielded = True
                    yield piece
            return
        except MstingError as exc:
            if yielded or not self._falls_back(exc, "this stream"):
                raise
        async with contextlib.aclosing(self._fallback_backend().stream(request, self._timeout(request))) as pieces:
            async for piece in pieces:
                yield piece

    async def get_available_models(self) -> list[dict[str, Any]]:
        try:
            return await self._primary.models(self.settings.timeout)
        except MstingError as exc:
            if not self._falls_back(exc, "the model list"):
                raise
        return await self._fallback_backend().models(self.settings.timeout)

    async def get_provider_status(self) -> dict[str, Any]:
        return {**self._view(self._address(self._primary)), **await self._primary.status(self.settings.timeout)}

    async def aclose(self) -> None:
        for backend in (self._primary, self._secondary):
            if backend is not None:
                await backend.aclose()

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---- one call, with a client from the environment ----------------------------------------
# Each builds its client and closes it: an application making many calls keeps an LLMClient.


def generate(request: LLMRequest | str) -> LLMResponse:
    with LLMClient() as client:
        return client.generate(request)


def stream_generate(request: LLMRequest | str) -> Iterator[str]:
    with LLMClient() as client:
        yield from client.stream_generate(request)


def get_available_models() -> list[dict[str, Any]]:
    with LLMClient() as client:
        return client.get_available_models()


def get_provider_status() -> dict[str, Any]:
    with LLMClient() as client:
        return client.get_provider_status()


async def agenerate(request: LLMRequest | str) -> LLMResponse:
    async with AsyncLLMClient() as client:
        return await client.generate(request)


async def astream_generate(request: LLMRequest | str) -> AsyncIterator[str]:
    async with AsyncLLMClient() as client:
        async with contextlib.aclosing(client.stream_generate(request)) as pieces:
            async for piece in pieces:
                yield piece


async def aget_available_models() -> list[dict[str, Any]]:
    async with AsyncLLMClient() as client:
        return await client.get_available_models()


async def aget_provider_status() -> dict[str, Any]:
    async with AsyncLLMClient() as client:
        return await client.get_provider_status()
