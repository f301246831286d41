"""The typed requests that every route builds and every provider serves.

A route parses its body into one of these (the HTTP layer checks each field against
`msting.api.limits` first); the router resolves `model` to a provider. A request is
immutable: the router hands the provider a copy naming the provider's own model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Union

from msting.api import limits
from msting.api.tools import Tool, ToolCall, ToolChoice


#: Model names that mean "the service's default model" (as does no name at all).
DEFAULT_MODEL_NAMES = frozenset({"", "default"})


def names_default(model: str | None) -> bool:
    """Does a request naming `model` ask for its service's default model?"""
    return model is None or model in DEFAULT_MODEL_NAMES


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `max_tokens` and `temperature` left as None take the model's own
    defaults (its profile entry, else `limits.DEFAULT_*`); the rest default here."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float = limits.DEFAULT_TOP_P
    presence_penalty: float = limits.DEFAULT_PRESENCE_PENALTY
    frequency_penalty: float = limits.DEFAULT_FREQUENCY_PENALTY
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a random seed
    choices: tuple[str, ...] = ()  # the reply is exactly one of these (the router model's routes); (): free

    def with_defaults(self, max_tokens: int, temperature: float) -> SamplingParams:
        """These params, with a model's defaults for what the request left out."""
        if self.max_tokens is not None and self.temperature is not None:
            return self
        return replace(self, max_tokens=self.max_tokens if self.max_tokens is not None else max_tokens,
                       temperature=self.temperature if self.temperature is not None else temperature)

    def as_dict(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "stop": list(self.stop), "seed": self.seed, "choices": list(self.choices)}


@dataclass(frozen=True)
class CacheControl:
    """The request's `Cache-Control` directives a response cache obeys: `no_cache`,
    answer afresh (the answer may still be stored); `no_store`, neither read nor store."""

    no_cache: bool = False
    no_store: bool = False


NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class RequestMeta:
    """Who asked, and how: what the traffic policies (limits, usage, cache, routing
    rules) read besides the request itself. Built by the HTTP layer.

    `client` is who is accounted for the request: `key:<VAR>` when it came over TCP
    with the API key held in the variable VAR (never the key itself), followed by
    `/<label>` when it also sent an `x-msting-client` header; the label alone when
    there was no key (the Unix socket, or TCP without auth); None when neither.
    `user` is the OpenAI `user` body field. `headers` holds the request headers a
    routing rule may match: lower-case names, only `x-msting-*` and `user-agent`.
    `route` is what picked the model (a rule or the router model's decision), set by
    the request router before the request reaches the providers' Router.
    `tools_requested`: the request declares tools or carries tool calls or results.
    `keep_alive` is how long an on-demand local model stays loaded once idle after
    this request, in seconds (the body's `keep_alive`, as Ollama's); math.inf keeps it
    loaded; None leaves the profile's `keep_alive_sec`. Always-ready models ignore it."""

    client: str | None = None
    user: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS, hash=False)
    cache_control: CacheControl = CacheControl()
    tools_requested: bool = False
    route: str | None = None
    keep_alive: float | None = None


NO_META = RequestMeta()


@dataclass(frozen=True)
class Message:
    """One chat message. An assistant message may carry the `tool_calls` it made (its
    content then often ""); a `tool` message is the result of the call `tool_call_id`."""

    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """Generate a continuation of `prompt`."""

    prompt: str
    model: str | None = None  # a model, `service~model`, or None/"default"
    sampling: SamplingParams = field(default_factory=SamplingParams)
    meta: RequestMeta = NO_META


@dataclass(frozen=True)
class ChatRequest:
    """Generate the assistant's reply to `messages` (rendered with the model's chat template)."""

    messages: tuple[Message, ...]
    model: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    meta: RequestMeta = NO_META
    # tool calling (msting.api.tools): the tools the model may call, whether and which
    # it must, and whether it may call several at once (None: the upstream's default)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @property
    def uses_tools(self) -> bool:
        """Does serving it take tool calling: tools declared, or tool calls or their
        results in the messages?"""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)


@dataclass(frozen=True)
class EmbeddingRequest:
    """One embedding vector per input string, in order."""

    inputs: tuple[str, ...]
    model: str | None = None
    meta: RequestMeta = NO_META


GenerationRequest = Union[CompletionRequest, ChatRequest]
Request = Union[CompletionRequest, ChatRequest, EmbeddingRequest]
