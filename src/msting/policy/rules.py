"""A profile's routes as rules: the first route whose conditions all hold picks the
model of a request that names none.

A request is seen as its `Facts`: the capability it asks for (chat, completion,
embeddings, or code), its prompt length in tokens (estimated: one token per
:data:`CHARS_PER_TOKEN` characters, rounded up, since the daemon holds no tokenizer),
its last user message (the prompt of a completion), the `user` field, the request
headers a rule may match (x-msting-* and user-agent) and whether tools are requested.
A regular expression sees at most the last MATCH_CHARS characters of its text, and was
compiled (and refused if catastrophic) when the profile was read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Request
from msting.config.profiles.policy import MATCH_CHARS, RouteConfig

CHARS_PER_TOKEN = 4
CODE_HEADER = "x-msting-capability"
CODE_FENCE = "```"


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Facts:
    """What the rules see of a request."""

    capability: str  # chat | completion | embeddings
    code: bool  # asks for code (the x-msting-capability header, or a ``` fence)
    prompt_tokens: int
    last_user: str
    user: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tools: bool = False

    def as_dict(self) -> dict:
        return {"capability": "code" if self.code else self.capability, "prompt_tokens": self.prompt_tokens,
                "prompt_tokens_estimated": True, "last_user_chars": len(self.last_user), "user": self.user,
                "headers": dict(self.headers), "tools": self.tools}


def facts_of(request: Request) -> Facts:
    meta = getattr(request, "meta", None)
    headers = dict(getattr(meta, "headers", None) or {})
    user = getattr(meta, "user", None)
    tools = bool(getattr(meta, "tools_requested", False))
    if isinstance(request, EmbeddingRequest):
        text = "\n".join(request.inputs)
        return Facts("embeddings", False, estimate_tokens(text), request.inputs[-1] if request.inputs else "", user, headers, tools)
    if isinstance(request, ChatRequest):
        capability = "chat"
        prompt = "".join(m.content for m in request.messages)
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    else:
        assert isinstance(request, CompletionRequest)
        capability, prompt, last = "completion", request.prompt, request.prompt
    code = headers.get(CODE_HEADER, "").strip().lower() == "code" or CODE_FENCE in last[-MATCH_CHARS:]
    return Facts(capability, code, estimate_tokens(prompt), last, user, headers, tools)


def _search(pattern, text: str | None) -> bool:
    return text is not None and pattern.search(text[-MATCH_CHARS:]) is not None


def failed_conditions(route: RouteConfig, facts: Facts) -> list[str]:
    """The conditions of `route` that `facts` do not meet, each said in a few words
    (empty: the route matches)."""
    failed = []
    if route.capability is not None:
        if route.capability == "code" and not facts.code:
            failed.append("capability: the request does not ask for code")
        elif route.capability != "code" and route.capability != facts.capability:
            failed.append(f"capability: the request is {facts.capability}, not {route.capability}")
    if route.min_prompt_tokens is not None and facts.prompt_tokens < route.min_prompt_tokens:
        failed.append(f"min_prompt_tokens: the prompt is about {facts.prompt_tokens} tokens, fewer than {route.min_prompt_tokens}")
    if route.max_prompt_tokens is not None and facts.prompt_tokens > route.max_prompt_tokens:
        failed.append(f"max_prompt_tokens: the prompt is about {facts.prompt_tokens} tokens, more than {route.max_prompt_tokens}")
    if route.regex is not None and not _search(route.regex, facts.last_user):
        failed.append(f"regex: /{route.regex.pattern}/ is not in the last user message")
    if route.user is not None and not _search(route.user, facts.user):
        failed.append(f"user: /{route.user.pattern}/ is not in the user field ({facts.user!r})")
    for name, pattern in route.headers:
        if not _search(pattern, facts.headers.get(name)):
            failed.append(f"headers: /{pattern.pattern}/ is not in {name} ({facts.headers.get(name)!r})")
    if route.tools is not None and route.tools != facts.tools:
        failed.append("tools: the request " + ("requests none" if route.tools else "requests tools"))
    return failed


def first_match(routes: tuple[RouteConfig, ...], facts: Facts) -> RouteConfig | None:
    for route in routes:
        if not failed_conditions(route, facts):
            return route
    return None


def explain_rules(routes: tuple[RouteConfig, ...], facts: Facts) -> list[dict]:
    """Every route in order, with whether it matches and the conditions that failed."""
    out = []
    for route in routes:
        failed = failed_conditions(route, facts)
        out.append({"route": route.name, "to": route.to, "conditions": route.conditions(), "matches": not failed,
                    "failed": failed})
    return out
