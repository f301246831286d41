"""A profile's traffic policy: its routes (rules matched in order), its optional router
model, and its response cache (``routes``, ``router_model``, ``cache``).

Declared with :mod:`msting.config.fields` like the rest of a profile, so a problem is
one line at a dotted key (``routes.code.regex``). Regular expressions are compiled
here, when the profile is read, never on the request path; a pattern whose nested
unbounded repetition can backtrack exponentially (``(a+)+``, ``(.*)*``) is refused,
and at request time a pattern sees at most :data:`MATCH_CHARS` characters of its
text (:mod:`msting.policy.rules`). Dependency-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from msting.config.errors import ConfigProblem
from msting.config.fields import BadValue, Bool, Choice, Num, Str, Text, named, opt, show

#: What a route may match as the requested capability. `code` is a chat or completion
#: that asks for code: an ``x-msting-capability: code`` header or a ``` fence in the
#: last user message.
CAPABILITIES = ("chat", "completion", "embeddings", "code")
#: The characters of a text (the last user message, the user field, a header) that a
#: route's regular expression sees: its last MATCH_CHARS.
MATCH_CHARS = 4096
ROUTE_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}"
ROUTE_NAME_RULE = "letters, digits, '_' and '-' (at most 48), starting with a letter or digit"
MAX_ROUTES = 32
HEADER_NAME = re.compile(r"x-msting-[a-z0-9-]+|user-agent")

try:  # Python 3.11+
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_REPEATS = {_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT, getattr(_sre_parse, "POSSESSIVE_REPEAT", None)} - {None}
_UNBOUNDED = _sre_parse.MAXREPEAT


def _nested_unbounded(parsed: Any, inside: bool = False) -> bool:
    """Does a repetition with no upper bound sit inside another repetition of more than
    one (the shape that backtracks exponentially)?"""
    for op, arg in parsed:
        if op in _REPEATS:
            lo, hi, body = arg
            if inside and hi == _UNBOUNDED:
                return True
            if _nested_unbounded(body, inside or hi > 1):
                return True
        elif op == _sre_parse.SUBPATTERN:
            if _nested_unbounded(arg[-1], inside):
                return True
        elif op == _sre_parse.BRANCH:
            if any(_nested_unbounded(branch, inside) for branch in arg[1]):
                return True
        elif op in (_sre_parse.ASSERT, _sre_parse.ASSERT_NOT):
            if _nested_unbounded(arg[1], inside):
                return True
    return False


def compile_pattern(pattern: str) -> re.Pattern:
    """`pattern` compiled, or BadValue saying why not (also for a catastrophic shape)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise BadValue(f"it is not valid: {exc}") from None
    if _nested_unbounded(_sre_parse.parse(pattern)):
        raise BadValue("it nests an unbounded repetition inside another repetition (such as (a+)+), "
                       "which can take exponential time; write it without the nesting") from None
    return compiled


@dataclass(frozen=True)
class Regex:
    """A regular expression, stored compiled."""

    nullable: bool = False

    def describe(self) -> str:
        return "a regular expression"

    def check(self, v: Any) -> Any:
        if not isinstance(v, str) or not v:
            raise BadValue
        try:
            return compile_pattern(v)
        except BadValue as exc:
            raise BadValue(f"but {exc.args[0]}") from None


@dataclass(frozen=True)
class HeaderPatterns:
    """A mapping of request header names (x-msting-* or user-agent) to regular expressions."""

    nullable: bool = False

    def describe(self) -> str:
        return "a mapping of header names (x-msting-... or user-agent) to regular expressions"

    def check(self, v: Any) -> Any:
        if not isinstance(v, Mapping) or not v:
            raise BadValue
        out = []
        for name, pattern in v.items():
            if not isinstance(name, str) or not HEADER_NAME.fullmatch(name.lower()):
                raise BadValue(f"but {show(name)} is not a header a route may match (x-msting-... or user-agent)")
            if not isinstance(pattern, str) or not pattern:
                raise BadValue(f"but the pattern of {name!r} is {show(pattern)}")
            try:
                out.append((name.lower(), compile_pattern(pattern)))
            except BadValue as exc:
                raise BadValue(f"but the pattern of {name!r}: {exc.args[0]}") from None
        return tuple(out)


@dataclass(frozen=True)
class RouteConfig:
    """One route (``routes.<name>``): where it sends a request (``to``), and what a
    request must have for the route's rule to match; every condition given must hold,
    and a route with none matches every request. ``description`` is what the router
    model reads of it."""

    to: str = opt("", Str(), required="the model it routes to: a model of this profile, or service~model")
    description: str = opt("", Text(nullable=True))
    capability: str | None = opt(None, Choice(CAPABILITIES, nullable=True))
    min_prompt_tokens: int | None = opt(None, Num(integer=True, lo=0, nullable=True))
    max_prompt_tokens: int | None = opt(None, Num(integer=True, lo=0, nullable=True))
    regex: re.Pattern | None = opt(None, Regex(nullable=True))  # searched in the last user message (or the prompt)
    user: re.Pattern | None = opt(None, Regex(nullable=True))  # searched in the request's `user` field
    headers: tuple = opt((), HeaderPatterns(nullable=True))  # every one searched in its header
    tools: bool | None = opt(None, Bool(nullable=True))  # true: tools requested; false: none
    name: str = ""

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        lo, hi = self.min_prompt_tokens, self.max_prompt_tokens
        if lo is not None and hi is not None and lo > hi:
            return [ConfigProblem(f"{prefix}.min_prompt_tokens", f"is {lo}, more than max_prompt_tokens ({hi})")]
        if self.capability == "embeddings" and (self.regex is not None or self.tools):
            return [ConfigProblem(prefix, "an embeddings route cannot match a message (regex) or tools")]
        return []

    def conditions(self) -> dict[str, Any]:
        """The conditions given, as written (for --explain and the docs)."""
        out: dict[str, Any] = {}
        for key in ("capability", "min_prompt_tokens", "max_prompt_tokens", "tools"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("regex", "user"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).pattern
        if self.headers:
            out["headers"] = {name: p.pattern for name, p in self.headers}
        return out


def _route_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not re.fullmatch(ROUTE_NAME, name):
        return f"a route name uses {ROUTE_NAME_RULE}; got {show(name)}"
    return None


@dataclass(frozen=True)
class RouterModelConfig:
    """``router_model``: a small llm model of the profile that picks one of the routes
    for each request, within ``budget_ms``; past it (or when its answer is not a
    route), the rules decide."""

    model: str | None = opt(None, Str(nullable=True))  # null: no router model
    budget_ms: float = opt(150.0, Num(integer=False, lo=1, hi=10000))
    prompt_chars: int = opt(1000, Num(integer=True, lo=16, hi=MATCH_CHARS))  # of the last user message, shown to it


@dataclass(frozen=True)
class CacheConfig:
    """``cache``: the response cache, in the daemon's memory (empty at each start).
    Only reproducible requests (temperature 0, or a fixed seed) are cached."""

    enabled: bool = opt(False, Bool())
    ttl_sec: float = opt(600.0, Num(integer=False, lo=0, lo_open=True))
    max_entries: int = opt(1000, Num(integer=True, lo=1, hi=1_000_000))
    max_mb: float = opt(64.0, Num(integer=False, lo=0, lo_open=True, hi=65536))

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * (1 << 20))


def routes_field() -> Any:
    """The profile's ``routes`` key: a mapping of route names to routes, in order."""
    return named(RouteConfig, "a mapping of route names to routes, matched in the order written", _route_name_problem)


@dataclass(frozen=True)
class Policy:
    """A validated profile's policy: its routes in order, its router model, its cache."""

    routes: tuple[RouteConfig, ...] = ()
    router_model: RouterModelConfig = RouterModelConfig()
    cache: CacheConfig = CacheConfig()

    def route(self, name: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.name == name), None)


def policy_problems(policy: Policy, models: Mapping[str, Any], llms: list[str]) -> list[ConfigProblem]:
    """What a profile's policy names must exist: each route's ``to`` (a model of the
    profile, or service~model, checked when a request is routed), the router model (an
    llm model of the profile), and no more than MAX_ROUTES routes."""
    problems = []
    if len(policy.routes) > MAX_ROUTES:
        problems.append(ConfigProblem("routes", f"has {len(policy.routes)} routes; at most {MAX_ROUTES}"))
    for route in policy.routes:
        if "~" not in route.to and route.to != "default" and route.to not in models:
            problems.append(ConfigProblem(f"routes.{route.name}.to", f"{route.to!r} is not a model of this profile "
                                          f"(the models are: {', '.join(models)}); name one, or service~model"))
    model = policy.router_model.model
    if model is not None:
        if model not in llms:
            problems.append(ConfigProblem("router_model.model", f"{model!r} is not an llm model of this profile "
                                          f"(the llm models are: {', '.join(llms) or 'none'})"))
        if len(policy.routes) < 2:
            problems.append(ConfigProblem("router_model.model", "a router model chooses between routes: give at least two routes"))
    return problems
