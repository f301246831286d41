"""The application interface's values: what a request asks, what an answer says, and
which errors are outages (the ones a fallback provider may answer instead)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msting.client.daemon import DaemonUnavailable, MstingError, RequestTimeout

#: Error types (OpenAI's ``error.type``) that say the request itself is wrong: an error
#: event of a stream with one of these is not an outage.
REQUEST_ERROR_TYPES = frozenset({
    "invalid_request_error", "not_found_error", "authentication_error", "permission_error",
    "permission_denied_error", "request_too_large", "conflict_error",
})


class LLMFallbackWarning(UserWarning):
    """The primary provider failed, and the fallback provider answered."""


class ServerUnavailable(MstingError):
    """An OpenAI-compatible server (``LLM_PROVIDER=openai``) could not be reached."""

    def __init__(self, message: str) -> None:
        super().__init__(None, "unavailable_error", "server_unavailable", message)


@dataclass
class LLMRequest:
    """One generation: a ``prompt`` (a completion) or chat ``messages``, exactly one.

    ``None`` leaves a value to the provider (its default model, its sampling defaults);
    ``timeout`` (seconds, the whole request) overrides the client's."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("an LLMRequest needs exactly one of prompt and messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, not {type(self.prompt).__name__}")
        if self.messages is not None and not (isinstance(self.messages, list) and self.messages
                                              and all(isinstance(m, dict) for m in self.messages)):
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}")

    @property
    def text(self) -> str:
        """The words a reply answers: the prompt, or the last user message."""
        if self.prompt is not None:
            return self.prompt
        messages = self.messages or []
        users = [m for m in messages if m.get("role") == "user"]
        return content_text((users or messages)[-1].get("content"))

    def sampling(self) -> dict[str, Any]:
        """The sampling fields that were given, by their OpenAI names."""
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "stop": self.stop, "seed": self.seed}
        return {k: v for k, v in values.items() if v is not None}


@dataclass
class LLMResponse:
    """One answer. ``model`` is the name the provider answered with (``stub~...`` for the
    stub); ``provider`` which backend answered (the daemon's ``X-Msting-Provider``
    header when it sent one); ``attempts`` how many tries the daemon made
    (``X-Msting-Attempts``); ``raw`` the whole JSON body."""

    text: str
    model: str | None
    provider: str
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    fallback_used: bool = False
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def as_request(request: LLMRequest | str) -> LLMRequest:
    """A bare string is a prompt."""
    if isinstance(request, LLMRequest):
        return request
    if isinstance(request, str):
        return LLMRequest(prompt=request)
    raise TypeError(f"expected an LLMRequest or a prompt string, not {type(request).__name__}")


def is_outage(exc: BaseException) -> bool:
    """Whether a fallback provider may answer instead: the provider could not be reached
    or timed out, answered a 5xx or a 429, cut a stream short, or failed it with a
    server-side error event. A 4xx other than 429 says the request is wrong: not an outage."""
    if isinstance(exc, (DaemonUnavailable, ServerUnavailable, RequestTimeout)):
        return True
    if not isinstance(exc, MstingError) or exc.status is None:
        return False
    if exc.status == 429 or exc.status >= 500:
        return True
    if exc.status == 200:  # an error in a stream that had started (no text yet, or it would not be asked)
        return exc.code == "stream_truncated" or exc.type not in REQUEST_ERROR_TYPES
    return False


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)
