"""The one entry point of every route: resolve a model name to a provider, call it, and
fall back along `fallback_chain` when a service cannot answer.

Names. A name is `service~model`, a bare `model`, or None/"default" (the default
service's default model). A bare name goes to the default service when that service
knows it, else to the one other service (the stub aside) that lists it; an unknown
name is a `NotFound` listing the close matches. Never a silent substitute.

The name in a reply is one that routes back to the same model: bare for the default
service, `service~model` for any other (the stub's replies always read `stub~...`).

Fallback. When the service a request resolved to is in `fallback_chain` and fails in
a way another service may not (unavailable, timed out, an upstream error), the
services after it in the chain get the request in turn, each with the same model name if it lists
it, else its own default. Retries within a service are the service's own (one retry
loop, msting.providers.remote.retry); this loop only moves between services. A stream
fails over only before its first event; after that, the stream's own `Failed` event
is the end. When every service fails, the error names each attempt.

Capabilities. A request a service cannot serve at all (tool calling on one without
it: the daemon's own workers, the stub) is never sent to it: alone, it is a 400 naming
the service and model; in a chain the service is passed over, recorded as an attempt,
and when no service could take it the 400 lists why for each.

Observing. Every request the router takes ends in exactly one `RequestEnded`, handed to
the `observer` given at construction (msting.daemon.metrics counts them): this is the one
place on the request path where requests, tokens, time to first token, durations,
retries and fallbacks are seen, whatever the route or the provider.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import time
from dataclasses import dataclass, replace
from typing import AsyncIterator, Protocol, TypeVar

from msting.api.errors import (
    InvalidRequest, MstingError, NotFound, ServerError, Timeout, Unavailable, UpstreamError, unknown_model,
)
from msting.api.events import Attempt, Done, Embeddings, Event, Failed, Token, Usage
from msting.api.requests import ChatRequest, EmbeddingRequest, GenerationRequest, names_default
from msting.api.tools import ToolCallDelta
from msting.policy.limits import Limiter, Refusal, Ticket
from msting.providers.base import ModelInfo, Provider, Stream

SEPARATOR = "~"
STUB = "stub"
FAILS_OVER = (Unavailable, Timeout, ServerError)  # what another service may not suffer from
CLOSE_MATCHES = 5

R = TypeVar("R", bound="GenerationRequest | EmbeddingRequest")
Step = tuple[Provider, "str | None"]


@dataclass(frozen=True)
class RequestEnded:
    """One request, as it ended. `service` and `model` are the ones that answered, or
    the first ones asked (None when the name resolved to nothing); `kind` is generate,
    stream or embed; `error` is None for an answer, `cancelled` true when the client
    left first; `first_token_sec` is the time to a stream's first token. `client` is
    the request's `RequestMeta.client`, `route` what picked its model, `fallbacks` how
    many services failed it before the one that answered (or before it gave up), and
    `cache_hit` true for an answer from the response cache (no provider was called)."""

    kind: str
    service: str | None
    model: str | None
    seconds: float
    error: BaseException | None = None
    cancelled: bool = False
    usage: Usage | None = None
    first_token_sec: float | None = None
    attempts: tuple[Attempt, ...] = ()
    client: str | None = None
    route: str | None = None
    fallbacks: int = 0
    cache_hit: bool = False


class RequestObserver(Protocol):
    def request_ended(self, ended: RequestEnded) -> None: ...


class Observers:
    """Several observers as one, told in order."""

    def __init__(self, *observers: RequestObserver):
        self.observers = observers

    def request_ended(self, ended: RequestEnded) -> None:
        for observer in self.observers:
            observer.request_ended(ended)


def attempts_of(error: MstingError, service: str, ms: float) -> list[Attempt]:
    """The attempts a failed call made: the provider's own list, else one."""
    listed = error.details.get("attempts")
    if listed:
        return [Attempt(a["service"], a["url"], a["error"], a["ms"]) for a in listed]
    return [Attempt(service, None, error.message, ms)]


class Router:
    def __init__(self, providers: list[Provider], default: str | None = None, fallback_chain: tuple[str, ...] = (),
                 observer: RequestObserver | None = None, limits: Limiter | None = None):
        self.observer = observer
        self.limits = limits if limits is not None and limits.active else None
        self.providers = {p.name: p for p in providers}
        self.default = default or providers[0].name
        if self.default not in self.providers:
            raise ValueError(f"the default service '{self.default}' is not one of: {', '.join(sorted(self.providers))}")
        unknown = [s for s in fallback_chain if s not in self.providers]
        if unknown:
            raise ValueError(f"the fallback chain names unknown services: {', '.join(unknown)}")
        self.fallback_chain = tuple(fallback_chain)

    # ---- names ----------------------------------------------------------------------

    def public_name(self, service: str, model: str) -> str:
        if service == self.default and service != STUB:
            return model
        return f"{service}{SEPARATOR}{model}"

    def _names(self, provider: Provider) -> set[str]:
        return {info.id for info in provider.models()}

    def _lists(self, provider: Provider, name: str | None) -> bool:
        """Does `provider` list `name`? `x` also matches `x:latest` (Ollama's default tag)."""
        names = self._names(provider)
        return name in names or (name is not None and ":" not in name and f"{name}:latest" in names)

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
        default = self.providers[self.default]
        if names_default(name) or self._lists(default, name):
            return default, name
        owners = [p for p in self.providers.values() if p.name not in (self.default, STUB) and self._lists(p, name)]
        if len(owners) == 1:
            return owners[0], name
        if len(owners) > 1:
            raise NotFound("model_ambiguous", f"model '{name}' is served by several services; name one: "
                           + ", ".join(f"{p.name}{SEPARATOR}{name}" for p in owners))
        return default, name  # the default service decides (a remote one may pass it through)

    def _known(self) -> list[str]:
        return sorted(info.id for info in self.providers[self.default].models())

    def close_matches(self, name: str) -> list[str]:
        everything = [self.public_name(i.service, i.id) for i in self.models_raw()]
        pool = everything + [n.partition(SEPARATOR)[2] for n in everything if SEPARATOR in n]
        found = difflib.get_close_matches(name, pool, n=CLOSE_MATCHES, cutoff=0.5)
        return sorted({n if n in everything else next(e for e in everything if e.endswith(SEPARATOR + n)) for n in found})

    def _steps(self, name: str | None) -> list[Step]:
        try:
            provider, model = self.resolve(name)
        except NotFound as exc:
            self._with_close_matches(exc, name)
            raise
        steps: list[Step] = [(provider, model)]
        chain = self.fallback_chain
        if provider.name in chain:  # a service outside the chain has no fallback: none was configured for it
            for service in chain[chain.index(provider.name) + 1:]:
                steps.append((self.providers[service], self._mapped(self.providers[service], model)))
        return steps

    def _mapped(self, provider: Provider, model: str | None) -> str | None:
        """The model a fallback service gets: the same name if it lists it, else its
        default if it has one, else the same name."""
        if model is None or model in self._names(provider):
            return model
        try:
            provider.model(None)
        except MstingError:
            return model
        return None

    def _with_close_matches(self, exc: NotFound, name: str | None) -> None:
        if name and exc.code == "model_not_found" and "close_matches" not in exc.details:
            close = self.close_matches(name)
            exc.details["close_matches"] = close
            if close:
                exc.message = f"{exc.message}; close matches: {', '.join(close)}"
                exc.args = (exc.message,)

    # ---- calls ----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Done:
        return await self._call("generate", request)  # type: ignore[return-value]

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        return await self._call("embed", request)  # type: ignore[return-value]

    # ---- rate limits ------------------------------------------------------------------

    def admit(self, provider: Provider, model: str | None, request: R | GenerationRequest) -> Ticket | Refusal | None:
        """The rate limits' answer for `request` on this step (None: nothing limits it)."""
        if self.limits is None:
            return None
        if model is None and self.limits.limits_models(provider.name):
            try:
                model = provider.model(None).id  # the default model's own limits
            except MstingError:
                pass
        return self.limits.admit(provider.name, model, request)

    async def wait_for_room(self, refused: list[tuple[str, Refusal]], deadline: float) -> None:
        """Every step left was refused by a rate limit: wait for the earliest room if it
        comes before the request's deadline, else the 429 of the earliest."""
        assert self.limits is not None
        service, soonest = min(refused, key=lambda r: math.inf if r[1].wait is None else r[1].wait)
        if soonest.wait is None or self.limits.clock() + soonest.wait > deadline:
            raise soonest.error(service)
        await asyncio.sleep(soonest.wait)

    async def _call(self, method: str, request: R) -> Done | Embeddings:
        started = time.monotonic()
        first: Step | None = None
        tried: list[Attempt] = []
        ticket: Ticket | None = None
        try:
            steps = self._steps(request.model)
            first = steps[0]
            errors: list[tuple[str, MstingError]] = []
            pending = list(enumerate(steps))
            deadline = self.limits.deadline(request.meta) if self.limits is not None else 0.0
            while True:
                refused: list[tuple[int, Step, Refusal]] = []
                for i, (provider, model) in pending:
                    unable = cannot_serve(provider, model, request)
                    if unable is not None:  # never sent: alone it is the answer, in a chain the next one's turn
                        if len(steps) == 1:
                            raise unable
                        tried.append(Attempt(provider.name, None, unable.message, 0.0))
                        errors.append((provider.name, unable))
                        continue
                    admitted = self.admit(provider, model, request)
                    if isinstance(admitted, Refusal):  # over a limit: the next service with room, else wait
                        refused.append((i, (provider, model), admitted))
                        tried.append(Attempt(provider.name, None, f"rate limited: {admitted.reason}", 0.0))
                        continue
                    ticket = admitted
                    began = time.monotonic()
                    try:
                        result = await getattr(provider, method)(request if model == request.model else replace(request, model=model))
                    except MstingError as exc:
                        if ticket is not None:
                            ticket.settle(None)
                        if isinstance(exc, NotFound) and i == 0:
                            self._with_close_matches(exc, request.model)
                        if len(steps) == 1 or not falls_over(exc, first=i == 0):
                            raise
                        tried += attempts_of(exc, provider.name, (time.monotonic() - began) * 1000)
                        errors.append((provider.name, exc))
                        continue
                    if ticket is not None:
                        ticket.settle(result.usage)
                    own = list(result.attempts) or [Attempt(provider.name, None, None, (time.monotonic() - began) * 1000)]
                    done = replace(result, model=self.public_name(provider.name, result.model), attempts=tuple(tried + own))
                    self._ended(RequestEnded(method, provider.name, result.model, time.monotonic() - started, usage=result.usage,
                                             attempts=done.attempts, client=request.meta.client, route=request.meta.route,
                                             fallbacks=len(errors) + len(refused)))
                    return done
                if not refused:
                    raise every_service_failed(errors, tried)
                await self.wait_for_room([(step[0].name, refusal) for _, step, refusal in refused], deadline)
                pending = [(i, step) for i, step, _ in refused]
        except BaseException as exc:  # CancelledError too: the client went away
            if ticket is not None:
                ticket.settle(None)
            self._failed(method, first, request, started, exc, tried, len(errors) if first is not None else 0)
            raise

    def _ended(self, ended: RequestEnded) -> None:
        if self.observer is not None:
            self.observer.request_ended(ended)

    def _failed(self, kind: str, first: Step | None, request: R | GenerationRequest, started: float, exc: BaseException,
                tried: list[Attempt], fallbacks: int = 0) -> None:
        """A request that ended without an answer. A MstingError carries every attempt
        (the provider's own list, or every service's when the whole chain failed)."""
        if self.observer is None:
            return
        cancelled = isinstance(exc, (asyncio.CancelledError, GeneratorExit))
        service = first[0].name if first is not None else None
        attempts = attempts_of(exc, service, 0.0) if isinstance(exc, MstingError) and service is not None else tried
        model = None if first is None else first[1] if first[1] is not None else request.model
        self.observer.request_ended(RequestEnded(kind, service, model, time.monotonic() - started,
                                                 error=None if cancelled else exc, cancelled=cancelled, attempts=tuple(attempts),
                                                 client=request.meta.client, route=request.meta.route, fallbacks=fallbacks))

    def stream(self, request: GenerationRequest) -> RoutedStream:
        started = time.monotonic()
        steps: list[Step] = []
        try:
            steps = self._steps(request.model)
            return RoutedStream(self, steps, request)
        except MstingError as exc:  # refused before any event (unknown model, full queue)
            self._failed("stream", steps[0] if steps else None, request, started, exc, [])
            raise

    # ---- listing --------------------------------------------------------------------

    def models_raw(self) -> list[ModelInfo]:
        return [info for provider in self.providers.values() for info in provider.models()]

    def models(self) -> list[ModelInfo]:
        """Every model of every service, named as requests name it. The stub is listed
        only where the config names it (the fallback chain or the default service):
        nobody should pick it from a list thinking it a model."""
        shown = [p for p in self.providers.values() if p.name != STUB or STUB in self.fallback_chain or self.default == STUB]
        return [self.public(info) for provider in shown for info in provider.models()]

    async def refresh_details(self) -> None:
        """Each service's `refresh_details` (the local models' GGUF headers, read in a
        thread): the model routes call it before `models()` / `model()`."""
        await asyncio.gather(*(provider.refresh_details() for provider in self.providers.values()))

    def public(self, info: ModelInfo) -> ModelInfo:
        return replace(info, id=self.public_name(info.service, info.id), upstream=info.upstream or info.id)

    def model(self, name: str) -> ModelInfo:
        try:
            provider, model = self.resolve(name)  # an unknown service too: with close matches, as a request's
            return self.public(provider.model(model))
        except NotFound as exc:
            self._with_close_matches(exc, name)
            raise

    def service(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            raise NotFound("service_not_found", f"unknown service '{name}'; the services are: {', '.join(self.providers)}")
        return provider

    def services(self) -> list[dict]:
        out = []
        for provider in self.providers.values():
            status = provider.status()
            status["is_default"] = provider.name == self.default
            status["in_fallback_chain"] = provider.name in self.fallback_chain
            out.append(status)
        return out


def cannot_serve(provider: Provider, model: str | None, request: GenerationRequest | EmbeddingRequest) -> InvalidRequest | None:
    """Why `provider` cannot serve `request` at all, whatever its state (None: it may):
    tool calling on a service without it."""
    if not isinstance(request, ChatRequest) or not request.uses_tools or provider.capabilities.tools:
        return None
    try:
        name = provider.model(model).id
    except MstingError:
        name = model or "default"
    return InvalidRequest("tools_unsupported", f"the service '{provider.name}' (model '{name}') does not support tools: "
                          "it cannot take a request with tools, tool calls or tool results; send it to a remote "
                          "openai, anthropic or ollama service (or a fallback chain with one)",
                          param="tools" if request.tools else "messages")


def falls_over(error: MstingError, *, first: bool) -> bool:
    """Does another service get the request after this error? After the first service,
    any error moves on (a fallback that cannot serve the request is passed over); the
    first service's errors that say the request itself is wrong go back to the client."""
    return not first or isinstance(error, FAILS_OVER)


def every_service_failed(errors: list[tuple[str, MstingError]], attempts: list[Attempt]) -> MstingError:
    said = "; ".join(f"{service}: {error.message}" for service, error in errors)
    details = {"attempts": [a.as_dict() for a in attempts], "services": [s for s, _ in errors]}
    message = f"no service could answer ({len(attempts)} attempts): {said}"
    if errors and all(isinstance(e, InvalidRequest) for _, e in errors):  # none could take it at all
        return InvalidRequest("no_service_can_serve", message, param=errors[0][1].details.get("param"),
                              **details)
    if all(isinstance(e, Unavailable) for _, e in errors):
        retry = [e.retry_after for _, e in errors if e.retry_after is not None]
        return Unavailable("all_services_failed", message, retry_after=min(retry) if retry else 1, **details)
    return UpstreamError("all_services_failed", message, **details)


class RoutedStream:
    """A stream that fails over between services until one produces its first event."""

    def __init__(self, router: Router, steps: list[Step], request: GenerationRequest):
        self.router = router
        self.request = request
        self.attempts: list[Attempt] = []
        self.service = steps[0][0].name
        self._steps = list(steps)
        self._errors: list[tuple[str, MstingError]] = []
        self._current: Stream | None = None
        self._started = time.monotonic()
        self._began = self._started  # the request's own start, for its duration
        self._first_token: float | None = None
        self._committed = False  # a service produced the first event: it answers
        self._ended = False  # the observer was told how it ended
        self._iter: AsyncIterator[Event] | None = None
        self._ticket: Ticket | None = None  # the rate limits' charges of the service asked now
        self._refused: list[tuple[int, Refusal]] = []  # steps over a rate limit, tried again after a wait
        self._deadline = router.limits.deadline(request.meta) if router.limits is not None else 0.0
        # The first service's admission errors (unknown model, full queue) are raised
        # here, before any response, unless a fallback may still answer.
        provider, model = self._steps[0]
        self._current = self._open(provider, model, first=True, index=0)
        self._opened = True  # the first step's stream (or None: it failed over or was refused) is in _current
        self.model = router.public_name(provider.name, self._current.model) if self._current is not None else (request.model or "default")

    def _settle(self, usage: Usage | None = None) -> None:
        if self._ticket is not None:
            self._ticket.settle(usage)
            self._ticket = None

    def _open(self, provider: Provider, model: str | None, *, first: bool, index: int) -> Stream | None:
        self._started = time.monotonic()
        self._settle()
        unable = cannot_serve(provider, model, self.request)
        if unable is not None:  # never sent: alone it is the answer, in a chain the next one's turn
            if len(self._steps) == 1:
                raise unable
            self._failed(provider.name, unable)
            return None
        admitted = self.router.admit(provider, model, self.request)
        if isinstance(admitted, Refusal):
            self._refused.append((index, admitted))
            self.attempts.append(Attempt(provider.name, None, f"rate limited: {admitted.reason}", 0.0))
            return None
        self._ticket = admitted
        try:
            return provider.stream(self.request if model == self.request.model else replace(self.request, model=model))
        except MstingError as exc:
            self._settle()
            if first and isinstance(exc, NotFound):
                self.router._with_close_matches(exc, self.request.model)
            if len(self._steps) == 1 or not falls_over(exc, first=first):
                raise
            self._failed(provider.name, exc)
            return None

    def _failed(self, service: str, error: MstingError) -> None:
        self.attempts += attempts_of(error, service, (time.monotonic() - self._started) * 1000)
        self._errors.append((service, error))

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iter is None:
            self._iter = self._events()
        return self._iter

    def _end(self, *, error: BaseException | None = None, cancelled: bool = False, usage: Usage | None = None) -> None:
        """Tell the router's observer how the request ended (once)."""
        if self._ended:
            return
        self._ended = True
        self._settle(usage)
        if self._committed and self._current is not None:
            model = self._current.model
        else:
            model = self._steps[0][1] if self._steps[0][1] is not None else self.request.model
        meta = self.request.meta
        self.router._ended(RequestEnded("stream", self.service, model, time.monotonic() - self._began, error=error,
                                        cancelled=cancelled, usage=usage, first_token_sec=self._first_token,
                                        attempts=tuple(self.attempts), client=meta.client, route=meta.route,
                                        fallbacks=len(self._errors) + len(self._refused)))

    async def _events(self) -> AsyncIterator[Event]:
        routed = self._routed()
        try:
            async for event in routed:
                if self._first_token is None and isinstance(event, (Token, ToolCallDelta)):
                    self._first_token = time.monotonic() - self._began
                if isinstance(event, Done):
                    self._end(usage=event.usage, cancelled=event.finish_reason == "cancelled")
                elif isinstance(event, Failed):
                    self._end(error=event.error)
                yield event
        except BaseException as exc:
            cancelled = isinstance(exc, (asyncio.CancelledError, GeneratorExit))
            self._end(error=None if cancelled else exc, cancelled=cancelled)
            raise
        finally:
            await routed.aclose()

    async def _routed(self) -> AsyncIterator[Event]:
        order = list(enumerate(self._steps))
        while order:
            async for event in self._walk(order):
                yield event
                if self._committed and isinstance(event, (Done, Failed)):
                    return
            if self._committed:
                return
            if not self._refused:
                break
            # every service left is over a rate limit: wait for room (nothing was sent yet)
            refused, self._refused = self._refused, []
            await self.router.wait_for_room([(self._steps[i][0].name, r) for i, r in refused], self._deadline)
            order = [(i, self._steps[i]) for i, _ in refused]
        raise every_service_failed(self._errors, self.attempts)

    async def _walk(self, order: list[tuple[int, Step]]) -> AsyncIterator[Event]:
        for n, (i, (provider, model)) in enumerate(order):
            first = i == 0
            if self._opened:
                self._opened = False
                stream = self._current
            else:
                stream = self._open(provider, model, first=first, index=i)
            self._current = stream
            if stream is None:
                continue
            events = stream.__aiter__()
            last = i == len(self._steps) - 1
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                event = Failed(ServerError("stream_empty", f"{provider.name} ended the stream without a reply"))
            except MstingError as exc:
                await stream.aclose()
                if len(self._steps) == 1 or last and not self._errors or not falls_over(exc, first=first):
                    raise
                self._failed(provider.name, exc)
                continue
            # A Failed first event is a failure before the first event: the next service
            # gets its turn, and after the last one the error names every attempt (as a
            # generate's does), still before any response was sent.
            if isinstance(event, Failed) and (not last or self._errors) and falls_over(event.error, first=first):
                await stream.aclose()
                self._failed(provider.name, event.error)
                continue
            # Committed: this service answers; nothing is tried after its first event.
            self._committed = True
            self.service = provider.name
            self.model = self.router.public_name(provider.name, stream.model)
            own = list(getattr(stream, "attempts", ())) or [Attempt(provider.name, None, None, 0.0)]
            self.attempts += own
            while True:
                if isinstance(event, Done):
                    yield replace(event, model=self.router.public_name(provider.name, event.model), attempts=tuple(self.attempts))
                    return
                yield event
                if isinstance(event, Failed):
                    return
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    return
        raise every_service_failed(self._errors, self.attempts)

    async def aclose(self) -> None:
        if self._iter is not None:
            it, self._iter = self._iter, None
            await it.aclose()
        if self._current is not None:
            await self._current.aclose()
        self._end(cancelled=True)  # left before its end (nothing if it had ended)

    async def __aenter__(self) -> RoutedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
