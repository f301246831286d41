"""`ollama`: Ollama's native API (/api/chat, /api/generate, /api/embed, /api/tags).

Streams are NDJSON: one JSON object a line, the text in `message.content` (chat) or
`response` (generate), the last one `"done": true` with `done_reason` and the token
counts; `{"error": "..."}` is a failure. A completion is sent `raw`, so the prompt
reaches the model without Ollama's chat template, as msting's own completions do.

Tools: `tools` go as OpenAI's shape (Ollama takes it); an assistant message's tool
calls as `tool_calls` with their arguments as an object, a `tool` message with the
called tool's `tool_name`. Ollama has no tool_choice: auto is its behaviour, none
sends no tools, and required, a named function or parallel_tool_calls false are
refused (400) rather than dropped. A reply's `message.tool_calls` (whole calls,
arguments an object, ids only in newer versions) come back as ToolCallDelta events
(arguments as JSON text, an id made when there is none), and a reply that called a
tool ends with finish_reason tool_calls (Ollama says stop).

Beyond the `Wire` protocol: `running()` / `running_models()` (the loaded models,
GET /api/ps) and `show()` / `model_details()` (one model's context length and
details, POST /api/show).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from msting.api.events import Done, Embeddings, Event, Failed, Token, Usage
from msting.api.errors import InvalidRequest
from msting.api.requests import ChatRequest, EmbeddingRequest, GenerationRequest, Message, SamplingParams
from msting.api.tools import FINISH_TOOL_CALLS, ToolCall, deltas_of
from msting.providers.base import Capabilities
from msting.providers.remote.sse import (
    bad_reply, count, cut, error_text, json_object, overloaded, positive_int, says_embeddings, stream_error, vector,
)
from msting.providers.remote.wire import RemoteModel, UpstreamRequest, call_arguments, sampling_fields

API = "ollama"
CHAT_PATH = "/api/chat"
GENERATE_PATH = "/api/generate"
EMBED_PATH = "/api/embed"
TAGS_PATH = "/api/tags"
PS_PATH = "/api/ps"
SHOW_PATH = "/api/show"
NS_PER_MS = 1_000_000


def options(s: SamplingParams) -> dict[str, Any]:
    """The request's `options`: the OpenAI sampling fields, the length named as Ollama names it."""
    return sampling_fields(s, max_tokens_key="num_predict")


def _timings(final: dict[str, Any]) -> dict[str, float]:
    """The engine's timings from the durations (nanoseconds) of the final line."""
    timings: dict[str, float] = {}
    prompt_ns, eval_ns = count(final.get("prompt_eval_duration")), count(final.get("eval_duration"))
    if prompt_ns:
        timings["prompt_ms"] = prompt_ns / NS_PER_MS
    if eval_ns:
        timings["predicted_ms"] = eval_ns / NS_PER_MS
        timings["predicted_per_second"] = count(final.get("eval_count")) / (eval_ns / 1e9)
    return timings


class OllamaDecoder:
    """The NDJSON stream of /api/chat or /api/generate: one decoder reads both."""

    def __init__(self, model: str):
        self.model = model
        self._over = False
        self._calls = 0  # tool calls seen

    def feed(self, line: str) -> list[Event]:
        line = line.strip()
        if self._over or not line:
            return []
        chunk = json_object(line)
        if chunk is None:
            return self._end(Failed(bad_reply(API, f"a stream line that is not a JSON object: {cut(line)[:200]!r}")))
        if "error" in chunk:
            message = str(chunk["error"] or "")
            return self._end(stream_error(API, message, overloaded(message)))
        message = chunk.get("message")
        text = message.get("content") if isinstance(message, dict) else chunk.get("response")
        if text is not None and not isinstance(text, str):
            return self._end(Failed(bad_reply(API, "a stream line whose text is not a string")))
        events: list[Event] = [Token(text)] if text else []
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is not None:
            made = _tool_calls(calls)
            if made is None:
                return self._end(Failed(bad_reply(API, "a stream line whose tool_calls are not a list of "
                                                  "{function: {name, arguments (an object)}}")))
            events += deltas_of(made, self._calls)
            self._calls += len(made)
        if chunk.get("done") is True:
            reason = "length" if chunk.get("done_reason") == "length" else FINISH_TOOL_CALLS if self._calls else "stop"
            usage = Usage(count(chunk.get("prompt_eval_count")), count(chunk.get("eval_count")))
            events += self._end(Done(model=self.model, finish_reason=reason, usage=usage, timings=_timings(chunk)))
        return events

    def finish(self) -> list[Event]:
        """Every stream ends with its `done` line: one that did not was cut."""
        return []

    def _end(self, event: Event) -> list[Event]:
        self._over = True
        return [event]


def _tool_calls(calls: Any) -> list[ToolCall] | None:
    """Ollama's whole tool calls, or None when they do not have its shape."""
    if not isinstance(calls, list):
        return None
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            return None
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # an OpenAI-style server in Ollama's clothes
            text = arguments
        elif isinstance(arguments, dict):
            text = json.dumps(arguments, ensure_ascii=False)
        else:
            return None
        cid = call.get("id")
        out.append(ToolCall(cid if isinstance(cid, str) and cid else f"call_{uuid.uuid4().hex[:24]}", function["name"], text))
    return out


def _unsupported(what: str, param: str) -> InvalidRequest:
    return InvalidRequest("unsupported_by_provider", f"the ollama API has no {what}; leave it out, or send the request "
                          "to an openai or anthropic service", param=param)


def _chat_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    arguments = call_arguments(messages, API)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            out.append({"role": "tool", "content": m.content, "tool_name": names.get(m.tool_call_id or "", "")})
        elif m.tool_calls:
            calls = [{"function": {"name": call.name, "arguments": arguments[i, j]}} for j, call in enumerate(m.tool_calls)]
            out.append({"role": m.role, "content": m.content, "tool_calls": calls})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def _tools(request: ChatRequest) -> dict[str, Any]:
    """The body's `tools`; what Ollama cannot express is refused."""
    choice = request.tool_choice
    if choice is not None and choice.mode in ("required", "function"):
        raise _unsupported("tool_choice other than auto or none (it cannot be made to call a tool)", "tool_choice")
    if request.parallel_tool_calls is False:
        raise _unsupported("parallel_tool_calls false (it may call several tools at once)", "parallel_tool_calls")
    if not request.tools or (choice is not None and choice.mode == "none"):
        return {}
    return {"tools": [t.as_dict() for t in request.tools]}


class OllamaWire:
    api_format = API
    capabilities = Capabilities(tools=True)

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Ollama has no authentication of its own; a key is for a proxy in front of it."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(self, request: GenerationRequest, model: str) -> UpstreamRequest:
        if isinstance(request, ChatRequest):
            body = {"model": model, "messages": _chat_messages(request.messages), "stream": True,
                    "options": options(request.sampling), **_tools(request)}
            return UpstreamRequest("POST", CHAT_PATH, body, stream=True)
        body = {"model": model, "prompt": request.prompt, "raw": True, "stream": True,
                "options": options(request.sampling)}
        return UpstreamRequest("POST", GENERATE_PATH, body, stream=True)

    def decoder(self, model: str) -> OllamaDecoder:
        return OllamaDecoder(model)

    def embed(self, request: EmbeddingRequest, model: str) -> UpstreamRequest:
        """`truncate: false`: an input longer than the model's context is an error, not
        silently shortened (Ollama's default)."""
        return UpstreamRequest("POST", EMBED_PATH, {"model": model, "input": list(request.inputs), "truncate": False})

    def embeddings(self, body: Any, model: str) -> Embeddings:
        rows = body.get("embeddings") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise bad_reply(API, "an embed reply without an embeddings list")
        vectors = []
        for position, row in enumerate(rows):
            values = vector(row)
            if values is None:
                raise bad_reply(API, f"an embedding (embeddings[{position}]) that is not a list of numbers")
            vectors.append(values)
        return Embeddings(model=model, vectors=vectors, usage=Usage(count(body.get("prompt_eval_count")), 0))

    def list_models(self) -> UpstreamRequest:
        return UpstreamRequest("GET", TAGS_PATH)

    def models(self, body: Any) -> list[RemoteModel]:
        """`models[].name`, each with its `details` (family, parameter_size,
        quantization_level, ...). /api/tags gives no context length: see `show`."""
        found = []
        for entry in _model_entries(body):
            details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
            found.append(RemoteModel(entry["name"], _type(entry["name"], details), None, dict(details)))
        return found

    def running(self) -> UpstreamRequest:
        """The models Ollama has loaded now."""
        return UpstreamRequest("GET", PS_PATH)

    def running_models(self, body: Any) -> list[str]:
        return [entry["name"] for entry in _model_entries(body)]

    def show(self, model: str) -> UpstreamRequest:
        """One model's details, its context length among them (`model_details`)."""
        return UpstreamRequest("POST", SHOW_PATH, {"model": model})

    def model_details(self, body: Any, model: str = "") -> RemoteModel:
        """The reply to `show(model)`. Its context length is `model_info["<arch>.context_length"]`,
        <arch> being `general.architecture`; `details` keeps the reply's `details` and
        `capabilities`. The reply does not name the model: `model` is its name."""
        info = (body.get("model_info") or {}) if isinstance(body, dict) else None
        if not isinstance(info, dict):
            raise bad_reply(API, "a show reply that is not an object with a model_info object")
        arch = info.get("general.architecture")
        context = positive_int(info.get(f"{arch}.context_length")) if isinstance(arch, str) else None
        details = dict(body["details"]) if isinstance(body.get("details"), dict) else {}
        capabilities = body.get("capabilities")
        if isinstance(capabilities, list):
            details["capabilities"] = capabilities
        kind = _type(model, details)
        if isinstance(capabilities, list) and capabilities:  # newer Ollama says it outright
            kind = "embeddings" if "embedding" in capabilities and "completion" not in capabilities else "llm"
        return RemoteModel(model, kind, context, details)

    def error_message(self, status: int, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip():
            return cut(body["error"])
        return error_text(status, body)


def _model_entries(body: Any) -> list[dict[str, Any]]:
    """The `models` of an /api/tags or /api/ps reply, each with a name."""
    entries = body.get("models") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise bad_reply(API, "a model list without a models list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise bad_reply(API, "a model list with an entry that has no name")
    return entries


def _type(name: str, details: dict[str, Any]) -> str:
    families = details.get("families") if isinstance(details.get("families"), list) else []
    return "embeddings" if says_embeddings(name, details.get("family"), *families) else "llm"
