"""A wire format: how msting's typed requests and events translate to one upstream API.

A `Wire` does no I/O. It builds an `UpstreamRequest` (method, path, JSON body) for a
typed request, and turns what comes back into typed results: a whole JSON body into a
`Done`, `Embeddings` or a model list, and a stream's lines, one at a time, into events
through a `StreamDecoder`. The remote provider sends the requests (msting.providers.
remote.provider), so that retries, balancing and timeouts live in one place.

Generation is always streamed upstream, even for a non-streamed request: the first
token then comes within the first-token timeout or the attempt fails over, and a reply
cut short is retried whole before the client has seen any of it.

A wire raises `msting.api.errors` only: `InvalidRequest` (naming the provider) for what
the upstream API cannot express, e.g. embeddings on Anthropic or a temperature above
its range. It is never a silent substitute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from msting.api.errors import InvalidRequest
from msting.api.events import Embeddings, Event
from msting.api.requests import EmbeddingRequest, GenerationRequest, Message, SamplingParams
from msting.api.tools import ToolCall
from msting.providers.base import Capabilities


@dataclass(frozen=True)
class UpstreamRequest:
    method: str  # GET | POST
    path: str  # joined to the URL, e.g. "/v1/chat/completions"
    body: dict[str, Any] | None = None
    stream: bool = False  # the response is a stream of lines (SSE or NDJSON)


@dataclass(frozen=True)
class RemoteModel:
    """One model an upstream lists."""

    name: str  # the upstream's own name, e.g. "llama3.2:3b"
    type: str = "llm"  # llm | embeddings
    context_length: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # what else the upstream says of it


class StreamDecoder(Protocol):
    def feed(self, line: str) -> list[Event]:
        """The events one line of the upstream stream carries (often none): `Token`s,
        and at the end one `Done` (model, finish_reason, usage) or `Failed` (the
        upstream reported an error mid-stream)."""
        ...

    def finish(self) -> list[Event]:
        """The stream ended: the `Done` if it has not been produced yet and the format
        allows ending without an explicit end marker, else [] (the caller treats a
        stream without Done or Failed as cut)."""
        ...


class Wire(Protocol):
    api_format: str  # openai | ollama | anthropic
    capabilities: Capabilities

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Headers every request carries (authentication, API version)."""
        ...

    def generate(self, request: GenerationRequest, model: str) -> UpstreamRequest:
        """A streamed generation of `request` by the upstream model `model`. Sampling
        values the request left as None have been filled in by the caller."""
        ...

    def decoder(self, model: str) -> StreamDecoder:
        """A decoder for the stream that `generate` asked for. `model` is the name
        to put in `Done.model` (the caller rewrites it to `service~model`)."""
        ...

    def embed(self, request: EmbeddingRequest, model: str) -> UpstreamRequest: ...

    def embeddings(self, body: Any, model: str) -> Embeddings:
        """The reply to `embed`, parsed; ServerError("upstream_bad_reply") when it does
        not have the documented shape."""
        ...

    def list_models(self) -> UpstreamRequest:
        """The request that lists the upstream's models; it doubles as the health check."""
        ...

    def models(self, body: Any) -> list[RemoteModel]: ...

    def error_message(self, status: int, body: Any) -> str:
        """The upstream's own error message from an error reply's parsed body (or its
        text when it was not JSON), for the client and the log."""
        ...


def sampling_fields(s: SamplingParams, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
    """The sampling fields of a request body (OpenAI's names; Ollama's options differ only
    in the length's); what is at its neutral value is left out."""
    fields: dict[str, Any] = {max_tokens_key: s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
    if s.stop:
        fields["stop"] = list(s.stop)
    if s.seed is not None:
        fields["seed"] = s.seed
    if s.presence_penalty:
        fields["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        fields["frequency_penalty"] = s.frequency_penalty
    return fields


def call_arguments(messages: tuple[Message, ...], api: str) -> dict[tuple[int, int], dict[str, Any]]:
    """Each tool call's arguments as an object, by (message index, call index), for an API
    that takes them as an object (Anthropic's `input`, Ollama's `arguments`); arguments
    that are not a JSON object are an InvalidRequest naming the call."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for i, m in enumerate(messages):
        for j, call in enumerate(m.tool_calls):
            out[i, j] = _arguments_object(call, f"messages[{i}].tool_calls[{j}]", api)
    return out


def _arguments_object(call: ToolCall, where: str, api: str) -> dict[str, Any]:
    try:
        given = call.arguments_object()
    except ValueError:
        given = None
    if not isinstance(given, dict):
        raise InvalidRequest("invalid_parameter", f"{where}.function.arguments must be a JSON object for the {api} API "
                             "(it takes a tool call's arguments as an object)", param="messages")
    return given
