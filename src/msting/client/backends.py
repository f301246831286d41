"""The application client's backends, sync and async, each with ``generate``,
``stream``, ``models``, ``status`` and ``close``:

* ``StubBackend``: offline, in-process, the daemon stub's text (plainly marked);
* ``DaemonBackend`` (``lan``, ``local``): the msting daemon, through
  :class:`MstingClient`'s HTTP client (its Unix socket or TCP);
* ``OpenAIBackend``: any OpenAI-compatible server.

The async ones speak the same wire with ``httpx.AsyncClient``. Errors come out as
:class:`MstingError` (an HTTP error with its status; ``DaemonUnavailable``,
``ServerUnavailable`` or ``RequestTimeout`` when nothing answered).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from msting.client.daemon import MstingClient, MstingError, RequestTimeout, _body, _error_from, _timeout
from msting.client.llm import LLMRequest, LLMResponse, ServerUnavailable
from msting.client.wire import MODELS_PATH, StreamParser, local_model, request_route, response_of, server_root, stub_model

SERVICES_PATH = "/llm/services"
STATUS_PATH = "/v1/status"


class StubBackend:
    """Answers offline with ``msting.providers.stub.stub_reply`` (the daemon's stub text)."""

    name = "stub"

    def generate(self, request: LLMRequest, timeout: float | None = None) -> LLMResponse:
        pieces = self._pieces(request)
        model, text, chat = stub_model(request.model), "".join(pieces), request.messages is not None
        usage = {"prompt_tokens": 0, "completion_tokens": len(pieces), "total_tokens": len(pieces)}
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason="stop")
        raw = {"object": "chat.completion" if chat else "text_completion", "model": model, "choices": [choice], "usage": usage}
        return LLMResponse(text=text, model=model, provider=self.name, finish_reason="stop", usage=usage, raw=raw)

    def stream(self, request: LLMRequest, timeout: float | None = None) -> Iterator[str]:
        yield from self._pieces(request)

    def models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return [{"id": "stub", "object": "model", "owned_by": "msting", "state": "ready", "type": "llm",
                 "aliases": ["stub~stub"]}]

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        return {"status": "up", "error": None}

    def close(self) -> None:
        pass

    @staticmethod
    def _pieces(request: LLMRequest) -> list[str]:
        from msting.providers.stub import stub_reply  # lazily: msting.client stays cheap to import

        return stub_reply(request.text, request.max_tokens)


class AsyncStubBackend:
    name = "stub"

    def __init__(self) -> None:
        self._sync = StubBackend()

    async def generate(self, request: LLMRequest, timeout: float | None = None) -> LLMResponse:
        return self._sync.generate(request)

    async def stream(self, request: LLMRequest, timeout: float | None = None) -> AsyncIterator[str]:
        for piece in self._sync.stream(request):
            yield piece

    async def models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return self._sync.models()

    async def status(self, timeout: float | None = None) -> dict[str, Any]:
        return self._sync.status()

    async def aclose(self) -> None:
        pass


# ---- what the HTTP backends share ------------------------------------------------------


class _HTTPWire:
    """The parts of an HTTP backend that do no I/O: model names, errors, answers."""

    name: str
    address: str

    def _model(self, name: str | None) -> str | None:
        return name

    def _transport_error(self, exc: httpx.TransportError) -> MstingError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return RequestTimeout(f"the OpenAI-compatible server at {self.address} did not answer in time")
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnavailable(f"cannot connect to the OpenAI-compatible server at {self.address}: {exc}")
        return ServerUnavailable(f"lost the connection to the OpenAI-compatible server at {self.address}: {exc}")

    def _route(self, request: LLMRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        return request_route(request, self._model(request.model), stream=stream)

    def _answer(self, response: httpx.Response, request: LLMRequest) -> LLMResponse:
        data = _body(response)
        if response.status_code >= 400:
            raise _error_from(response, data)
        return response_of(data, response.headers, self.name, chat=request.messages is not None)

    def _models(self, response: httpx.Response) -> list[dict[str, Any]]:
        data = _checked(response).get("data")
        if not isinstance(data, list):
            raise MstingError(response.status_code, "server_error", "bad_response", f"{MODELS_PATH} answered without a data list")
        return [m for m in data if isinstance(m, dict) and self._listed(m)]

    def _listed(self, model: dict[str, Any]) -> bool:
        return True

    def _stream_error(self, response: httpx.Response) -> MstingError:
        return _error_from(response, _body(response))


def _checked(response: httpx.Response) -> dict[str, Any]:
    data = _body(response)
    if response.status_code >= 400:
        raise _error_from(response, data)
    return data


def _past(deadline: float, address: str) -> None:
    if time.monotonic() > deadline:
        raise RequestTimeout(f"the stream from {address} went on past its timeout")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _DaemonWire(_HTTPWire):
    """lan and local: the daemon's error messages, ``local~`` names, its services."""

    def __init__(self, client: MstingClient, *, local: bool) -> None:
        self.name = "local" if local else "lan"
        self.local = local
        self.daemon = client
        self.address = client.address

    def _model(self, name: str | None) -> str | None:
        return local_model(name) if self.local else name

    def _transport_error(self, exc: httpx.TransportError) -> MstingError:
        return self.daemon._transport_error(exc)

    def _listed(self, model: dict[str, Any]) -> bool:
        if not self.local:
            return True
        service = model.get("service")
        if service is not None:
            return service == "local"
        aliases = [a for a in model.get("aliases") or [] if isinstance(a, str) and "~" in a]
        return not aliases or any(a.startswith("local~") for a in aliases)

    def _services(self, response: httpx.Response) -> dict[str, Any]:
        """``GET /llm/services``: its services (for local, the local one only), and the
        rest of its body (the default service, the fallback chain ...)."""
        body = _checked(response)
        data = body.get("data")
        services = [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []
        if self.local:
            services = [s for s in services if s.get("name") == "local"]
        extra = {k: v for k, v in body.items() if k not in ("object", "data", "status", "error", "source", "services")}
        return {**extra, "status": "up", "error": None, "source": SERVICES_PATH, "services": services}

    def _daemon_status(self, response: httpx.Response) -> dict[str, Any]:
        return {"status": "up", "error": None, "source": STATUS_PATH, "daemon": _checked(response)}


# ---- sync ------------------------------------------------------------------------------


class _SyncHTTP(_HTTPWire):
    _http: httpx.Client

    def generate(self, request: LLMRequest, timeout: float) -> LLMResponse:
        path, body = self._route(request, stream=False)
        try:
            response = self._http.post(path, json=body, timeout=_timeout(timeout))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        return self._answer(response, request)

    def stream(self, request: LLMRequest, timeout: float) -> Iterator[str]:
        path, body = self._route(request, stream=True)
        deadline = time.monotonic() + timeout
        parser = StreamParser(chat=request.messages is not None)
        try:
            with self._http.stream("POST", path, json=body, timeout=_timeout(timeout)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._stream_error(response)
                for line in response.iter_lines():
                    yield from parser.feed(line)
                    if parser.done:
                        return
                    _past(deadline, self.address)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        parser.finish()

    def _get(self, path: str, timeout: float) -> httpx.Response:
        try:
            return self._http.get(path, timeout=_timeout(timeout))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def models(self, timeout: float) -> list[dict[str, Any]]:
        return self._models(self._get(MODELS_PATH, timeout))

    def status(self, timeout: float) -> dict[str, Any]:
        try:
            self.models(timeout)
        except MstingError as exc:
            return {"status": "down", "error": str(exc)}
        return {"status": "up", "error": None}


class DaemonBackend(_DaemonWire, _SyncHTTP):
    def __init__(self, client: MstingClient, *, local: bool) -> None:
        super().__init__(client, local=local)
        self._http = client._http  # MstingClient's own transport: the socket, or plain HTTP/1.1 on TCP

    def status(self, timeout: float) -> dict[str, Any]:
        try:
            response = self._get(SERVICES_PATH, timeout)
            if response.status_code == 404:  # a daemon from before /llm/services
                return self._daemon_status(self._get(STATUS_PATH, timeout))
            return self._services(response)
        except MstingError as exc:
            return {"status": "down", "error": str(exc)}

    def close(self) -> None:
        self.daemon.close()


class OpenAIBackend(_SyncHTTP):
    name = "openai"

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float) -> None:
        self.address = server_root(base_url)
        self._http = httpx.Client(base_url=self.address, headers=_headers(api_key), timeout=_timeout(timeout))

    def close(self) -> None:
        self._http.close()


# ---- async -----------------------------------------------------------------------------


class _AsyncHTTP(_HTTPWire):
    _http: httpx.AsyncClient

    async def generate(self, request: LLMRequest, timeout: float) -> LLMResponse:
        path, body = self._route(request, stream=False)
        try:
            response = await self._http.post(path, json=body, timeout=_timeout(timeout))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        return self._answer(response, request)

    async def stream(self, request: LLMRequest, timeout: float) -> AsyncIterator[str]:
        path, body = self._route(request, stream=True)
        deadline = time.monotonic() + timeout
        parser = StreamParser(chat=request.messages is not None)
        try:
            async with self._http.stream("POST", path, json=body, timeout=_timeout(timeout)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._stream_error(response)
                async for line in response.aiter_lines():
                    for piece in parser.feed(line):
                        yield piece
                    if parser.done:
                        return
                    _past(deadline, self.address)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        parser.finish()

    async def _get(self, path: str, timeout: float) -> httpx.Response:
        try:
            return await self._http.get(path, timeout=_timeout(timeout))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    async def models(self, timeout: float) -> list[dict[str, Any]]:
        return self._models(await self._get(MODELS_PATH, timeout))

    async def status(self, timeout: float) -> dict[str, Any]:
        try:
            await self.models(timeout)
        except MstingError as exc:
            return {"status": "down", "error": str(exc)}
        return {"status": "up", "error": None}

    async def aclose(self) -> None:
        await self._http.aclose()


class AsyncDaemonBackend(_DaemonWire, _AsyncHTTP):
    """The daemon at the address `client` found (MstingClient names it and words its errors)."""

    def __init__(self, client: MstingClient, *, local: bool, api_key: str | None, timeout: float) -> None:
        super().__init__(client, local=local)
        if client.socket_path is not None:
            transport = httpx.AsyncHTTPTransport(uds=str(client.socket_path))
            self._http = httpx.AsyncClient(base_url="http://msting", transport=transport, headers=_headers(api_key),
                                           timeout=_timeout(timeout), trust_env=False)
        else:
            self._http = httpx.AsyncClient(base_url=str(client.url), headers=_headers(api_key), timeout=_timeout(timeout),
                                           trust_env=False)  # never through an HTTP proxy, like MstingClient

    async def status(self, timeout: float) -> dict[str, Any]:
        try:
            response = await self._get(SERVICES_PATH, timeout)
            if response.status_code == 404:
                return self._daemon_status(await self._get(STATUS_PATH, timeout))
            return self._services(response)
        except MstingError as exc:
            return {"status": "down", "error": str(exc)}

    async def aclose(self) -> None:
        await self._http.aclose()
        self.daemon.close()


class AsyncOpenAIBackend(_AsyncHTTP):
    name = "openai"

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float) -> None:
        self.address = server_root(base_url)
        self._http = httpx.AsyncClient(base_url=self.address, headers=_headers(api_key), timeout=_timeout(timeout))
