"""config.yaml's remote LLM services (``llm.services``): :class:`RemoteServiceConfig`
(one service: its API format, URLs, key and models) and :class:`UpstreamConfig` (how
msting talks to it: timeouts, discovery, retries, circuit breaker), declared with
:mod:`msting.config.fields`.

``llm.services`` maps names to services; :func:`services_field` declares it for
:class:`~msting.config.schema.LLMConfig`, which checks ``default_service`` and
``fallback_chain`` against the names. "local" (the daemon's own workers) and "stub"
(the offline test provider) are built in: :data:`BUILTIN_SERVICES`, never configured.

A service's API key is a secret: it is not in the repr, :func:`~msting.config.fields.plain`
(``Config.as_dict``) masks it, and no problem message shows it. Dependency-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from msting.config.errors import ConfigProblem
from msting.config.policy import ModelPolicy, RateLimits, per_model_field
from msting.config.fields import (
    ENV_VAR_NAME,
    BadValue,
    Bool,
    Choice,
    Num,
    Str,
    StrList,
    UnknownKey,
    build,
    fmt_num,
    join,
    named,
    opt,
    section,
    show,
)

BUILTIN_SERVICES = ("local", "stub")  # always there, in this order; not configurable
API_FORMATS = ("openai", "ollama", "anthropic")
V1_FORMATS = ("openai", "anthropic")  # their wire code appends /v1/...: a trailing /v1 in a URL is dropped
SERVICE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
SERVICE_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"

_POSITIVE = Num(integer=False, lo=0, lo_open=True)


# -------------------------------------------------------------------------- URLs


def _url_problem(u: Any) -> str | None:
    """Why ``u`` is not a service URL (the reason of a BadValue), or None."""
    if not isinstance(u, str) or not u.strip():
        return f"{show(u)} is not a URL"
    u = u.strip()
    try:
        parts = urlsplit(u)
    except ValueError:  # e.g. an unclosed [IPv6
        return f"{show(u)} is not a URL"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{show(u)} does not start with http:// or https://"
    if "@" in parts.netloc:  # the credentials are not shown
        hidden = f"{parts.scheme}://***@{parts.netloc.rpartition('@')[2]}"
        return f"{hidden!r} has credentials in it (give the key with api_key_env_var)"
    if any(c.isspace() for c in u):
        return f"{show(u)} has a space in it"
    if not parts.hostname:
        return f"{show(u)} has no host"
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is no number or out of range)
    except ValueError:
        return f"{show(u)} has a bad port"
    if parts.query or "?" in u:
        return f"{show(u)} has a query (?...; give the server's base URL)"
    if parts.fragment or "#" in u:
        return f"{show(u)} has a fragment (#...; give the server's base URL)"
    return None


@dataclass(frozen=True)
class Urls:
    """A non-empty list of distinct http:// or https:// base URLs, stored as a tuple,
    each without trailing '/'."""

    nullable: bool = False

    def describe(self) -> str:
        return "a non-empty list of http:// or https:// URLs"

    def check(self, v: Any) -> Any:
        if isinstance(v, str):
            raise BadValue(f"got {show(v)}; write a list, even of one URL: [{v.strip()}]")
        if not isinstance(v, list):
            raise BadValue
        if not v:
            raise BadValue("got an empty list")
        out: list[str] = []
        reasons: list[str] = []
        for u in v:
            problem = _url_problem(u)
            if problem:
                reasons.append(problem)
                continue
            url = u.strip().rstrip("/")
            if url in out:
                reasons.append(f"{url!r} is listed twice")
            else:
                out.append(url)
        if reasons:
            raise BadValue("but " + "; ".join(reasons))
        return tuple(out)


def wire_base(url: str, api_format: str) -> str:
    """The base URL msting appends the API paths to: ``url`` without trailing '/',
    and for openai and anthropic without a trailing '/v1' (their wire code adds
    ``/v1/chat/completions``, ``/v1/messages`` and so on itself)."""
    url = url.rstrip("/")
    if api_format in V1_FORMATS and url.lower().endswith("/v1"):
        url = url[: -len("/v1")].rstrip("/")
    return url


# ------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class UpstreamConfig:
    """How msting talks to a remote service (``llm.services.<name>.upstream``)."""

    short_timeout_sec: float = opt(5.0, _POSITIVE)  # health checks, discovery
    long_timeout_sec: float = opt(180.0, _POSITIVE)  # a whole completion or embedding request
    first_token_timeout_sec: float = opt(30.0, _POSITIVE)  # no first token by then: the attempt fails over
    verify_cert: bool = opt(True, Bool())
    enable_discovery: bool = opt(True, Bool())
    health_interval_sec: float = opt(30.0, _POSITIVE)  # per URL; also refreshes discovery
    max_attempts: int = opt(3, Num(integer=True, lo=1, hi=20))  # on this service, before the fallback chain moves on
    backoff_initial_sec: float = opt(0.2, _POSITIVE)
    backoff_max_sec: float = opt(5.0, _POSITIVE)
    breaker_failures: int = opt(3, Num(integer=True, lo=1))  # failures of one URL within the window open its circuit
    breaker_window_sec: float = opt(30.0, _POSITIVE)
    breaker_cooldown_sec: float = opt(10.0, _POSITIVE)  # then one half-open probe

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        problems = []
        if self.backoff_max_sec < self.backoff_initial_sec:
            problems.append(ConfigProblem(
                join(prefix, "backoff_max_sec"),
                f"must be >= backoff_initial_sec ({fmt_num(self.backoff_initial_sec)}), got {fmt_num(self.backoff_max_sec)}",
            ))
        if self.first_token_timeout_sec > self.long_timeout_sec:
            problems.append(ConfigProblem(
                join(prefix, "first_token_timeout_sec"),
                f"must be <= long_timeout_sec ({fmt_num(self.long_timeout_sec)}), got {fmt_num(self.first_token_timeout_sec)}",
            ))
        return problems


@dataclass(frozen=True)
class RemoteServiceConfig:
    """One remote service (``llm.services.<name>``); ``name`` is its key there.

    ``urls`` are base URLs as :func:`wire_base` gives them (several: requests are
    balanced across them). The key is ``api_key`` (literal, discouraged) or the
    value of the variable ``api_key_env_var``, at most one of them: read it with
    :meth:`api_key_from`. ``models`` is a static list that discovery adds to;
    ``default_model`` is the model used when a fallback chain hands this service a
    request, or for ``<name>~default``."""

    api_format: str = opt("openai", Choice(API_FORMATS), required="one of " + ", ".join(API_FORMATS))
    urls: tuple[str, ...] = opt((), Urls(), required="a list of the service's http:// or https:// URLs")
    api_key_env_var: str | None = opt(None, replace(ENV_VAR_NAME, nullable=True))
    api_key: str | None = opt(None, Str(nullable=True), secret=True)
    models: tuple[str, ...] = opt((), StrList())
    default_model: str | None = opt(None, Str(nullable=True))
    upstream: UpstreamConfig = section(UpstreamConfig)
    rate_limits: RateLimits = section(RateLimits)  # msting.config.policy: the service's, and its models'
    per_model: tuple[ModelPolicy, ...] = per_model_field()
    name: str = ""

    def api_key_from(self, env: Mapping[str, str]) -> str | None:
        """The key to send: ``api_key``, or the value of ``api_key_env_var`` in ``env``
        (stripped; blank or unset is none), or None."""
        if self.api_key is not None:
            return self.api_key.strip() or None
        if self.api_key_env_var:
            return env.get(self.api_key_env_var, "").strip() or None
        return None

    @property
    def key_source(self) -> str:
        """Where the key comes from, for display: "env <VAR>", "config" or "none"."""
        if self.api_key is not None:
            return "config"
        if self.api_key_env_var:
            return f"env {self.api_key_env_var}"
        return "none"

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        problems = []
        if self.api_key is not None and self.api_key_env_var is not None:
            problems.append(ConfigProblem(
                join(prefix, "api_key"),
                f"give either api_key or api_key_env_var, not both (api_key_env_var is {self.api_key_env_var!r})",
            ))
        seen: dict[str, str] = {}
        for url in self.urls:
            base = wire_base(url, self.api_format)
            if base in seen:
                problems.append(ConfigProblem(
                    join(prefix, "urls"),
                    f"{seen[base]!r} and {url!r} are the same server: a trailing /v1 is dropped for "
                    f"{self.api_format} (msting adds the /v1/... paths itself)",
                ))
            seen.setdefault(base, url)
        return problems


# ------------------------------------------------------------------------ names


def service_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a configured service, or None."""
    if not isinstance(name, str):
        return f"a service name must be a string ({SERVICE_NAME_RULE}), got {show(name)}; quote it"
    if "~" in name:
        return f"a service name must not contain '~' (it separates service and model, as in {name.replace('~', '')}~llama3.2:3b)"
    if not re.fullmatch(SERVICE_NAME_PATTERN, name):
        return f"a service name uses {SERVICE_NAME_RULE}; got {name!r}"
    if name.lower() in BUILTIN_SERVICES:
        return f"{name!r} is built in ({' and '.join(BUILTIN_SERVICES)} are); give this service another name"
    return None


def build_service(
    name: str, data: Any, prefix: str, problems: list[ConfigProblem], unknown: UnknownKey
) -> RemoteServiceConfig:
    """The service ``name`` from ``data``, its URLs as :func:`wire_base` gives them."""
    svc: RemoteServiceConfig = build(RemoteServiceConfig, data, prefix, problems, unknown)
    return replace(svc, name=name, urls=tuple(wire_base(u, svc.api_format) for u in svc.urls))


SERVICES_FIELD_DESCRIPTION = "a mapping of service names to services"


def services_field() -> Any:
    """The ``services`` field of a schema: :func:`~msting.config.fields.named` remote services."""
    return named(RemoteServiceConfig, SERVICES_FIELD_DESCRIPTION, service_name_problem, build_service)
