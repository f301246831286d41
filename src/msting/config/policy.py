"""config.yaml's traffic policy keys, declared with :mod:`msting.config.fields`:

- ``rate_limits: {requests_per_minute, tokens_per_minute}`` (:class:`RateLimits`) on a
  service (``llm.local`` for the daemon's own workers, ``llm.services.<name>`` for a
  remote one), on a model of a service (``per_model.<model>.rate_limits``) and on a
  client (``llm.clients.<client>.rate_limits``; the client ``"*"`` is every client not
  named, each counted on its own);
- ``per_model.<model>.price`` (:class:`Price`): US dollars per million input, output
  and cached-input tokens (0 unless given; cached input costs the input price unless
  given);
- ``llm.usage`` (:class:`UsageConfig`): how long the usage rows are kept;
- ``llm.rate_limit_max_wait_sec``: how long a request over a limit may wait for room.

What the daemon does with them is :mod:`msting.policy`'s. Dependency-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msting.config.fields import Num, named, opt, section, show

_COUNT = Num(integer=True, lo=1, nullable=True)
_PRICE = Num(integer=False, lo=0)
ANY_CLIENT = "*"


@dataclass(frozen=True)
class RateLimits:
    """At most this many requests, and tokens (prompt and completion), in any 60 s;
    null: no limit."""

    requests_per_minute: int | None = opt(None, _COUNT)
    tokens_per_minute: int | None = opt(None, _COUNT)

    @property
    def any(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float = opt(0.0, _PRICE)
    output: float = opt(0.0, _PRICE)
    cached_input: float | None = opt(None, Num(integer=False, lo=0, nullable=True))  # null: the input price


@dataclass(frozen=True)
class ModelPolicy:
    """One model of a service (``per_model.<model>``): its own limits and its price."""

    rate_limits: RateLimits = section(RateLimits)
    price: Price = section(Price)
    name: str = ""


def model_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return f"a model name must be a non-empty string, got {show(name)}; quote it"
    if "~" in name:
        return f"name the model without its service (per_model sits under the service already), got {name!r}"
    return None


def per_model_field() -> Any:
    return named(ModelPolicy, "a mapping of model names to {rate_limits, price}", model_name_problem)


@dataclass(frozen=True)
class LocalPolicy:
    """The daemon's own workers (``llm.local``): the service "local"'s limits and models."""

    rate_limits: RateLimits = section(RateLimits)
    per_model: tuple[ModelPolicy, ...] = per_model_field()


@dataclass(frozen=True)
class ClientPolicy:
    """One client (``llm.clients.<client>``): ``key:<VAR>`` for the API key held in VAR
    (its requests with any ``x-msting-client`` label too), ``key:<VAR>/<label>`` or a
    bare label for one labelled client, ``*`` for each client not listed."""

    rate_limits: RateLimits = section(RateLimits)
    name: str = ""


def client_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        return f"a client is key:<VAR>, key:<VAR>/<label>, a label or '*', got {show(name)}"
    return None


def clients_field() -> Any:
    return named(ClientPolicy, "a mapping of clients to {rate_limits}", client_name_problem)


@dataclass(frozen=True)
class UsageConfig:
    """The usage rows (``llm.usage``)."""

    retention_days: float = opt(90.0, Num(integer=False, lo=0, lo_open=True))
