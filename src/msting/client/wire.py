"""The OpenAI-compatible wire, without I/O: request bodies, replies into
:class:`LLMResponse`, and the SSE stream's parser (a stream that ends without
``[DONE]``, or with an ``{"error": ...}`` event, raises: never a truncated success)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from msting.client.daemon import MstingError
from msting.client.llm import LLMRequest, LLMResponse, content_text

SEPARATOR = "~"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
PROVIDER_HEADER = "x-msting-provider"
ATTEMPTS_HEADER = "x-msting-attempts"


def server_root(url: str) -> str:
    """A base URL with or without its trailing ``/v1``: the root the ``/v1/...`` paths go under."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def local_model(name: str | None) -> str:
    """A model of the daemon's own workers: ``local~NAME`` (``local~default`` for none).
    A name of another service is refused, not silently sent elsewhere."""
    if not name:
        return "local~default"
    service, sep, model = name.partition(SEPARATOR)
    if not sep:
        return f"local{SEPARATOR}{name}"
    if service == "local":
        return name if model else "local~default"
    raise ValueError(f"LLM_PROVIDER=local serves only the daemon's own models (local~NAME); "
                     f"{name!r} names the service {service!r}")


def stub_model(name: str | None) -> str:
    """The stub's name for a reply: ``stub~`` and the requested model without its service."""
    bare = (name or "").rpartition(SEPARATOR)[2]
    return f"stub{SEPARATOR}{bare or 'stub'}"


def request_route(request: LLMRequest, model: str | None, *, stream: bool) -> tuple[str, dict[str, Any]]:
    """(path, JSON body): chat completions for messages, completions for a prompt."""
    body: dict[str, Any] = {"messages": request.messages} if request.messages is not None else {"prompt": request.prompt}
    if model is not None:
        body["model"] = model
    body.update(request.sampling())
    if stream:
        body["stream"] = True
    return (CHAT_PATH if request.messages is not None else COMPLETIONS_PATH), body


def attempts_of(headers: Mapping[str, str]) -> int:
    try:
        return max(1, int(headers.get(ATTEMPTS_HEADER, "1")))
    except ValueError:
        return 1


def response_of(data: dict[str, Any], headers: Mapping[str, str], provider: str, *, chat: bool) -> LLMResponse:
    """A ``chat.completion`` or ``text_completion`` body as an LLMResponse."""
    choice = _first_choice(data)
    if chat:
        message = choice.get("message")
        text = content_text(message.get("content")) if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise MstingError(200, "server_error", "bad_response", "the answer has no text in its first choice", data)
    usage = data.get("usage")
    return LLMResponse(
        text=text,
        model=data.get("model"),
        provider=headers.get(PROVIDER_HEADER) or provider,
        finish_reason=choice.get("finish_reason"),
        usage=usage if isinstance(usage, dict) else {},
        attempts=attempts_of(headers),
        raw=data,
    )


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MstingError(200, "server_error", "bad_response", "the answer has no choices", data)
    return choices[0]


class StreamParser:
    """Server-Sent Events of an OpenAI stream, fed line by line: :meth:`feed` returns
    the text pieces an event completed, :meth:`finish` raises unless ``[DONE]`` came."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.done = False
        self._data: list[str] = []

    def feed(self, line: str) -> list[str]:
        if self.done:
            return []
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: keep-alive
            return []
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return []

    def finish(self) -> None:
        self._dispatch()
        if not self.done:
            raise MstingError(200, "server_error", "stream_truncated", "the stream ended without [DONE]")

    def _dispatch(self) -> list[str]:
        if not self._data:
            return []
        text, self._data = "\n".join(self._data), []
        if text.strip() == "[DONE]":
            self.done = True
            return []
        try:
            event = json.loads(text)
        except ValueError:
            raise MstingError(200, "server_error", "bad_stream", f"the stream sent data that is not JSON: {text[:200]!r}") from None
        if not isinstance(event, dict):
            raise MstingError(200, "server_error", "bad_stream", f"the stream sent {text[:200]!r}", {"value": event})
        if "error" in event:
            err = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
            raise MstingError(200, err.get("type") or "server_error", err.get("code"),
                              str(err.get("message") or "the stream failed"), event)
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []  # a usage-only chunk (stream_options.include_usage)
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta")
            piece = content_text(delta.get("content")) if isinstance(delta, dict) else ""
        else:
            piece = choice.get("text") or ""
        return [piece] if piece else []
