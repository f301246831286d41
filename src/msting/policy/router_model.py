"""The router model: a small local model of the profile that names the route of a
request, within a strict time budget.

It reads a short prompt (the routes, each with its description, then the request's
last user message, cut to ``prompt_chars``) and answers with exactly one route name:
the worker constrains its sampling to the given `choices` (a grammar built from them),
greedy, so an answer is always a route. Past ``budget_ms`` the call is cancelled and
the rules decide; so they do when the model fails. Every decision is logged with its
time and tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from msting.api.errors import MstingError
from msting.api.events import Done
from msting.api.requests import CompletionRequest, GenerationRequest, SamplingParams
from msting.config.profiles.policy import RouteConfig, RouterModelConfig
from msting.policy.rules import Facts

log = logging.getLogger("msting.policy.router_model")

PROMPT_HEAD = "Choose the route for the request.\nRoutes:\n"


class Generates(Protocol):
    async def generate(self, request: GenerationRequest) -> Done: ...


@dataclass(frozen=True)
class Decision:
    """What the router model said: `route` (None: no decision, `reason` says why), how
    long it took and what it cost in tokens."""

    route: str | None
    ms: float
    reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return {"route": self.route, "ms": round(self.ms, 2), "reason": self.reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


def router_prompt(routes: tuple[RouteConfig, ...], facts: Facts, prompt_chars: int) -> str:
    lines = [f"- {r.name}: {r.description}" if r.description else f"- {r.name}" for r in routes]
    text = " ".join(facts.last_user[-prompt_chars:].split())
    return PROMPT_HEAD + "\n".join(lines) + f"\nRequest: {text}\nRoute: "


def router_request(routes: tuple[RouteConfig, ...], facts: Facts, config: RouterModelConfig, model: str) -> CompletionRequest:
    names = tuple(r.name for r in routes)
    sampling = SamplingParams(max_tokens=max(len(n) for n in names) + 2, temperature=0.0, choices=names)
    return CompletionRequest(router_prompt(routes, facts, config.prompt_chars), model, sampling)


async def decide(provider: Generates, model: str, routes: tuple[RouteConfig, ...], facts: Facts,
                 config: RouterModelConfig) -> Decision:
    """Ask the router model (on `provider`, the daemon's own workers) for a route."""
    started = time.perf_counter()
    request = router_request(routes, facts, config, model)

    def ms() -> float:
        return (time.perf_counter() - started) * 1000

    try:
        done = await asyncio.wait_for(provider.generate(request), config.budget_ms / 1000)
    except asyncio.TimeoutError:
        decision = Decision(None, ms(), f"no answer within its budget of {config.budget_ms:g} ms")
    except MstingError as exc:
        decision = Decision(None, ms(), f"the router model failed: {exc.message}")
    else:
        answer = done.text.strip()
        names = {r.name for r in routes}
        usage = done.usage
        if answer in names:
            decision = Decision(answer, ms(), f"the router model {model} chose {answer}", usage.prompt_tokens, usage.completion_tokens)
        else:
            decision = Decision(None, ms(), f"the router model answered {answer[:40]!r}, not a route",
                                usage.prompt_tokens, usage.completion_tokens)
    log.info("router model %s: %s (%s) in %.1f ms, %d prompt + %d completion tokens", model, decision.route or "no decision",
             decision.reason, decision.ms, decision.prompt_tokens, decision.completion_tokens)
    return decision
