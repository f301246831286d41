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

from msting.daemon.requests import GenerationRequest
from msting.daemon.service import ModelRuntime, Service
from msting.api import limits
from msting.http.body import read_json_object
from msting.http.errors import Fields, shown
from msting.http.native import ClientGone, iter_events, model_name, run_to_completion, sampling_params, stream_events
from msting.http.sse import EventStream

SAMPLING_KEYS = {"model", "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
                 "frequency_penalty", "n", "user", "stream", "stream_options"}
CHAT_KEYS = SAMPLING_KEYS | {"messages", "max_completion_tokens"}
COMPLETION_KEYS = SAMPLING_KEYS | {"prompt"}
EMBEDDING_KEYS = {"model", "input", "encoding_format", "user"}
EXECUTE_KEYS = {"model", "prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "stream"}
ROLES = {"system", "developer", "user", "assistant"}


def _service(request: Request) -> Service:
    return request.app.state.service


# ---- parsing ----------------------------------------------------------------------


def parse_messages(fields: Fields) -> list[dict]:
    raw = fields.body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise fields.error("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise fields.error("messages", f"{where} must be an object with 'role' and 'content'")
        extra = set(msg) - {"role", "content", "name"}
        if extra:
            raise fields.error("messages", f"{where} has unsupported field(s): {', '.join(sorted(extra))} (tools are not supported)")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise fields.error("messages", f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {shown(role)}")
        out.append({"role": "system" if role == "developer" else role, "content": _content(fields, where, msg.get("content"))})
    return out


def _content(fields: Fields, where: str, content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise fields.error("messages", f"{where}.content: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise fields.error("messages", f"{where}.content must be a string or a list of text parts")


def _openai_sampling(fields: Fields, service: Service, *, chat: bool) -> dict:
    if fields.integer("n", 1, (1, limits.INT64[1])) != 1:
        raise fields.error("n", "only n=1 is supported")
    fields.string("user")  # accepted for compatibility: an end-user id for the caller's own records
    key = "max_completion_tokens" if chat and fields.body.get("max_completion_tokens") is not None else "max_tokens"
    params = sampling_params(fields, max_tokens_key=key)
    params["presence_penalty"] = fields.number("presence_penalty", 0.0, limits.PRESENCE_PENALTY)
    params["frequency_penalty"] = fields.number("frequency_penalty", 0.0, limits.FREQUENCY_PENALTY)
    return params


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


def _usage(payload: dict) -> dict:
    u = payload.get("usage") or {}
    prompt, completion = int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(payload: dict) -> str:
    reason = payload.get("finish_reason")
    return reason if reason in ("stop", "length") else "stop"


def _data(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


async def _openai_stream(service: Service, req: GenerationRequest, *, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> dict:
        if chat:
            delta: dict = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {"id": rid, "object": obj, "created": created, "model": req.model, "system_fingerprint": None, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return body

    if chat:
        yield _data(chunk(None, None, first=True))
    async for kind, payload in iter_events(service, req):
        if kind == "token":
            yield _data(chunk(payload, None))
        elif kind == "done":  # the last events go out in one write
            tail = _data(chunk(None, _finish_reason(payload)))
            if include_usage:
                tail += _data({"id": rid, "object": obj, "created": created, "model": req.model, "system_fingerprint": None,
                               "choices": [], "usage": _usage(payload)})
            yield tail + _data("[DONE]")
        else:
            # The openai client raises an APIError on an event carrying "error": the
            # reply is never mistaken for a complete one.
            yield _data(payload.body())


async def _answer(request: Request, service: Service, req: GenerationRequest, *, chat: bool, include_usage: bool) -> Response:
    service.submit(req)  # unknown model, failed model, full queue: an HTTP error before any 200
    if req.stream:
        return EventStream(_openai_stream(service, req, chat=chat, include_usage=include_usage))
    try:
        payload = await run_to_completion(service, req, request, submitted=True)
    except ClientGone:
        return Response(status_code=499)
    text = payload.get("text", "")
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": _finish_reason(payload)}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish_reason(payload)}
    return JSONResponse({
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": _usage(payload),
    })


# ---- routes -----------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    service = _service(request)
    fields = Fields(await read_json_object(request), CHAT_KEYS)
    stream = fields.boolean("stream", False)
    params = {"messages": parse_messages(fields), **_openai_sampling(fields, service, chat=True)}
    req = GenerationRequest(model_name(fields), params, stream=stream)
    return await _answer(request, service, req, chat=True, include_usage=_include_usage(fields, stream))


async def completions(request: Request) -> Response:
    service = _service(request)
    fields = Fields(await read_json_object(request), COMPLETION_KEYS)
    prompt = fields.body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise fields.error("prompt", "'prompt' must be a string (or a list of exactly one string)")
    stream = fields.boolean("stream", False)
    params = {"prompt": prompt, **_openai_sampling(fields, service, chat=False)}
    req = GenerationRequest(model_name(fields), params, stream=stream)
    return await _answer(request, service, req, chat=False, include_usage=_include_usage(fields, stream))


async def embeddings(request: Request) -> Response:
    service = _service(request)
    fields = Fields(await read_json_object(request), EMBEDDING_KEYS)
    raw = fields.body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
        raise fields.error("input", "'input' must be a non-empty string or a non-empty list of non-empty strings (token arrays are not supported)")
    if len(inputs) > limits.MAX_EMBEDDING_INPUTS:
        raise fields.error("input", f"'input' may hold at most {limits.MAX_EMBEDDING_INPUTS} strings, got {len(inputs)}")
    encoding = fields.string("encoding_format", default="float")
    if encoding not in ("float", "base64"):
        raise fields.error("encoding_format", "'encoding_format' must be 'float' or 'base64'")
    fields.string("user")
    req = GenerationRequest(model_name(fields), {"input": inputs}, kind="embed")
    try:
        payload = await run_to_completion(service, req, request)
    except ClientGone:
        return Response(status_code=499)
    data = []
    for i, vector in enumerate(payload.get("embeddings") or []):
        value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encoding == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = payload.get("usage") or {}
    tokens = int(usage.get("prompt_tokens", 0))
    return JSONResponse({"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _model_object(service: Service, rt: ModelRuntime) -> dict:
    return {
        "id": rt.name,
        "object": "model",
        "created": int(service.started_at),
        "owned_by": "msting",
        "state": rt.state,
        "type": rt.spec.type,
        "context_length": rt.spec.n_ctx,
        "aliases": [f"local~{rt.name}"] + (["default"] if rt.name == service.default_model else []),
    }


async def list_models(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"object": "list", "data": [_model_object(service, rt) for rt in service.models.values()]})


async def get_model(request: Request) -> Response:
    service = _service(request)
    return JSONResponse(_model_object(service, service.resolve(request.path_params["model_id"])))


async def execute(request: Request) -> Response:
    """A task-level call: `prompt` or `messages`, through the same scheduler; SSE when streamed."""
    service = _service(request)
    fields = Fields(await read_json_object(request), EXECUTE_KEYS)
    if ("prompt" in fields.body) == ("messages" in fields.body):
        raise fields.error("prompt", "give exactly one of 'prompt' or 'messages'")
    task = {"prompt": fields.string("prompt", required=True)} if "prompt" in fields.body else {"messages": parse_messages(fields)}
    req = GenerationRequest(model_name(fields), {**task, **sampling_params(fields)}, stream=fields.boolean("stream", False))
    service.submit(req)
    if req.stream:
        return EventStream(stream_events(service, req))
    try:
        payload = await run_to_completion(service, req, request, submitted=True)
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse({"id": f"exec-{uuid.uuid4().hex[:24]}", "object": "execution", "model": req.model,
                         "output": payload.get("text", ""), "finish_reason": payload.get("finish_reason"),
                         "usage": _usage(payload), "timings": payload.get("timings", {})})


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
    Route("/v1/execute", execute, methods=["POST"]),
]
