"""The OpenAI-compatible surface: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, plus the task-level /v1/execute.

Requests go through the same scheduler as the native routes. Parameters we do not
support are a 400 naming them, never silently ignored; errors use OpenAI's shape.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.api import limits
from msting.api.errors import InvalidRequest
from msting.api.events import Done, Failed, Token
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, SamplingParams
from msting.api.tools import FINISH_TOOL_CALLS, ToolCallDelta
from msting.http.body import read_json_object
from msting.http.calls import ClientGone, answer, route_headers, stream_headers
from msting.http.errors import Fields, error_body
from msting.http.native import native_events, router_of
from msting.http.parsing import TOOL_KEYS, chat_request, model_name, prompt_or_messages, request_meta, sampling
from msting.http.sse import EventStream
from msting.providers.base import ModelInfo, Stream
from msting.providers.router import Router

SAMPLING_KEYS = {"model", "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
                 "frequency_penalty", "n", "user", "stream", "stream_options", "keep_alive"}
CHAT_KEYS = SAMPLING_KEYS | {"messages", "max_completion_tokens"} | TOOL_KEYS
COMPLETION_KEYS = SAMPLING_KEYS | {"prompt"}
EMBEDDING_KEYS = {"model", "input", "encoding_format", "user", "keep_alive"}
# A dry run takes any generation body (a routing rule may match on its tools).
EXPLAIN_KEYS = CHAT_KEYS | COMPLETION_KEYS | EMBEDDING_KEYS | {"encoding_format"}
EXECUTE_KEYS = {"model", "prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "stream",
                "keep_alive"} | TOOL_KEYS


# ---- parsing ----------------------------------------------------------------------


def _openai_sampling(fields: Fields, *, chat: bool) -> SamplingParams:
    if fields.integer("n", 1, (1, limits.INT64[1])) != 1:
        raise fields.error("n", "only n=1 is supported")
    fields.string("user")  # accepted for compatibility: an end-user id for the caller's own records
    key = "max_completion_tokens" if chat and fields.body.get("max_completion_tokens") is not None else "max_tokens"
    return sampling(fields, max_tokens_key=key, penalties=True)


def _include_usage(fields: Fields, stream: bool) -> bool:
    options = fields.body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise fields.error("stream_options", "'stream_options' is only allowed with stream: true")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise fields.error("stream_options", "'stream_options' supports only {\"include_usage\": true|false}")
    return bool(options.get("include_usage"))


# ---- responses --------------------------------------------------------------------


def _usage(done: Done) -> dict:
    return done.usage.as_dict()


def _finish_reason(done: Done) -> str:
    return done.finish_reason if done.finish_reason in ("stop", "length", FINISH_TOOL_CALLS) else "stop"


def _message(done: Done) -> dict:
    """A reply as a chat completion's message: its text, and the tool calls it made
    (content is then null when there is no text, as OpenAI answers)."""
    if not done.tool_calls:
        return {"role": "assistant", "content": done.text}
    return {"role": "assistant", "content": done.text or None, "tool_calls": [c.as_dict() for c in done.tool_calls]}


PLACEHOLDER = "\x00"  # where a token's text goes in the chunk template


def _data(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


async def _openai_stream(stream: Stream, *, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunks. Nothing is yielded before the stream's first event, so a stream
    that fails before it is an HTTP error (and the model is the one that answered)."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False, calls: list[dict] | None = None) -> dict:
        if chat:
            delta: dict = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            if calls:
                delta = {"tool_calls": calls}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {"id": rid, "object": obj, "created": created, "model": stream.model, "system_fingerprint": None, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    async with stream:
        head = chat
        pre = post = ""
        async for event in stream:
            out = ""
            if head or not pre:  # the first event: the model is known now, and so is every token chunk but its text
                out = _data(chunk(None, None, first=True)) if chat else ""
                pre, post = _data(chunk(PLACEHOLDER, None)).split(json.dumps(PLACEHOLDER), 1)
                head = False
            if isinstance(event, Token):
                yield out + pre + json.dumps(event.text) + post
            elif isinstance(event, ToolCallDelta):
                yield out + _data(chunk(None, None, calls=[event.as_openai()]))
            elif isinstance(event, Done):  # the last events go out in one write
                tail = _data(chunk(None, _finish_reason(event)))
                if include_usage:
                    tail += _data({"id": rid, "object": obj, "created": created, "model": stream.model, "system_fingerprint": None,
                                   "choices": [], "usage": _usage(event)})
                yield out + tail + _data("[DONE]")
            elif isinstance(event, Failed):
                # The openai client raises an APIError on an event carrying "error": the
                # reply is never mistaken for a complete one.
                yield out + _data(error_body(event.error))


async def _answer(request: Request, router: Router, req: ChatRequest | CompletionRequest, *, stream: bool, chat: bool,
                  include_usage: bool) -> Response:
    if stream:  # unknown model, failed model, full queue: an HTTP error before any 200
        routed = router.stream(req)
        return EventStream(_openai_stream(routed, chat=chat, include_usage=include_usage), stream_headers(routed))
    try:
        done = await answer(request, router.generate(req))
    except ClientGone:
        return Response(status_code=499)
    if chat:
        choice = {"index": 0, "message": _message(done), "logprobs": None, "finish_reason": _finish_reason(done)}
    else:
        choice = {"index": 0, "text": done.text, "logprobs": None, "finish_reason": _finish_reason(done)}
    return JSONResponse({
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": done.model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": _usage(done),
    }, headers=route_headers(done))


# ---- routes -----------------------------------------------------------------------


def _chat_request(request: Request, fields: Fields) -> ChatRequest:
    return chat_request(fields, _openai_sampling(fields, chat=True), request_meta(request.scope, fields))


def _completion_request(request: Request, fields: Fields) -> CompletionRequest:
    prompt = fields.body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise fields.error("prompt", "'prompt' must be a string (or a list of exactly one string)")
    return CompletionRequest(prompt, model_name(fields), _openai_sampling(fields, chat=False), request_meta(request.scope, fields))


def _embedding_request(request: Request, fields: Fields) -> EmbeddingRequest:
    raw = fields.body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
        raise fields.error("input", "'input' must be a non-empty string or a non-empty list of non-empty strings (token arrays are not supported)")
    if len(inputs) > limits.MAX_EMBEDDING_INPUTS:
        raise fields.error("input", f"'input' may hold at most {limits.MAX_EMBEDDING_INPUTS} strings, got {len(inputs)}")
    fields.string("user")
    return EmbeddingRequest(tuple(inputs), model_name(fields), request_meta(request.scope, fields))


async def chat_completions(request: Request) -> Response:
    fields = Fields(await read_json_object(request), CHAT_KEYS)
    stream = fields.boolean("stream", False)
    req = _chat_request(request, fields)
    return await _answer(request, router_of(request), req, stream=stream, chat=True, include_usage=_include_usage(fields, stream))


async def completions(request: Request) -> Response:
    fields = Fields(await read_json_object(request), COMPLETION_KEYS)
    stream = fields.boolean("stream", False)
    req = _completion_request(request, fields)
    return await _answer(request, router_of(request), req, stream=stream, chat=False, include_usage=_include_usage(fields, stream))


async def embeddings(request: Request) -> Response:
    fields = Fields(await read_json_object(request), EMBEDDING_KEYS)
    encoding = fields.string("encoding_format", default="float")
    if encoding not in ("float", "base64"):
        raise fields.error("encoding_format", "'encoding_format' must be 'float' or 'base64'")
    req = _embedding_request(request, fields)
    try:
        result = await answer(request, router_of(request).embed(req))
    except ClientGone:
        return Response(status_code=499)
    data = []
    for i, vector in enumerate(result.vectors):
        value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encoding == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = result.usage.prompt_tokens
    return JSONResponse({"object": "list", "data": data, "model": result.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        headers=route_headers(result))


def model_object(info: ModelInfo) -> dict:
    """A model as /v1/models lists it; `id` is the name requests use."""
    full = f"{info.service}~{info.upstream or info.id}"
    aliases = [full] if full != info.id else []
    if info.is_default and "~" not in info.id:  # the default service's default model
        aliases.append("default")
    return {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.service,
        "service": info.service,
        "upstream": info.upstream or info.id,
        "state": info.state,
        "type": info.type,
        "context_length": info.context_length,
        "capabilities": info.capabilities.as_dict() if info.capabilities is not None else None,
        "details": info.details,
        "aliases": aliases,
    }


async def list_models(request: Request) -> Response:
    await router_of(request).refresh_details()  # the GGUF headers, in a thread
    return JSONResponse({"object": "list", "data": [model_object(info) for info in router_of(request).models()]})


def path_name(request: Request, key: str) -> str:
    """A model or service name from the path, held to the length a body may give."""
    name = request.path_params[key]
    if len(name) > limits.MAX_NAME_CHARS:
        raise InvalidRequest("invalid_parameter", f"the name in the path must be at most {limits.MAX_NAME_CHARS} characters, "
                             f"got {len(name)}", param=key)
    return name


async def get_model(request: Request) -> Response:
    await router_of(request).refresh_details()
    return JSONResponse(model_object(router_of(request).model(path_name(request, "model_id"))))


async def execute(request: Request) -> Response:
    """A task-level call: `prompt` or `messages`; SSE when streamed."""
    router = router_of(request)
    fields = Fields(await read_json_object(request), EXECUTE_KEYS)
    req = prompt_or_messages(fields, request_meta(request.scope, fields))
    if fields.boolean("stream", False):
        routed = router.stream(req)
        return EventStream(native_events(routed), stream_headers(routed))
    try:
        done = await answer(request, router.generate(req))
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse({"id": f"exec-{uuid.uuid4().hex[:24]}", "object": "execution", "model": done.model,
                         "output": done.text, "finish_reason": done.finish_reason,
                         **({"tool_calls": [c.as_dict() for c in done.tool_calls]} if done.tool_calls else {}),
                         "usage": _usage(done), "timings": done.timings}, headers=route_headers(done))


async def explain_route(request: Request) -> Response:
    """A dry run of the request policies: what routing and the response cache would do
    with a body of /v1/chat/completions (messages), /v1/completions or /v1/execute
    (prompt) or /v1/embeddings (input), and why; nothing is generated (a router model,
    when the profile has one, is asked for its decision). A chat body's `tools` are
    checked as the chat route checks them, as a routing rule may match on them."""
    explain = getattr(router_of(request), "explain", None)
    if explain is None:
        raise InvalidRequest("no_policies", "this server has no request policies to explain")
    fields = Fields(await read_json_object(request), EXPLAIN_KEYS)
    body = fields.body
    if sum(k in body for k in ("messages", "prompt", "input")) != 1:
        raise fields.error("messages", "give exactly one of 'messages' (chat), 'prompt' (a completion) or 'input' (embeddings)")
    if "input" in body:
        req: ChatRequest | CompletionRequest | EmbeddingRequest = _embedding_request(request, fields)
    elif "messages" in body:
        req = _chat_request(request, fields)
    else:
        req = _completion_request(request, fields)
    return JSONResponse(await explain(req))


routes = [
    Route("/v1/route/explain", explain_route, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/v1/execute", execute, methods=["POST"]),
]
