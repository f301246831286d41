"""A remote service (an OpenAI-compatible server, Ollama, Anthropic) as a provider.

Requests go through the one retry loop (msting.providers.remote.retry) over the
service's URL pool. Generation is always streamed from the upstream:
- `generate` collects the whole reply inside one attempt, so a reply cut short, an
  upstream killed mid-answer or a stall past the first-token timeout is retried whole
  and the client never sees it;
- `stream` holds back until the upstream has produced its first content: a failure
  before that is retried (or, once this service's attempts are spent, raised before
  any event, so the router's fallback chain can take over); a failure after it ends
  the stream with a `Failed` event. A stream is never cut and presented as success.

A health monitor checks every URL each `health_interval_sec` with the model list
request (the short timeout), which also refreshes discovery.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping


from msting.api.errors import InvalidRequest, MstingError, UpstreamError, unknown_model
from msting.api.events import Attempt, Done, Embeddings, Event, Failed, Token
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, GenerationRequest
from msting.api.tools import ToolCallBuilder, ToolCallDelta
from msting.providers.base import ModelInfo, ProviderHealth
from msting.providers.remote.catalog import Catalog
from msting.providers.remote.formats import wire_for
from msting.providers.remote.pool import UrlPool, UrlState
from msting.providers.remote.retry import AttemptsFailed, RetryPolicy, attempt_loop, hedge_after
from msting.providers.remote.upstream import AttemptFailed, Deadline, LineStream, Timeouts, Upstream, transport_failure
from msting.providers.remote.wire import StreamDecoder

if TYPE_CHECKING:
    from msting.config.services import RemoteServiceConfig

log = logging.getLogger("msting.remote")


def failed_with(exc: AttemptsFailed) -> MstingError:
    """The error a client sees when a service gave up, with what it tried."""
    error = exc.error
    error.details["attempts"] = [a.as_dict() for a in exc.attempts]
    error.details["retryable"] = exc.retryable
    return error


def coalesced(events: list[Event]) -> list[Event]:
    """Tokens that arrived together go out as one (one chunk to write per network read,
    not one per token, when the upstream is faster than the client)."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Token) and out and isinstance(out[-1], Token):
            out[-1] = Token(out[-1].text + event.text)
        else:
            out.append(event)
    return out


class Opened:
    """An upstream stream that has produced its first events."""

    def __init__(self, lines: LineStream, decoder: StreamDecoder, first: list[Event]):
        self.lines = lines
        self.decoder = decoder
        self.first = first


class RemoteProvider:
    def __init__(self, config: RemoteServiceConfig, *, env: Mapping[str, str], max_tokens: int, temperature: float,
                 rng: random.Random | None = None):
        self.config = config
        self.name = config.name
        self.wire = wire_for(config.api_format)
        self.capabilities = self.wire.capabilities
        up = config.upstream
        self.settings = up
        self.pool = UrlPool(tuple(config.urls), failures=up.breaker_failures, window_sec=up.breaker_window_sec,
                            cooldown_sec=up.breaker_cooldown_sec)
        self.policy = RetryPolicy(up.max_attempts, up.backoff_initial_sec, up.backoff_max_sec, up.first_token_timeout_sec)
        self.catalog = Catalog(config.name, tuple(config.models), config.default_model, self.capabilities)
        self._api_key = config.api_key_from(env)
        self.upstream = Upstream(config.name, self.wire, self.wire.headers(self._api_key), verify=up.verify_cert,
                                 secret=self._api_key)
        self._defaults = (max_tokens, temperature)
        self._rng = rng or random.Random()
        self._monitor: asyncio.Task | None = None
        if config.api_key_env_var and self._api_key is None:
            log.warning("service %s: the environment variable %s is not set; requests go without an API key",
                        config.name, config.api_key_env_var)

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._monitor = asyncio.get_running_loop().create_task(self._watch(), name=f"health:{self.name}")

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        await self.upstream.close()

    # ---- generation -----------------------------------------------------------------

    def _prepared(self, request: GenerationRequest) -> tuple[GenerationRequest, str]:
        if isinstance(request, CompletionRequest) and not self.capabilities.completions:
            raise InvalidRequest("unsupported_by_provider", f"the {self.config.api_format} service '{self.name}' cannot continue "
                                 "a raw prompt (no text completions); send chat messages instead", param="prompt")
        if isinstance(request, ChatRequest) and not self.capabilities.chat:
            raise InvalidRequest("unsupported_by_provider", f"the service '{self.name}' has no chat API", param="messages")
        model = self.catalog.resolve(request.model)
        sampling = request.sampling.with_defaults(*self._defaults)
        return replace(request, model=model, sampling=sampling), model

    def _timeouts(self, deadline: Deadline) -> Timeouts:
        up = self.settings
        return Timeouts(connect=deadline.cap(up.short_timeout_sec), read=deadline.cap(up.first_token_timeout_sec))

    async def _open(self, url: UrlState, request: GenerationRequest, model: str, deadline: Deadline) -> Opened:
        """One attempt: send, then read until the first content (or the end)."""
        upstream_request = self.wire.generate(request, model)
        started = time.monotonic()
        lines = await self.upstream.lines(url.url, upstream_request, self._timeouts(deadline))
        decoder = self.wire.decoder(model)
        try:
            while True:
                events = await self._next_events(lines, decoder, deadline)
                events = [e for e in events if not (isinstance(e, Token) and not e.text)]
                if events:
                    break
            first = events[0]
            if isinstance(first, Failed):
                raise AttemptFailed(first.error, retryable=True)
            url.observe_latency((time.monotonic() - started) * 1000)
            return Opened(lines, decoder, events)
        except BaseException:
            await lines.aclose()
            raise

    async def _next_events(self, lines: LineStream, decoder: StreamDecoder, deadline: Deadline) -> list[Event]:
        """The events of the lines that came in the next network read (none for lines
        that make no event: a blank line, a comment)."""
        if deadline.left() <= 0:
            raise transport_failure(self.name, lines.url, asyncio.TimeoutError())
        batch = await lines.next_lines()
        if batch is None:
            events = decoder.finish()
            if not any(isinstance(e, (Done, Failed)) for e in events):
                raise AttemptFailed(UpstreamError("upstream_stream_cut", f"{self.name} ({lines.url}) ended the reply "
                                                  "before it was complete"), retryable=True)
            return events
        events = []
        for line in batch:
            events += decoder.feed(line)
        return events

    async def _attempts(self, attempt, deadline: Deadline, attempts: list[Attempt], **generation):
        try:
            return await attempt_loop(self.name, self.pool, self.policy, deadline, attempt, attempts, self._rng,
                                      **generation)
        except AttemptsFailed as exc:
            raise failed_with(exc) from None

    def _generation(self, request: GenerationRequest, model: str, deadline: Deadline) -> dict[str, Any]:
        """What the retry loop needs for a generation: its attempt (up to the first
        content, hedged on another URL shortly before the first-token timeout) and how to
        close an opened stream the race did not use."""
        async def open_(url: UrlState) -> Opened:
            return await self._open(url, request, model, deadline)

        async def discard(opened: Opened) -> None:
            await opened.lines.aclose()

        return {"attempt": open_, "hedge_after": hedge_after(self.settings.first_token_timeout_sec), "discard": discard}

    async def generate(self, request: GenerationRequest) -> Done:
        request, model = self._prepared(request)
        deadline = Deadline.after(self.settings.long_timeout_sec)
        attempts: list[Attempt] = []

        async def rest(opened: Opened) -> Done:
            try:
                return await self._collect(opened, deadline)
            finally:
                await opened.lines.aclose()

        done, url = await self._attempts(deadline=deadline, attempts=attempts, finish=rest,
                                         **self._generation(request, model, deadline))
        self.pool.release(url)
        return replace(done, attempts=tuple(attempts))

    async def _collect(self, opened: Opened, deadline: Deadline) -> Done:
        pieces: list[str] = []
        calls = ToolCallBuilder()
        events = opened.first
        while True:
            for event in events:
                if isinstance(event, Token):
                    pieces.append(event.text)
                elif isinstance(event, ToolCallDelta):
                    calls.add(event)
                elif isinstance(event, Failed):
                    raise AttemptFailed(event.error, retryable=True)  # nothing was sent: try again whole
                elif isinstance(event, Done):
                    await opened.lines.drain()
                    return replace(event, text="".join(pieces), tool_calls=calls.calls())
            events = await self._next_events(opened.lines, opened.decoder, deadline)

    def stream(self, request: GenerationRequest) -> RemoteStream:
        request, model = self._prepared(request)
        return RemoteStream(self, request, model)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        if not self.capabilities.embed:
            raise InvalidRequest("unsupported_by_provider", f"the {self.config.api_format} service '{self.name}' has no "
                                 "embeddings API", param="model")
        model = self.catalog.resolve(request.model)
        upstream_request = self.wire.embed(replace(request, model=model), model)
        deadline = Deadline.after(self.settings.long_timeout_sec)
        attempts: list[Attempt] = []

        async def once(url: UrlState) -> Embeddings:
            body = await self.upstream.json(url.url, upstream_request, deadline.cap(self.settings.long_timeout_sec))
            try:
                return self.wire.embeddings(body, model)
            except MstingError as exc:
                raise AttemptFailed(exc, retryable=True) from None

        result, url = await self._attempts(once, deadline, attempts)
        self.pool.release(url)
        return replace(result, attempts=tuple(attempts))

    # ---- models, health -------------------------------------------------------------

    def _model_state(self) -> str:
        now = time.monotonic()
        return "available" if self.pool.up_count(now) or self.pool.probing_count(now) else "unreachable"

    def models(self) -> list[ModelInfo]:
        return self.catalog.infos(self._model_state())

    async def refresh_details(self) -> None:
        """A service's details come with its discovery (its own task): nothing to do here."""

    def model(self, name: str | None) -> ModelInfo:
        """A model this service lists (configured or discovered); NotFound otherwise. (A
        request may still name an unlisted one: it is passed through to the upstream.)"""
        resolved = self.catalog.resolve(name)
        if resolved not in self.catalog.names():
            raise unknown_model(resolved, self.catalog.names(), f"the service '{self.name}' lists no model '{resolved}'")
        return self.catalog.info(resolved, self._model_state())

    def health(self) -> ProviderHealth:
        now = time.monotonic()
        up, total = self.pool.up_count(now), len(self.pool.urls)
        if up == total:
            return ProviderHealth("ready", None)
        if up:
            return ProviderHealth("degraded", f"{total - up} of {total} URLs are down")
        if self.pool.probing_count(now):
            return ProviderHealth("degraded", "no URL is known to answer; the next request probes one")
        return ProviderHealth("failed", "every URL is down")

    async def _check(self, url: UrlState) -> dict:
        """One health check of one URL (the model list request, with the short timeout)."""
        started = time.monotonic()
        url.last_checked = time.time()
        try:
            body = await self.upstream.json(url.url, self.wire.list_models(), self.settings.short_timeout_sec)
            models = self.wire.models(body)
        except (AttemptFailed, MstingError) as exc:
            error = exc.error if isinstance(exc, AttemptFailed) else exc
            url.record_error(f"health check: {error.message}")
            url.breaker.failed(time.monotonic(), health=True)
            return {"url": url.url, "ok": False, "latency_ms": None, "error": error.message}
        ms = (time.monotonic() - started) * 1000
        url.observe_latency(ms)
        url.breaker.health_ok(time.monotonic())
        if self.settings.enable_discovery:
            self.catalog.update(url.url, models)
            await self._details(url, models)
        return {"url": url.url, "ok": True, "latency_ms": round(ms, 2), "error": None, "models": len(models)}

    async def _details(self, url: UrlState, models: list) -> None:
        """What a wire can say beyond the list (Ollama: which models are in memory, and
        each model's context length, asked once). Best effort: the list is what counts."""
        running, show = getattr(self.wire, "running", None), getattr(self.wire, "show", None)
        timeout = self.settings.short_timeout_sec
        try:
            if running is not None:
                self.catalog.loaded = set(self.wire.running_models(await self.upstream.json(url.url, running(), timeout)))
            if show is not None:
                for model in models:
                    if model.name not in self.catalog.detailed:
                        body = await self.upstream.json(url.url, show(model.name), timeout)
                        self.catalog.detailed[model.name] = self.wire.model_details(body, model.name)
        except (AttemptFailed, MstingError) as exc:
            log.debug("service %s: model details from %s: %s", self.name, url.url, exc)

    async def ping(self) -> dict:
        """Check every URL now."""
        results = await asyncio.gather(*(self._check(u) for u in self.pool.urls))
        health = self.health()
        return {"name": self.name, "status": health.status, "reason": health.reason, "urls": list(results)}

    async def _watch(self) -> None:
        while True:
            try:
                # A URL serving requests is checked by them; and a check could cost one
                # (llama-cpp-python's server stops a generation when another request arrives).
                await asyncio.gather(*(self._check(u) for u in self.pool.urls if u.in_flight == 0))
            except Exception:  # a bug here must not end the monitor
                log.exception("service %s: health check failed unexpectedly", self.name)
            await asyncio.sleep(self.settings.health_interval_sec)

    def _key_source(self) -> str:
        source = self.config.key_source
        if self.config.api_key_env_var and self._api_key is None:
            return f"{source} (not set when the daemon started: requests go without a key)"
        return source

    def status(self) -> dict[str, Any]:
        health = self.health()
        now = time.monotonic()
        return {"name": self.name, "api_format": self.config.api_format, "builtin": False, "status": health.status,
                "reason": health.reason, "default_model": self.config.default_model, "models": self.catalog.names(),
                "key_source": self._key_source(), "capabilities": self.capabilities.as_dict(),
                "urls": self.pool.states(now),
                "discovery": {"enabled": self.settings.enable_discovery, "refreshed_at": self.catalog.refreshed_at}}


class RemoteStream:
    """A remote generation's events; see the module's docstring for its contract."""

    def __init__(self, provider: RemoteProvider, request: GenerationRequest, model: str):
        self.provider = provider
        self.request = request
        self.model = model
        self.attempts: list[Attempt] = []
        self._iter: AsyncIterator[Event] | None = None
        self._opened: Opened | None = None
        self._url: UrlState | None = None

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iter is None:
            self._iter = self._events()
        return self._iter

    async def _events(self) -> AsyncIterator[Event]:
        p = self.provider
        deadline = Deadline.after(p.settings.long_timeout_sec)

        self._opened, self._url = await p._attempts(deadline=deadline, attempts=self.attempts,
                                                    **p._generation(self.request, self.model, deadline))
        opened = self._opened
        try:
            events = opened.first
            while True:
                for event in events:
                    if isinstance(event, Token) and not event.text:
                        continue
                    if isinstance(event, Done):
                        await opened.lines.drain()
                        yield replace(event, attempts=tuple(self.attempts))
                        return
                    yield event
                    if isinstance(event, Failed):
                        return
                try:
                    events = coalesced(await p._next_events(opened.lines, opened.decoder, deadline))
                except AttemptFailed as exc:
                    error = exc.error
                    error.details["incomplete"] = True
                    url = self._url
                    if url is not None:  # the URL failed this request: its circuit and status hear of it
                        url.failed += 1
                        url.record_error(f"a reply was cut short: {error.message}")
                        url.breaker.failed(time.monotonic())
                    yield Failed(UpstreamError("upstream_stream_broken", f"the reply was cut short: {error.message}",
                                               incomplete=True, url=opened.lines.url))
                    return
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._opened is not None:
            opened, self._opened = self._opened, None
            await opened.lines.aclose()
        if self._url is not None:
            url, self._url = self._url, None
            self.provider.pool.release(url)

    async def aclose(self) -> None:
        """Leave early: the upstream connection is closed (the upstream stops generating)."""
        if self._iter is not None:
            it, self._iter = self._iter, None
            await it.aclose()
        await self._release()

    async def __aenter__(self) -> RemoteStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
