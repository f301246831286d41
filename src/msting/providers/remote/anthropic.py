"""`anthropic`: Anthropic's Messages API (POST /v1/messages, version 2023-06-01).

Chat only: the API continues no raw prompt and has no embeddings. What it cannot
express is refused, naming the parameter, never dropped: a temperature above 1, a
presence or frequency penalty, a seed. System messages, wherever they stand, are
joined (by blank lines) into the top-level `system`; the others go to `messages` in
their order. `max_tokens` is always sent: the API requires it.

`top_p` is sent only when it differs from msting's default (limits.DEFAULT_TOP_P,
which a request that never named it carries too) and cuts anything (below 1): the
current Claude models refuse `temperature` and `top_p` together, and msting always
sends a temperature. A client that does set its own top_p gets the upstream's answer.

The stream is SSE: message_start (the input tokens), content blocks of text deltas,
message_delta (the stop reason, the output tokens), message_stop; ping keeps it alive
and an `error` event fails it.

Tools: each becomes {name, description, input_schema}; tool_choice auto, required,
a named function and none become {"type": auto | any | tool (with its name) | none},
and parallel_tool_calls false `disable_parallel_tool_use`. An assistant message's tool
calls become tool_use blocks (their arguments must be a JSON object: the API takes an
`input` object), and the `tool` messages after it one user message of tool_result
blocks. A streamed tool_use block (content_block_start, then input_json_delta pieces)
comes back as ToolCallDelta events; stop_reason tool_use is finish_reason tool_calls.
"""

from __future__ import annotations

import json
from typing import Any

from msting.api import limits
from msting.api.errors import InvalidRequest
from msting.api.events import Done, Embeddings, Event, Failed, Token, Usage
from msting.api.requests import ChatRequest, EmbeddingRequest, GenerationRequest, Message, SamplingParams
from msting.api.tools import FINISH_TOOL_CALLS, ToolCallDelta
from msting.providers.base import Capabilities
from msting.providers.remote.sse import SseParser, bad_reply, count, cut, error_text, json_object, model_entries, stream_error
from msting.providers.remote.wire import RemoteModel, UpstreamRequest, call_arguments

API = "anthropic"
API_VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models?limit=1000"  # the most one page may hold
TEMPERATURE = (0.0, 1.0)
BUSY_ERRORS = ("overloaded_error", "rate_limit_error")
# The usage fields that count prompt tokens: those read from the prompt cache count too.
INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _unsupported(what: str, param: str, instead: str) -> InvalidRequest:
    return InvalidRequest("unsupported_by_provider", f"the anthropic API has no {what}; {instead}", param=param)


def _check(s: SamplingParams) -> None:
    low, high = TEMPERATURE
    if s.temperature is not None and not low <= s.temperature <= high:
        raise InvalidRequest("invalid_parameter", f"the anthropic API takes a temperature from {low:g} to {high:g}, "
                             f"got {s.temperature:g}", param="temperature")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(s, name):
            raise _unsupported(name, name, f"leave {name} at 0, or send the request to another service")
    if s.seed is not None:
        raise _unsupported("seed", "seed", "leave seed out (or null), or send the request to another service")


class AnthropicDecoder:
    def __init__(self, model: str):
        self.model = model
        self._sse = SseParser()
        self._counts: dict[str, int] = {}
        self._stop_reason: str | None = None
        self._over = False
        self._tools: dict[int, list] = {}  # a tool_use block's index -> [its tool call index, any arguments yet]

    def feed(self, line: str) -> list[Event]:
        parsed = None if self._over else self._sse.feed(line)
        if parsed is None or not parsed[1].strip():
            return []
        event, data = parsed
        payload = json_object(data)
        if payload is None:
            return self._end(Failed(bad_reply(API, f"a stream line that is not a JSON object: {cut(data)[:200]!r}")))
        kind = payload.get("type") if isinstance(payload.get("type"), str) else event
        if kind == "message_start":
            message = payload.get("message")
            self._count(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "content_block_start":
            return self._block_start(payload)
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return self._end(Failed(bad_reply(API, "a content_block_delta without a delta object")))
            if delta.get("type") == "text_delta":  # thinking and citations deltas are not text
                text = delta.get("text")
                if not isinstance(text, str):
                    return self._end(Failed(bad_reply(API, "a text_delta without a text string")))
                return [Token(text)] if text else []
            if delta.get("type") == "input_json_delta":
                tool = self._block(payload)
                piece = delta.get("partial_json")
                if tool is None or not isinstance(piece, str):
                    return self._end(Failed(bad_reply(API, "an input_json_delta without a tool_use block or partial_json string")))
                tool[1] = tool[1] or bool(piece)
                return [ToolCallDelta(tool[0], arguments=piece)] if piece else []
        elif kind == "content_block_stop":
            tool = self._block(payload)
            if tool is not None and not tool[1]:  # a call without arguments: OpenAI's say {}
                tool[1] = True
                return [ToolCallDelta(tool[0], arguments="{}")]
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                self._stop_reason = delta["stop_reason"]
            self._count(payload.get("usage"))
        elif kind == "message_stop":
            # end_turn, stop_sequence, refusal, pause_turn...: stop
            reason = {"max_tokens": "length", "tool_use": FINISH_TOOL_CALLS}.get(self._stop_reason or "", "stop")
            usage = Usage(sum(self._counts.get(k, 0) for k in INPUT_KEYS), self._counts.get("output_tokens", 0),
                          self._counts.get("cache_read_input_tokens", 0))
            return self._end(Done(model=self.model, finish_reason=reason, usage=usage))
        elif kind == "error":
            error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
            return self._end(stream_error(API, str(error.get("message") or ""), error.get("type") in BUSY_ERRORS))
        return []  # ping, a text block's start and stop, and event types added to the API later

    def _block(self, payload: dict[str, Any]) -> list | None:
        """The tool_use block an event's `index` names (None: not one)."""
        index = payload.get("index")
        return self._tools.get(index) if isinstance(index, int) else None

    def _block_start(self, payload: dict[str, Any]) -> list[Event]:
        block = payload.get("content_block")
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return []
        index, cid, name, given = payload.get("index"), block.get("id"), block.get("name"), block.get("input")
        if not isinstance(index, int) or not isinstance(cid, str) or not cid or not isinstance(name, str) or not name:
            return self._end(Failed(bad_reply(API, "a tool_use block without an index, id and name")))
        self._tools[index] = [len(self._tools), False]
        events: list[Event] = [ToolCallDelta(self._tools[index][0], cid, name, "")]
        if isinstance(given, dict) and given:  # the input whole at the start (the stream gives it in pieces after)
            self._tools[index][1] = True
            events.append(ToolCallDelta(self._tools[index][0], arguments=json.dumps(given, ensure_ascii=False)))
        return events

    def finish(self) -> list[Event]:
        """Every stream ends with message_stop: one that did not was cut."""
        return []

    def _count(self, usage: Any) -> None:
        """Usage counts are running totals: each one given replaces the one before."""
        if isinstance(usage, dict):
            self._counts.update({k: count(usage[k]) for k in (*INPUT_KEYS, "output_tokens") if k in usage})

    def _end(self, event: Event) -> list[Event]:
        self._over = True
        return [event]


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The non-system messages as the API takes them: an assistant's tool calls as
    tool_use blocks, each run of `tool` messages as one user message of tool_result blocks."""
    arguments = call_arguments(messages, API)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role == "system":
            continue
        if m.role == "tool":
            result = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            previous = out[-1] if out else None
            if previous is not None and previous.get("tool_results"):
                previous["content"].append(result)
            else:
                out.append({"role": "user", "content": [result], "tool_results": True})
            continue
        if m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [{"type": "tool_use", "id": call.id, "name": call.name, "input": arguments[i, j]}
                       for j, call in enumerate(m.tool_calls)]
            out.append({"role": "assistant", "content": blocks})
            continue
        out.append({"role": m.role, "content": m.content})
    for message in out:
        message.pop("tool_results", None)
    return out


def _tool_fields(request: ChatRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [{"name": t.name, **({"description": t.description} if t.description is not None else {}),
                            "input_schema": t.schema() or {"type": "object", "properties": {}},
                            **({"strict": t.strict} if t.strict is not None else {})} for t in request.tools]
    choice = request.tool_choice
    if choice is not None:
        kind = {"required": "any", "function": "tool"}.get(choice.mode, choice.mode)
        fields["tool_choice"] = {"type": kind, **({"name": choice.name} if choice.mode == "function" else {})}
    if request.parallel_tool_calls is False and (choice is None or choice.mode != "none"):
        fields["tool_choice"] = {**fields.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
    return fields


class AnthropicWire:
    api_format = API
    capabilities = Capabilities(chat=True, completions=False, stream=True, embed=False, tools=True)

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def generate(self, request: GenerationRequest, model: str) -> UpstreamRequest:
        if not isinstance(request, ChatRequest):
            raise _unsupported("raw text completions (it takes chat messages only)", "prompt",
                               "send messages to a chat route, or the prompt to an openai or ollama service")
        s = request.sampling
        _check(s)
        messages = _messages(request.messages)
        if not messages:
            raise InvalidRequest("invalid_parameter", "the anthropic API needs a user or assistant message, "
                                 "not only system ones", param="messages")
        body: dict[str, Any] = {"model": model, "max_tokens": s.max_tokens, "messages": messages, "stream": True,
                                "temperature": s.temperature}
        system = [m.content for m in request.messages if m.role == "system"]
        if system:
            body["system"] = "\n\n".join(system)
        if s.top_p != limits.DEFAULT_TOP_P and s.top_p < 1:
            body["top_p"] = s.top_p
        if s.stop:
            body["stop_sequences"] = list(s.stop)
        body.update(_tool_fields(request))
        return UpstreamRequest("POST", MESSAGES_PATH, body, stream=True)

    def decoder(self, model: str) -> AnthropicDecoder:
        return AnthropicDecoder(model)

    def embed(self, request: EmbeddingRequest, model: str) -> UpstreamRequest:
        raise _unsupported("embeddings", "input", "send embeddings to an openai or ollama service")

    def embeddings(self, body: Any, model: str) -> Embeddings:
        raise _unsupported("embeddings", "input", "send embeddings to an openai or ollama service")

    def list_models(self) -> UpstreamRequest:
        return UpstreamRequest("GET", MODELS_PATH)

    def models(self, body: Any) -> list[RemoteModel]:
        """`data[].id`, with the rest of each entry (display_name, created_at) as details."""
        return [RemoteModel(name, "llm", None, {k: v for k, v in entry.items() if k != "id"})
                for name, entry in model_entries(API, body)]

    def error_message(self, status: int, body: Any) -> str:
        """`error.message` of {"type": "error", "error": {"type", "message"}}, else the text."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"].strip():
            return cut(error["message"])
        return error_text(status, body)
