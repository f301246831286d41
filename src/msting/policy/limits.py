"""Rate limits: per service, per model of a service, and per client, each at most
`requests_per_minute` requests and `tokens_per_minute` tokens in any 60 s.

Windows. Each limited key (`service:<name>`, `model:<service>~<model>`,
`client:<client>`) keeps a sliding log of its charges: one per request it admitted,
at the admission's time, with the request's tokens. A request is admitted only when
every key it falls under has room for one more request and for its tokens; the check
and the charge happen in one step on the event loop (no await between them), so
concurrent requests are counted exactly. The wait a refusal names is honest: when the
oldest charges that stand in the way leave the window.

Tokens. A request is charged its prompt tokens up front, estimated from its characters
at the model's tokens-per-character ratio: 1/4 to start (the documented estimate for a
remote model), then what that service and model's real usage showed (a moving
average), so a local model's own tokenizer corrects the estimate after its first
answer without a round trip to the worker per request (that would cost more than the
whole policy's budget). When the request ends, its charge becomes its real usage
(prompt and completion tokens); a request that ended without usage (failed,
cancelled) keeps its estimate.

Persistence. Every charge, once settled, is handed to `settled()`'s reader (the usage
writer stores it with the usage rows, msting.policy.usage); `restore()` brings back a
previous daemon's charges still inside the window, so limits hold across a restart.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from msting.api.errors import RateLimited
from msting.api.events import Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, RequestMeta
from msting.config.policy import ANY_CLIENT, RateLimits

WINDOW_SEC = 60.0
START_TOKENS_PER_CHAR = 0.25  # chars/4 until a model's real usage says otherwise
LEARN_RATE = 0.2  # the weight of the latest request in the tokens-per-character average
MAX_WAIT_HEADER = "x-msting-max-wait"  # a request's own bound on its wait (seconds), within the config's
MAX_WINDOWS = 4096  # beyond, the empty ones are dropped
CHAT_MESSAGE_CHARS = 16  # a chat message's template overhead, counted as this many characters


class Charge:
    """One admitted request in one key's window."""

    __slots__ = ("at", "tokens", "window", "settled")

    def __init__(self, at: float, tokens: int, window: Window, settled: bool = False):
        self.at = at
        self.tokens = tokens
        self.window = window
        self.settled = settled  # its final tokens are known (and handed to the writer)


class Window:
    """One key's sliding 60 s log of charges, with their running token sum."""

    __slots__ = ("key", "where", "limits", "charges", "tokens")

    def __init__(self, key: str, where: str, limits: RateLimits):
        self.key = key
        self.where = where  # the config key the limits come from, for messages
        self.limits = limits
        self.charges: deque[Charge] = deque()
        self.tokens = 0

    def prune(self, now: float) -> None:
        charges = self.charges
        horizon = now - WINDOW_SEC
        while charges and charges[0].at <= horizon:
            self.tokens -= charges.popleft().tokens

    def wait(self, now: float, tokens: int) -> tuple[float | None, str | None]:
        """(0, None) when one more request of `tokens` fits now; else the seconds until
        it does (None: never, it is bigger than the limit) and the limit that refuses."""
        self.prune(now)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        wait = 0.0
        reason = None
        if rpm is not None and len(self.charges) >= rpm:
            # room once all but rpm - 1 of the charges have left the window
            wait = self.charges[len(self.charges) - rpm].at + WINDOW_SEC - now
            reason = f"{rpm} requests per minute"
        if tpm is not None and self.tokens + tokens > tpm:
            if tokens > tpm:
                return None, f"{tpm} tokens per minute (the request alone is estimated at {tokens})"
            left = self.tokens
            for charge in self.charges:
                left -= charge.tokens
                if left + tokens <= tpm:
                    break
            until = charge.at + WINDOW_SEC - now
            if until > wait:
                wait, reason = until, f"{tpm} tokens per minute"
        return max(wait, 0.0), reason

    def add(self, at: float, tokens: int, settled: bool = False) -> Charge:
        charge = Charge(at, tokens, self, settled)
        self.charges.append(charge)
        self.tokens += tokens
        return charge


class Ticket:
    """A request's charges, settled once with its real usage."""

    __slots__ = ("limiter", "ratio_key", "chars", "charges", "settled")

    def __init__(self, limiter: Limiter, ratio_key: tuple[str, str], chars: int, charges: list[Charge]):
        self.limiter = limiter
        self.ratio_key = ratio_key
        self.chars = chars
        self.charges = charges
        self.settled = False

    def settle(self, usage: Usage | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.limiter._settle(self, usage)


@dataclass(frozen=True)
class Refusal:
    """Why no room now: the seconds until there is (None: never) and what limits."""

    wait: float | None
    reason: str

    def error(self, service: str) -> RateLimited:
        if self.wait is None:
            return RateLimited("rate_limit_exceeded", f"{service}: the request can never fit: {self.reason}")
        retry = max(1, math.ceil(self.wait))
        return RateLimited("rate_limit_exceeded", f"{service}: rate limit reached: {self.reason}; room again in {retry} s",
                           retry_after=retry)


def prompt_chars(request: CompletionRequest | ChatRequest | EmbeddingRequest) -> int:
    if isinstance(request, CompletionRequest):
        return len(request.prompt)
    if isinstance(request, ChatRequest):
        return sum(len(m.content) + CHAT_MESSAGE_CHARS for m in request.messages)
    return sum(len(text) for text in request.inputs)


class Limiter:
    """Every configured limit, and the windows of the keys that saw requests.

    `services`: service name -> its limits and {model: limits}; `clients`: client name
    (or "*") -> limits; `max_wait_sec`: how long a request may wait for room."""

    def __init__(self, services: dict[str, tuple[RateLimits, dict[str, RateLimits]]], clients: dict[str, RateLimits],
                 max_wait_sec: float, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.services = {name: (limits if limits.any else None, {m: lim for m, lim in models.items() if lim.any})
                         for name, (limits, models) in services.items()}
        self.clients = {name: limits for name, limits in clients.items() if limits.any}
        self.max_wait_sec = max_wait_sec
        self.clock = clock
        self.wall = wall
        self._windows: dict[str, Window] = {}
        self._ratios: dict[tuple[str, str], float] = {}
        self._settled: list[tuple[str, float, int]] = []  # (key, wall time, tokens), for the writer
        self._keys: dict[tuple[str, str | None, str | None], tuple[Window, ...]] = {}

    @classmethod
    def from_config(cls, llm) -> Limiter:
        """From config.yaml's `llm` section (msting.config.schema.LLMConfig)."""
        services = {"local": (llm.local.rate_limits, {m.name: m.rate_limits for m in llm.local.per_model})}
        for svc in llm.services:
            services[svc.name] = (svc.rate_limits, {m.name: m.rate_limits for m in svc.per_model})
        return cls(services, {c.name: c.rate_limits for c in llm.clients}, llm.rate_limit_max_wait_sec)

    @property
    def active(self) -> bool:
        return any(limits is not None or models for limits, models in self.services.values()) or bool(self.clients)

    def limits_models(self, service: str) -> bool:
        """Does `service` have limits per model (the router then names its default model)?"""
        entry = self.services.get(service)
        return entry is not None and bool(entry[1])

    # ---- keys ------------------------------------------------------------------------

    def _window(self, key: str, where: str, limits: RateLimits) -> Window:
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= MAX_WINDOWS:  # clients may make up labels: drop the windows that emptied
                now = self.clock()
                for name, old in list(self._windows.items()):
                    old.prune(now)
                    if not old.charges:
                        del self._windows[name]
                self._keys.clear()
            window = self._windows[key] = Window(key, where, limits)
        return window

    def _client_policies(self, client: str) -> list[tuple[str, str, RateLimits]]:
        """(window, policy, limits) of each client policy `client` falls under: its own
        name, each `key:VAR` (or any name) it extends with `/<label>`; else "*" (a window
        per client)."""
        found = [(name, name, limits) for name, limits in self.clients.items()
                 if name != ANY_CLIENT and (client == name or client.startswith(name + "/"))]
        if not found and ANY_CLIENT in self.clients:
            found = [(client, ANY_CLIENT, self.clients[ANY_CLIENT])]
        return found

    def windows(self, service: str, model: str | None, client: str | None) -> tuple[Window, ...]:
        cache_key = (service, model, client)
        found = self._keys.get(cache_key)
        if found is not None:
            return found
        out = []
        entry = self.services.get(service)
        if entry is not None:
            limits, models = entry
            if limits is not None:
                where = "llm.local.rate_limits" if service == "local" else f"llm.services.{service}.rate_limits"
                out.append(self._window(f"service:{service}", where, limits))
            if model is not None and model in models:
                where = f"llm.{'local' if service == 'local' else 'services.' + service}.per_model.{model}.rate_limits"
                out.append(self._window(f"model:{service}~{model}", where, models[model]))
        if client is not None:
            for name, policy, limits in self._client_policies(client):
                out.append(self._window(f"client:{name}", f"llm.clients.{policy}.rate_limits", limits))
        if len(self._keys) > MAX_WINDOWS:  # bounded: clients may make up labels
            self._keys.clear()
        found = self._keys[cache_key] = tuple(out)
        return found

    # ---- admission -------------------------------------------------------------------

    def estimate(self, service: str, model: str | None, chars: int) -> int:
        ratio = self._ratios.get((service, model or ""), START_TOKENS_PER_CHAR)
        return max(1, math.ceil(chars * ratio))

    def admit(self, service: str, model: str | None, request: CompletionRequest | ChatRequest | EmbeddingRequest
              ) -> Ticket | Refusal | None:
        """A ticket for the request's charges; a Refusal when a window has no room;
        None when no limit applies (nothing to count)."""
        windows = self.windows(service, model, request.meta.client)
        if not windows:
            return None
        chars = prompt_chars(request)
        tokens = self.estimate(service, model, chars)
        now = self.clock()
        worst: Refusal | None = None
        for window in windows:
            wait, reason = window.wait(now, tokens)
            if reason is None:
                continue
            if wait is None or worst is None or worst.wait is not None and wait > worst.wait:
                worst = Refusal(wait, f"{reason} ({window.where})")
                if wait is None:
                    break
        if worst is not None:
            return worst
        return Ticket(self, (service, model or ""), chars, [w.add(now, tokens) for w in windows])

    def deadline(self, meta: RequestMeta) -> float:
        """When a request that arrives now stops waiting for room (clock time)."""
        wait = self.max_wait_sec
        asked = meta.headers.get(MAX_WAIT_HEADER)
        if asked is not None:
            try:
                wait = min(wait, max(0.0, float(asked)))
            except ValueError:
                pass
        return self.clock() + wait

    # ---- settling and persistence ------------------------------------------------------

    def _settle(self, ticket: Ticket, usage: Usage | None) -> None:
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            real = usage.prompt_tokens + usage.completion_tokens
            if usage.prompt_tokens and ticket.chars:
                old = self._ratios.get(ticket.ratio_key, START_TOKENS_PER_CHAR)
                self._ratios[ticket.ratio_key] = old + LEARN_RATE * (usage.prompt_tokens / ticket.chars - old)
            for charge in ticket.charges:
                charge.window.tokens += real - charge.tokens
                charge.tokens = real
        offset = self.wall() - self.clock()
        for charge in ticket.charges:
            charge.settled = True
            self._settled.append((charge.window.key, charge.at + offset, charge.tokens))

    def settled(self) -> list[tuple[str, float, int]]:
        """The charges settled since the last call: (key, wall-clock time, tokens)."""
        out, self._settled = self._settled, []
        return out

    def unsettled(self) -> list[tuple[str, float, int]]:
        """Every charge in a window not yet handed out by `settled()`, as it stands (at
        the daemon's stop: requests still running keep their estimate)."""
        offset = self.wall() - self.clock()
        out = self.settled()
        for window in self._windows.values():
            out.extend((window.key, c.at + offset, c.tokens) for c in window.charges if not c.settled)
        return out

    def restore(self, rows: Iterable[tuple[str, float, int]]) -> int:
        """A previous daemon's charges (key, wall-clock time, tokens), oldest first; those
        of keys no longer limited, or out of the window, are dropped. Returns how many
        were kept."""
        now, wall = self.clock(), self.wall()
        by_key: dict[str, Window] = {}
        for service, (limits, models) in self.services.items():
            for key_tuple in [(service, None)] + [(service, m) for m in models]:
                for window in self.windows(key_tuple[0], key_tuple[1], None):
                    by_key[window.key] = window
        kept = 0
        for key, at_wall, tokens in rows:
            window = by_key.get(key)
            if window is None and key.startswith("client:"):
                name = key[len("client:"):]
                policy = self.clients.get(name) or self.clients.get(ANY_CLIENT)
                if policy is not None:
                    where = f"llm.clients.{name if name in self.clients else ANY_CLIENT}.rate_limits"
                    window = self._window(key, where, policy)
            if window is None:
                continue
            at = now - (wall - at_wall)
            if at <= now - WINDOW_SEC or at > now:
                continue
            window.add(at, tokens, settled=True)
            kept += 1
        return kept
