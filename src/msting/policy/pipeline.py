"""The outer traffic policies, in front of the providers' Router: request routing, then
the response cache, then the Router (its rate limits, fallback chain and the rest).

The HTTP layer calls a `PolicyPipeline` where it would call the Router: `generate`,
`stream` and `embed` go through the policies, `explain` evaluates them without
executing the request, and every other attribute is the Router's own.

Routing applies to a request that names no model (or "default"): the router model,
when the active profile has one, names a route within its budget; otherwise (or when
it gives no decision) the first route whose rule matches does; no match leaves the
request to the default model. The route's name travels in the request's
`RequestMeta.route` (so the Router's observer sees it) and comes back as the
`x-msting-route` header (and `x-msting-route-by`: rule or router-model).

The cache answers a reproducible generation (msting.policy.cache) that it has seen,
keyed on the resolved `service~model`: a hit calls no provider, is reported to the
Router's observer as a `RequestEnded` with `cache_hit` set and no tokens (it cost
nothing), and is streamed as the
original would be when the request streams. `Cache-Control: no-cache` skips the read
(the answer is still stored), `no-store` skips both. `x-msting-cache` says hit or miss.

The active profile's policy is read when the profile changes (a switch), and the cache
starts empty with each profile.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

from msting.api.errors import MstingError
from msting.api.events import Done, Embeddings, Event, Token, Usage
from msting.api.tools import FINISH_TOOL_CALLS, ToolCallBuilder, ToolCallDelta, deltas_of
from msting.api.requests import EmbeddingRequest, GenerationRequest, Request, names_default
from msting.config.profiles.policy import Policy, RouteConfig
from msting.policy import router_model
from msting.policy.cache import CachedAnswer, ResponseCache, canonical, digest, reproducible
from msting.policy.rules import Facts, explain_rules, facts_of, first_match
from msting.providers.router import RequestEnded, Router

log = logging.getLogger("msting.policy")

CACHED_FINISH = ("stop", "length", FINISH_TOOL_CALLS)  # answers worth keeping (not cancelled, not failed)
_PIECES = re.compile(r"\S*\s*")  # how a cached answer is streamed: a word and its trailing space per chunk


@dataclass(frozen=True)
class RouteChoice:
    """The route a request took: its name, who chose it (rule or router-model), the
    model it names, and the router model's decision when one was asked."""

    name: str | None
    by: str | None
    model: str | None
    decision: router_model.Decision | None = None


NO_ROUTE = RouteChoice(None, None, None)


@dataclass
class _Active:
    profile: str
    policy: Policy
    cache: ResponseCache | None


@dataclass(frozen=True)
class _Lookup:
    """The cache's view of one request: its canonical key (None: not cached), whether
    it may read and write, and the service and model that would answer."""

    key: str | None
    read: bool
    write: bool
    service: str | None = None
    model: str | None = None
    reason: str = ""


class PolicyPipeline:
    def __init__(self, router: Router, *, local: str, active_profile: Callable[[], str],
                 load_policy: Callable[[str], Policy]):
        self.router = router
        self.local = local
        self._active_profile = active_profile
        self._load_policy = load_policy
        self._active: _Active | None = None

    def __getattr__(self, name: str) -> Any:  # everything but the policies is the Router's
        return getattr(self.router, name)

    # ---- the active profile's policy -------------------------------------------------

    def active(self) -> _Active:
        name = self._active_profile()
        if self._active is None or self._active.profile != name:
            try:
                policy = self._load_policy(name)
            except Exception as exc:  # the switch validated it; a file changed since is not fatal
                log.error("cannot read the policy of profile %s (routes and cache off): %s", name, exc)
                policy = Policy()
            c = policy.cache
            cache = ResponseCache(ttl_sec=c.ttl_sec, max_entries=c.max_entries, max_bytes=c.max_bytes) if c.enabled else None
            self._active = _Active(name, policy, cache)
            log.info("profile %s: %d routes%s, response cache %s", name, len(policy.routes),
                     f", router model {policy.router_model.model}" if policy.router_model.model else "",
                     f"on (ttl {c.ttl_sec:g} s, {c.max_entries} entries, {c.max_mb:g} MiB)" if c.enabled else "off")
        return self._active

    # ---- routing ------------------------------------------------------------------

    def _target(self, route: RouteConfig) -> str | None:
        if route.to == "default":
            return None
        return route.to if "~" in route.to else f"{self.local}~{route.to}"

    def _needs_router_model(self, policy: Policy, request: Request) -> bool:
        return (policy.router_model.model is not None and names_default(request.model) and len(policy.routes) > 1
                and not isinstance(request, EmbeddingRequest))

    def _by_rules(self, policy: Policy, request: Request, facts: Facts | None = None,
                  decision: router_model.Decision | None = None) -> RouteChoice:
        if not policy.routes or not names_default(request.model):
            return NO_ROUTE
        route = first_match(policy.routes, facts or facts_of(request))
        if route is None:
            return RouteChoice(None, None, None, decision)
        return RouteChoice(route.name, "rule", self._target(route), decision)

    async def _by_router_model(self, policy: Policy, request: Request) -> RouteChoice:
        facts = facts_of(request)
        provider = self.router.service(self.local)
        decision = await router_model.decide(provider, policy.router_model.model, policy.routes, facts, policy.router_model)
        route = policy.route(decision.route) if decision.route else None
        if route is None:
            return self._by_rules(policy, request, facts, decision)
        return RouteChoice(route.name, "router-model", self._target(route), decision)

    @staticmethod
    def _routed(request: Request, choice: RouteChoice) -> Request:
        if choice.name is None:
            return request
        return replace(request, model=choice.model, meta=replace(request.meta, route=choice.name))

    # ---- the cache ------------------------------------------------------------------

    def _lookup(self, active: _Active, request: GenerationRequest) -> _Lookup:
        if active.cache is None:
            return _Lookup(None, False, False, reason="the profile's response cache is off")
        control = request.meta.cache_control
        if control.no_store:
            return _Lookup(None, False, False, reason="Cache-Control: no-store")
        if not reproducible(request.sampling):
            return _Lookup(None, False, False, reason="not reproducible (temperature is not 0 and no seed is set)")
        try:
            provider, model = self.router.resolve(request.model)
            if names_default(model):
                model = provider.model(None).id
        except MstingError:  # the Router says what is wrong when it is called
            return _Lookup(None, False, False, reason="the model does not resolve")
        assert model is not None
        key = canonical(request, active.profile, provider.name, model)
        reason = "Cache-Control: no-cache (answered afresh, then stored)" if control.no_cache else "cacheable"
        return _Lookup(key, not control.no_cache, True, provider.name, model, reason)

    def _hit(self, active: _Active, lookup: _Lookup, request: GenerationRequest, kind: str) -> CachedAnswer | None:
        if not lookup.read or active.cache is None or lookup.key is None:
            return None
        started = time.monotonic()
        answer = active.cache.get(lookup.key)
        observer = self.router.observer
        if answer is not None and observer is not None:
            observer.request_ended(RequestEnded(kind, lookup.service, lookup.model, time.monotonic() - started, usage=Usage(),
                                            client=request.meta.client, route=request.meta.route, cache_hit=True))
        return answer

    @staticmethod
    def _stores(active: _Active, lookup: _Lookup) -> bool:
        """Whether the answer to this lookup goes into the cache (if it finishes as CACHED_FINISH)."""
        return lookup.write and lookup.key is not None and active.cache is not None

    @staticmethod
    def _store(active: _Active, lookup: _Lookup, done: Done, text: str, tool_calls: tuple = ()) -> None:
        if PolicyPipeline._stores(active, lookup) and done.finish_reason in CACHED_FINISH:
            assert active.cache is not None and lookup.key is not None
            active.cache.put(lookup.key, CachedAnswer(done.model, text, done.finish_reason, done.usage, tuple(tool_calls)))

    # ---- calls ----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Done:
        active = self.active()
        if self._needs_router_model(active.policy, request):
            choice = await self._by_router_model(active.policy, request)
        else:
            choice = self._by_rules(active.policy, request)
        request = self._routed(request, choice)  # type: ignore[assignment]
        lookup = self._lookup(active, request)
        answer = self._hit(active, lookup, request, "generate")
        if answer is not None:
            return Done(answer.model, answer.text, answer.finish_reason, answer.usage, {}, (), route=choice.name,
                        route_by=choice.by, cache="hit", tool_calls=answer.tool_calls)
        done = await self.router.generate(request)
        if active.cache is None and choice.name is None:  # nothing to say: the Router's answer as it is
            return done
        self._store(active, lookup, done, done.text, done.tool_calls)
        return replace(done, route=choice.name, route_by=choice.by, cache="miss" if active.cache is not None else None)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        choice = self._by_rules(self.active().policy, request)
        result = await self.router.embed(self._routed(request, choice))  # type: ignore[arg-type]
        return result if choice.name is None else replace(result, route=choice.name, route_by=choice.by)

    def stream(self, request: GenerationRequest) -> PolicyStream:
        """The stream of `request`. Routed by rules alone, it is opened here (an unknown
        model raises now, before any response); with a router model to ask, at its first
        event (an error then is still raised before anything is sent)."""
        active = self.active()
        stream = PolicyStream(self, active, request)
        if not self._needs_router_model(active.policy, request):
            stream.open(self._by_rules(active.policy, request))
        return stream

    # ---- the dry run ----------------------------------------------------------------

    async def explain(self, request: Request) -> dict:
        """What the policies would do with `request`, and why, without executing it
        (the router model, when there is one, is asked for real)."""
        active = self.active()
        policy = active.policy
        facts = facts_of(request)
        out: dict[str, Any] = {"profile": active.profile, "request": {"model": request.model, **facts.as_dict()},
                               "routes": explain_rules(policy.routes, facts), "router_model": None}
        if not names_default(request.model):
            choice = NO_ROUTE
            why = f"the request names the model {request.model!r}: it is not routed"
        elif not policy.routes:
            choice = NO_ROUTE
            why = f"profile {active.profile} has no routes: the default model answers"
        else:
            if self._needs_router_model(policy, request):
                choice = await self._by_router_model(policy, request)
            else:
                choice = self._by_rules(policy, request, facts)
            decision = choice.decision
            if decision is not None:
                out["router_model"] = {"model": policy.router_model.model, "budget_ms": policy.router_model.budget_ms,
                                       **decision.as_dict()}
            if choice.by == "router-model":
                why = f"{decision.reason} in {decision.ms:.1f} ms" if decision else ""
            elif choice.name is not None:
                first = f"{decision.reason}; " if decision is not None else ""
                why = f"{first}route {choice.name} is the first whose rule matches"
            else:
                first = f"{decision.reason}; " if decision is not None else ""
                why = f"{first}no route's rule matches: the default model answers"
        routed = self._routed(request, choice)
        out.update({"route": choice.name, "by": choice.by, "model": routed.model, "why": why})
        if isinstance(routed, EmbeddingRequest):
            out["cache"] = {"enabled": active.cache is not None, "cacheable": False, "reason": "embeddings are not cached"}
        else:
            lookup = self._lookup(active, routed)
            cached = active.cache is not None and lookup.key is not None and lookup.read and active.cache.peek(lookup.key)
            out["cache"] = {"enabled": active.cache is not None, "cacheable": lookup.key is not None, "reason": lookup.reason,
                            "key": digest(lookup.key) if lookup.key else None, "cached": bool(cached),
                            **({"stats": active.cache.stats()} if active.cache is not None else {})}
        return out


class PolicyStream:
    """A stream through the policies: a cached answer, streamed, or the Router's stream,
    its answer stored when it completes."""

    def __init__(self, pipeline: PolicyPipeline, active: _Active, request: GenerationRequest):
        self.pipeline = pipeline
        self.active = active
        self.request = request
        self.model = request.model or "default"
        self.attempts: tuple = ()
        self.route: str | None = None
        self.route_by: str | None = None
        self.cache: str | None = None
        self._inner: Any = None
        self._answer: CachedAnswer | None = None
        self._lookup: _Lookup | None = None
        self._iter: AsyncIterator[Event] | None = None

    def open(self, choice: RouteChoice) -> None:
        request = self.pipeline._routed(self.request, choice)
        self.route, self.route_by = choice.name, choice.by
        lookup = self.pipeline._lookup(self.active, request)  # type: ignore[arg-type]
        answer = self.pipeline._hit(self.active, lookup, request, "stream")  # type: ignore[arg-type]
        self._lookup = lookup
        if answer is not None:
            self._answer, self.model, self.cache = answer, answer.model, "hit"
            return
        self._inner = self.pipeline.router.stream(request)  # type: ignore[arg-type]
        self.model = self._inner.model
        self.cache = "miss" if self.active.cache is not None else None

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iter is None:
            self._iter = self._events()
        return self._iter

    async def _events(self) -> AsyncIterator[Event]:
        if self._inner is None and self._answer is None:
            policy = self.active.policy
            self.open(await self.pipeline._by_router_model(policy, self.request))
        if self._answer is not None:
            answer = self._answer
            for piece in _PIECES.findall(answer.text):
                if piece:
                    yield Token(piece)
            for delta in deltas_of(answer.tool_calls):
                yield delta
            yield Done(answer.model, "", answer.finish_reason, answer.usage, {})
            return
        texts: list[str] = []
        calls = ToolCallBuilder()
        assert self._lookup is not None
        keep = self.pipeline._stores(self.active, self._lookup)  # the text, for the cache
        first = True
        async for event in self._inner:
            if isinstance(event, Token):
                if keep:
                    texts.append(event.text)
            elif isinstance(event, ToolCallDelta):
                if keep:
                    calls.add(event)
            elif isinstance(event, Done):
                self.model, self.attempts = event.model, event.attempts
                if keep:
                    self.pipeline._store(self.active, self._lookup, event, "".join(texts), calls.calls())
            if first or isinstance(event, Done):  # who answers: the inner stream knows from its first event on
                first = False
                self.model = getattr(self._inner, "model", self.model)
                self.attempts = tuple(getattr(self._inner, "attempts", self.attempts))
            yield event

    async def aclose(self) -> None:
        if self._iter is not None:
            it, self._iter = self._iter, None
            await it.aclose()
        if self._inner is not None:
            await self._inner.aclose()

    async def __aenter__(self) -> PolicyStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
