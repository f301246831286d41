"""The OpenAI-compatible stand-in: GET /v1/models[/{id}], POST /v1/chat/completions,
/v1/completions, /v1/embeddings (OpenAI's API reference: chat completions and their stream of
``chat.completion.chunk`` objects ending in ``data: [DONE]``, ``stream_options.include_usage``,
legacy completions, embeddings in float or base64 encoding; errors as
{"error": {"message", "type", "param", "code"}}).

Tool calling as OpenAI's API does it: given ``tools`` (and ``tool_choice`` not "none"), a
chat whose last message is not a ``tool`` result is answered with one call (text.tool_call)
and finish_reason ``tool_calls``; streamed, the first chunk carries the call's index, id,
type and name with empty arguments, the next ones pieces of its arguments. A ``tool``
message must answer a call of an earlier assistant message (400 otherwise), as OpenAI checks.

With ``--api-key`` every protocol route wants ``Authorization: Bearer <key>`` (401 otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import struct
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .app import State, json_body, take_stream_fault
from .faults import paced_stream
from .text import as_stop_list, count_tokens, embedding, reply, tool_call

API_BASE = "/v1"
WORK_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
CREATED = int(time.time())
_ids = itertools.count(1)


def route_kind(method: str, path: str) -> str | None:
    if method == "POST" and path in WORK_PATHS:
        return "work"
    if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
        return "health"
    return None


def error_response(status: int, message: str, headers: dict | None = None, *, type_: str | None = None,
                   code: str | None = None, param: str | None = None) -> Response:
    if type_ is None:
        type_ = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    if code is None and status == 429:
        code = "rate_limit_exceeded"
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def check_auth(headers: Any, state: State) -> Response | None:
    if state.api_key is None or headers.get("authorization") == f"Bearer {state.api_key}":
        return None
    if "authorization" not in headers:
        message = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth."
    else:
        message = "Incorrect API key provided."
    return error_response(401, message, code="invalid_api_key")


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "standin"}


def _text_of(content: Any) -> str:
    """A chat message's content: a string, or a list of parts whose text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _sse(payload: Any) -> bytes:
    return b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n"


def _limit(body: dict, *names: str) -> tuple[int | None, Response | None]:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None, error_response(400, f"Invalid '{name}': expected a non-negative integer.", param=name,
                                        code="invalid_value")
        return value, None
    return None, None


def _check_model(state: State, body: Any) -> Response | None:
    if not isinstance(body, dict):
        return error_response(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error_response(400, "you must provide a model parameter", param="model")
    if not state.has_model(model):
        return error_response(404, f"The model `{model}` does not exist or you do not have access to it.",
                              code="model_not_found", param="model")
    return None


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _declared(tools: Any) -> list[tuple[str, dict | None]]:
    return [(t["function"]["name"], t["function"].get("parameters")) for t in tools or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]


def _check_tool_messages(messages: list[dict]) -> Response | None:
    made: set[str] = set()
    for m in messages:
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                made.add(call["id"])
        if m.get("role") == "tool" and m.get("tool_call_id") not in made:
            return error_response(400, "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                                  "message with 'tool_calls'.", param="messages", code="invalid_parameter")
    return None


def call_id(name: str, arguments: str) -> str:
    return "call_" + hashlib.sha256(f"{name}:{arguments}".encode()).hexdigest()[:24]


def _tool_call_reply(request: Request, state: State, body: dict, cid: str, model: str, call: Any) -> Response:
    tid = call_id(call.name, call.arguments)
    usage = _usage(call.prompt_tokens, call.completion_tokens)
    if not body.get("stream"):
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model, "system_fingerprint": "standin",
            "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                             {"id": tid, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]}}],
            "usage": usage,
        })
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    created = int(time.time())

    def chunk(delta: dict, finish: str | None, **extra: Any) -> bytes:
        payload: dict = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "system_fingerprint": "standin",
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        if include_usage and "usage" not in extra:
            payload["usage"] = None
        return _sse(payload)

    head = chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": tid, "type": "function", "function": {"name": call.name, "arguments": ""}}]}, None)
    pieces = [head] + [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, None) for p in call.pieces]
    epilogue = [chunk({}, "tool_calls")]
    if include_usage:
        epilogue.append(_sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                              "system_fingerprint": "standin", "choices": [], "usage": usage}))
    epilogue.append(_sse(b"[DONE]"))
    fault, connection = take_stream_fault(request)
    return StreamingResponse(paced_stream([], pieces, epilogue, fault=fault, token_delay=state.token_delay, connection=connection),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def routes(state: State) -> list[Route]:
    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(m) for m in state.models]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["name"]
        if not state.has_model(name):
            return error_response(404, f"The model '{name}' does not exist", code="model_not_found", param="model")
        return JSONResponse(_model_card(name))

    async def chat(request: Request) -> Response:
        body = await json_body(request)
        bad = _check_model(state, body)
        if bad:
            return bad
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error_response(400, "Invalid 'messages': expected a non-empty array of message objects.", param="messages")
        limit, bad = _limit(body, "max_completion_tokens", "max_tokens")
        if bad:
            return bad
        texts = [_text_of(m.get("content")) for m in messages]
        users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        bad = _check_tool_messages(messages)
        if bad:
            return bad
        cid, model = f"chatcmpl-standin{next(_ids)}", body["model"]
        if messages[-1].get("role") != "tool" and body.get("tool_choice") != "none":
            choice = body.get("tool_choice")
            named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
            call = tool_call(_declared(body.get("tools")), named, users[-1] if users else texts[-1], count_tokens(*texts))
            if call is not None:
                return _tool_call_reply(request, state, body, cid, model, call)
        source = texts[-1] if messages[-1].get("role") == "tool" else users[-1] if users else texts[-1]
        r = reply(source, prompt_tokens=count_tokens(*texts), max_words=limit,
                  stop=as_stop_list(body.get("stop")), natural=state.reply_words)
        if not body.get("stream"):
            if state.token_delay:
                await asyncio.sleep(state.token_delay * r.completion_tokens)
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "system_fingerprint": "standin",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text, "refusal": None},
                             "logprobs": None, "finish_reason": r.finish}],
                "usage": _usage(r.prompt_tokens, r.completion_tokens),
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        def chunk(delta: dict, finish: str | None) -> bytes:
            payload: dict = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                             "system_fingerprint": "standin",
                             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                payload["usage"] = None
            return _sse(payload)

        # the first content chunk carries the role, as OpenAI's first chunk does
        pieces = [chunk({"role": "assistant", "content": c} if i == 0 else {"content": c}, None) for i, c in enumerate(r.chunks)]
        epilogue = [chunk({} if r.chunks else {"role": "assistant", "content": ""}, r.finish)]
        if include_usage:
            epilogue.append(_sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                  "system_fingerprint": "standin", "choices": [],
                                  "usage": _usage(r.prompt_tokens, r.completion_tokens)}))
        epilogue.append(_sse(b"[DONE]"))
        fault, connection = take_stream_fault(request)
        return StreamingResponse(paced_stream([], pieces, epilogue, fault=fault, token_delay=state.token_delay,
                                              connection=connection),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def completions(request: Request) -> Response:
        body = await json_body(request)
        bad = _check_model(state, body)
        if bad:
            return bad
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [" ".join(f"t{p}" for p in prompt)]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
            prompts = [" ".join(f"t{t}" for t in p) for p in prompt]
        else:
            return error_response(400, "Invalid 'prompt': expected a string or an array of strings or tokens.", param="prompt")
        limit, bad = _limit(body, "max_tokens")
        if bad:
            return bad
        stop = as_stop_list(body.get("stop"))
        replies = [reply(p, max_words=limit, stop=stop, natural=state.reply_words) for p in prompts]
        usage = _usage(sum(r.prompt_tokens for r in replies), sum(r.completion_tokens for r in replies))
        cid, model, created = f"cmpl-standin{next(_ids)}", body["model"], int(time.time())
        if not body.get("stream"):
            if state.token_delay:
                await asyncio.sleep(state.token_delay * usage["completion_tokens"])
            return JSONResponse({
                "id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": "standin",
                "choices": [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish} for i, r in enumerate(replies)],
                "usage": usage,
            })
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(index: int, text: str, finish: str | None) -> bytes:
            payload: dict = {"id": cid, "object": "text_completion", "created": created, "model": model,
                             "system_fingerprint": "standin",
                             "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                payload["usage"] = None
            return _sse(payload)

        pieces = [chunk(i, c, None) for i, r in enumerate(replies) for c in r.chunks]
        epilogue = [chunk(i, "", r.finish) for i, r in enumerate(replies)]
        if include_usage:
            epilogue.append(_sse({"id": cid, "object": "text_completion", "created": created, "model": model,
                                  "system_fingerprint": "standin", "choices": [], "usage": usage}))
        epilogue.append(_sse(b"[DONE]"))
        fault, connection = take_stream_fault(request)
        return StreamingResponse(paced_stream([], pieces, epilogue, fault=fault, token_delay=state.token_delay,
                                              connection=connection),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def embeddings(request: Request) -> Response:
        body = await json_body(request)
        bad = _check_model(state, body)
        if bad:
            return bad
        given = body.get("input")
        if isinstance(given, str):
            inputs = [given]
        elif isinstance(given, list) and given and all(isinstance(x, str) for x in given):
            inputs = list(given)
        elif isinstance(given, list) and given and all(isinstance(x, int) for x in given):
            inputs = [" ".join(f"t{x}" for x in given)]
        elif isinstance(given, list) and given and all(isinstance(x, list) for x in given):
            inputs = [" ".join(f"t{t}" for t in x) for x in given]
        else:
            return error_response(400, "Invalid 'input': expected a non-empty string or array.", param="input")
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            return error_response(400, "Invalid 'dimensions': expected a positive integer.", param="dimensions")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            return error_response(400, "Invalid 'encoding_format': expected 'float' or 'base64'.", param="encoding_format")
        data = []
        for i, text in enumerate(inputs):
            vector: Any = embedding(text, dims or 8)
            if fmt == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = count_tokens(*inputs)
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
