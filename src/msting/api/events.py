"""What a provider answers: the events of a stream, and the results they end in.

A stream yields `Token`s (and `ToolCallDelta`s, when the model calls tools) and ends
with exactly one `Done` or one `Failed`; a non-streamed generate returns the `Done`
(or raises the `Failed`'s error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from msting.api.errors import MstingError
from msting.api.tools import ToolCall, ToolCallDelta


@dataclass(frozen=True)
class Usage:
    """Tokens a request used. `cached_tokens` is the part of `prompt_tokens` served from
    a prompt cache (the worker's slot KV, an upstream's cached input), priced apart."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Attempt:
    """One try at serving a request: which service and URL (None for the daemon's own
    workers), what went wrong (None: this one answered), and how long it took."""

    service: str
    url: str | None = None
    error: str | None = None
    ms: float = 0.0

    def as_dict(self) -> dict:
        return {"service": self.service, "url": self.url, "error": self.error, "ms": round(self.ms, 1)}


@dataclass(frozen=True)
class Token:
    """One or more pieces of the reply's text."""

    text: str


@dataclass(frozen=True)
class Done:
    """The reply is complete. `text` is the whole reply of a non-streamed generate
    ("" when it was streamed), `tool_calls` the calls it made (() when streamed: they
    came as ToolCallDelta events); `finish_reason` is stop, length, tool_calls or
    cancelled; `timings`
    holds the engine's prompt_ms, predicted_ms, predicted_per_second and the queue_ms
    the request waited before a model took it."""

    model: str
    text: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    timings: dict = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()  # what was tried, the answering one last (the router fills it in)
    # what the request policies did (msting.policy.pipeline): the route that picked the
    # model and who picked it (rule | router-model), and the response cache's hit | miss
    route: str | None = None
    route_by: str | None = None
    cache: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def summary(self) -> dict:
        """The fields of a stream's final event."""
        return {"finish_reason": self.finish_reason, "usage": self.usage.as_dict(), "timings": self.timings}


@dataclass(frozen=True)
class Failed:
    """The request failed; after tokens were streamed this means the reply is incomplete."""

    error: MstingError


@dataclass(frozen=True)
class Embeddings:
    model: str
    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)
    timings: dict = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    route: str | None = None
    route_by: str | None = None


Event = Union[Token, ToolCallDelta, Done, Failed]
