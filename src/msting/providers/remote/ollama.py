"""`ollama`: Ollama's native API (/api/chat, /api/generate, /api/embed, /api/tags).

Streams are NDJSON: one JSON object a line, the text in `message.content` (chat) or
`response` (generate), the last one `"done": true` with `done_reason` and the token
counts; `{"error": "..."}` is a failure. A completion is sent `raw`, so the prompt
reaches the model without Ollama's chat template, as msting's own completions do.

Beyond the `Wire` protocol: `running()` / `running_models()` (the loaded models,
GET /api/ps) and `show()` / `model_details()` (one model's context length and
details, POST /api/show).
"""

from __future__ import annotations

from typing import Any

from msting.api.events import Done, Embeddings, Event, Failed, Token, Usage
from msting.api.requests import ChatRequest, EmbeddingRequest, GenerationRequest, SamplingParams
from msting.providers.base import Capabilities
from msting.providers.remote.sse import (
    bad_reply, count, cut, error_text, json_object, overloaded, positive_int, says_embeddings, stream_error, vector,
)
from msting.providers.remote.wire import RemoteModel, UpstreamRequest, sampling_fields

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
        if chunk.get("done") is True:
            reason = "length" if chunk.get("done_reason") == "length" else "stop"
            usage = Usage(count(chunk.get("prompt_eval_count")), count(chunk.get("eval_count")))
            events += self._end(Done(model=self.model, finish_reason=reason, usage=usage, timings=_timings(chunk)))
        return events

    def finish(self) -> list[Event]:
        """Every stream ends with its `done` line: one that did not was cut."""
        return []

    def _end(self, event: Event) -> list[Event]:
        self._over = True
        return [event]


class OllamaWire:
    api_format = API
    capabilities = Capabilities()

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Ollama has no authentication of its own; a key is for a proxy in front of it."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(self, request: GenerationRequest, model: str) -> UpstreamRequest:
        if isinstance(request, ChatRequest):
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            body = {"model": model, "messages": messages, "stream": True, "options": options(request.sampling)}
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
