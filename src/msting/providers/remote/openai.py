"""`openai`: the OpenAI API, as OpenAI serves it and as the servers that copy it do
(llama.cpp's, llama-cpp-python's, vLLM, LM Studio).

The service URL is the server's root: every path here starts with /v1. A generation
is a streamed chat or text completion asking for a final usage chunk
(`stream_options.include_usage`; servers that do not know it ignore it, and usage is
then 0s). The stream is SSE: `data: {chunk}` lines, then `data: [DONE]`.

Tool calling is OpenAI's own: `tools`, `tool_choice`, `parallel_tool_calls`, assistant
messages' `tool_calls` and `tool` messages go as they came; a stream's
`delta.tool_calls` pieces come back as ToolCallDelta events, finish_reason tool_calls.
"""

from __future__ import annotations

from typing import Any

from msting.api.errors import UpstreamError
from msting.api.events import Done, Embeddings, Event, Failed, Token, Usage
from msting.api.requests import ChatRequest, EmbeddingRequest, GenerationRequest, Message
from msting.api.tools import FINISH_TOOL_CALLS, ToolCallDelta
from msting.providers.base import Capabilities
from msting.providers.remote.sse import (
    SseParser, bad_reply, count, cut, error_text, json_object, model_entries, overloaded, positive_int, says_embeddings, stream_error,
    vector,
)
from msting.providers.remote.wire import RemoteModel, UpstreamRequest, sampling_fields

API = "openai"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"
TIMING_KEYS = ("prompt_ms", "predicted_ms", "predicted_per_second")  # what llama.cpp's server adds to its last chunk


class OpenAIDecoder:
    """The SSE stream of a chat completion (`choices[0].delta.content`) or of a text
    completion (`choices[0].text`): one decoder reads both."""

    def __init__(self, model: str):
        self.model = model
        self._sse = SseParser()
        self._finish_reason: str | None = None
        self._usage = Usage()
        self._timings: dict[str, float] = {}
        self._over = False  # a Done or a Failed has been produced
        self._calls: set[int] = set()  # the tool calls begun (their index)

    def feed(self, line: str) -> list[Event]:
        parsed = None if self._over else self._sse.feed(line)
        if parsed is None:
            return []
        event, data = parsed
        data = data.strip()
        if not data:
            return []
        if data == "[DONE]":
            if self._finish_reason is None:
                # No finish_reason: the reply was stopped, not finished (llama-cpp-python's
                # server ends a generation this way when another request arrives). A cut
                # reply, retried before the client saw it, or an explicit error after.
                return self._fail(Failed(UpstreamError("upstream_stream_cut", "the upstream ended the reply with [DONE] "
                                                       "but no finish_reason: it was stopped before it was complete")))
            return [self._done()]
        chunk = json_object(data)
        if chunk is None:
            return self._fail(Failed(bad_reply(API, f"a stream line that is not a JSON object: {cut(data)[:200]!r}")))
        if "error" in chunk or event == "error":
            return self._fail(_stream_error(chunk))
        return self._read(chunk)

    def finish(self) -> list[Event]:
        """A stream that ended without [DONE] is complete only if its finish_reason came."""
        if self._over or self._finish_reason is None:
            return []
        return [self._done()]

    def _read(self, chunk: dict[str, Any]) -> list[Event]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):  # the usage-only chunk (choices: []); some servers put it on every chunk
            details = usage.get("prompt_tokens_details")
            cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
            self._usage = Usage(count(usage.get("prompt_tokens")), count(usage.get("completion_tokens")), cached)
        timings = chunk.get("timings")
        if isinstance(timings, dict):
            self._timings = {k: timings[k] for k in TIMING_KEYS if isinstance(timings.get(k), (int, float))}
        choices = chunk.get("choices")
        if choices is None and isinstance(usage, dict):
            return []
        if not isinstance(choices, list):
            return self._fail(Failed(bad_reply(API, "a stream chunk without a choices list")))
        if not choices:
            return []
        choice = choices[0]
        if not isinstance(choice, dict):
            return self._fail(Failed(bad_reply(API, "a stream chunk whose choice is not an object")))
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text is not None and not isinstance(text, str):
            return self._fail(Failed(bad_reply(API, "a stream chunk whose text is not a string")))
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self._finish_reason = reason
        events: list[Event] = [Token(text)] if text else []
        calls = delta.get("tool_calls") if isinstance(delta, dict) else None
        if calls is not None:
            deltas = _tool_call_deltas(calls)
            if deltas is None:
                return self._fail(Failed(bad_reply(API, "a stream chunk whose tool_calls are not a list of "
                                                   "{index, id?, function: {name?, arguments?}}")))
            for d in deltas:  # some servers repeat a call's id and name on each piece: only its first says them
                if d.index in self._calls:
                    if d.arguments:
                        events.append(ToolCallDelta(d.index, arguments=d.arguments))
                else:
                    self._calls.add(d.index)
                    events.append(d)
        return events

    def _done(self) -> Done:
        self._over = True
        # content_filter, function_call (the deprecated form), none: stop
        reason = self._finish_reason if self._finish_reason in ("length", FINISH_TOOL_CALLS) else "stop"
        return Done(model=self.model, finish_reason=reason, usage=self._usage, timings=dict(self._timings))

    def _fail(self, failed: Failed) -> list[Event]:
        self._over = True
        return [failed]


def _tool_call_deltas(calls: Any) -> list[ToolCallDelta] | None:
    """A chunk's `delta.tool_calls`, or None when they do not have OpenAI's shape."""
    if not isinstance(calls, list):
        return None
    out: list[ToolCallDelta] = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return None
        index, cid, name, arguments = call.get("index"), call.get("id"), function.get("name"), function.get("arguments")
        if (not isinstance(index, int) or isinstance(index, bool) or index < 0 or not isinstance(cid, (str, type(None)))
                or not isinstance(name, (str, type(None))) or not isinstance(arguments, (str, type(None)))):
            return None
        out.append(ToolCallDelta(index, cid or None, name or None, arguments or ""))
    return out


def chat_message(m: Message) -> dict[str, Any]:
    """A message in OpenAI's shape (tool calls and tool results included)."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    if m.tool_calls:
        return {"role": m.role, "content": m.content or None, "tool_calls": [c.as_dict() for c in m.tool_calls]}
    return {"role": m.role, "content": m.content}


def tool_fields(request: ChatRequest) -> dict[str, Any]:
    """The request's tools, tool_choice and parallel_tool_calls in OpenAI's shape (Ollama takes
    the same `tools`); what it left out is left out."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [t.as_dict() for t in request.tools]
    if request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice.as_openai()
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def _stream_error(chunk: dict[str, Any]) -> Failed:
    error = chunk.get("error")
    fields = error if isinstance(error, dict) else chunk  # {"error": {...}}, or an `event: error` line's own fields
    message = error if isinstance(error, str) else str(fields.get("message") or "")
    return stream_error(API, message, overloaded(message, fields.get("type"), fields.get("code")))


class OpenAIWire:
    api_format = API
    capabilities = Capabilities(tools=True)

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(self, request: GenerationRequest, model: str) -> UpstreamRequest:
        body: dict[str, Any]
        if isinstance(request, ChatRequest):
            path = CHAT_PATH
            body = {"model": model, "messages": [chat_message(m) for m in request.messages], **tool_fields(request)}
        else:
            path = COMPLETIONS_PATH
            body = {"model": model, "prompt": request.prompt}
        body.update(stream=True, stream_options={"include_usage": True}, **sampling_fields(request.sampling))
        return UpstreamRequest("POST", path, body, stream=True)

    def decoder(self, model: str) -> OpenAIDecoder:
        return OpenAIDecoder(model)

    def embed(self, request: EmbeddingRequest, model: str) -> UpstreamRequest:
        return UpstreamRequest("POST", EMBEDDINGS_PATH, {"model": model, "input": list(request.inputs)})

    def embeddings(self, body: Any, model: str) -> Embeddings:
        """`data[].embedding`, put in `index` order (a reply may list them in any order)."""
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise bad_reply(API, "an embeddings reply without a data list")
        vectors: dict[int, list[float]] = {}
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            values = vector(item.get("embedding")) if isinstance(item, dict) else None
            if values is None or not isinstance(index, int) or isinstance(index, bool) or index in vectors:
                raise bad_reply(API, f"an embedding (data[{position}]) without a list of numbers and its own index")
            vectors[index] = values
        if sorted(vectors) != list(range(len(vectors))):
            raise bad_reply(API, f"embeddings indexed {sorted(vectors)}, not 0 to {len(vectors) - 1}")
        usage = body.get("usage")
        prompt_tokens = count(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0
        return Embeddings(model=model, vectors=[vectors[i] for i in range(len(vectors))], usage=Usage(prompt_tokens, 0))

    def list_models(self) -> UpstreamRequest:
        return UpstreamRequest("GET", MODELS_PATH)

    def models(self, body: Any) -> list[RemoteModel]:
        """`data[].id`; the context length where the server gives one (`context_length`;
        vLLM's `max_model_len`; llama-cpp-python's `meta.n_ctx_train`)."""
        found = []
        for name, entry in model_entries(API, body):
            meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
            context = (positive_int(entry.get("context_length")) or positive_int(entry.get("max_model_len"))
                       or positive_int(meta.get("n_ctx_train")))
            details = {k: v for k, v in entry.items() if k != "id"}
            found.append(RemoteModel(name, "embeddings" if says_embeddings(name) else "llm", context, details))
        return found

    def error_message(self, status: int, body: Any) -> str:
        """`error.message` (OpenAI, llama.cpp, vLLM), else `detail` (a FastAPI server's), else the text."""
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"].strip():
                return cut(error["message"])
            if isinstance(error, str) and error.strip():
                return cut(error)
            detail = body.get("detail")
            if isinstance(detail, str) and detail.strip():
                return cut(detail)
            if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [...], "msg": "..."}]
                messages = [d["msg"] for d in detail if isinstance(d, dict) and isinstance(d.get("msg"), str)]
                if messages:
                    return cut("; ".join(messages))
        return error_text(status, body)
