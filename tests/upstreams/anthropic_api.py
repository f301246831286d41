"""The Anthropic stand-in (Anthropic's Messages API and its streaming events): POST
/v1/messages, GET /v1/models[/{id}].

Every protocol route wants a credential, the ``x-api-key`` header (or ``Authorization: Bearer``,
which the official Python SDK 2.x sends): 401 authentication_error without one, or when
``--api-key`` is set and it differs; and the ``anthropic-version`` header (400
invalid_request_error without it).
A message request needs ``model``, ``max_tokens`` (an integer >= 1) and non-empty ``messages``
(400 otherwise; an unknown model is 404 not_found_error). Errors are
{"type": "error", "error": {"type", "message"}, "request_id"}.

A streamed reply is the documented event sequence: message_start (a Message with empty
content), content_block_start (an empty text block), ping, content_block_delta (text_delta)
per word, content_block_stop, message_delta (stop_reason end_turn | max_tokens |
stop_sequence, usage.output_tokens), message_stop. ``stop_sequences`` are honoured.

Tool use as the Messages API does it: ``tools`` ({name, description, input_schema}) and
``tool_choice`` ({"type": auto | any | tool (with name) | none}) are checked; given tools
(and a choice other than none), a request whose last message holds no tool_result is
answered with one tool_use block (text.tool_call), stop_reason ``tool_use``; streamed:
content_block_start with the tool_use block (empty input), input_json_delta pieces,
content_block_stop. A tool_result must answer a tool_use of the message just before it,
and a request holding tool_use or tool_result blocks must define tools (400 otherwise).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .app import State, json_body, take_stream_fault
from .faults import paced_stream
from .text import count_tokens, reply, tool_call

API_BASE = ""
WORK_PATHS = frozenset({"/v1/messages"})
CREATED_AT = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               504: "timeout_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
_ids = itertools.count(1)


def route_kind(method: str, path: str) -> str | None:
    if method == "POST" and path in WORK_PATHS:
        return "work"
    if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
        return "health"
    return None


def _request_id() -> str:
    return f"req_standin{next(_ids):06d}"


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    rid = _request_id()
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}, "request_id": rid},
                        status_code=status, headers={"request-id": rid, **(headers or {})})


def check_auth(headers: Any, state: State) -> Response | None:
    # Anthropic's API reference names the x-api-key header; the official Python SDK (2.x)
    # sends its api_key as "Authorization: Bearer <key>". Either is a credential here.
    key = headers.get("x-api-key")
    bearer = headers.get("authorization", "")
    if not key and bearer.startswith("Bearer "):
        key = bearer[len("Bearer "):]
    if not key:
        return error_response(401, "x-api-key header is required")
    if state.api_key is not None and key != state.api_key:
        return error_response(401, "invalid x-api-key")
    if not headers.get("anthropic-version"):
        return error_response(400, "anthropic-version: header is required")
    return None


def _text_of(content: Any) -> str:
    """A message's (or the system prompt's) content: a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content
                        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def _blocks(message: dict, kind: str) -> list[dict]:
    content = message.get("content")
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind] if isinstance(content, list) else []


def _result_text(block: dict) -> str:
    content = block.get("content")
    return content if isinstance(content, str) else _text_of(content)


def _check_tools(body: dict, msgs: list[dict]) -> str | None:
    """What the API would refuse in the request's tools and tool blocks (None: nothing)."""
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict) for t in tools)):
        return "tools: each tool needs a name and an input_schema object"
    names = [t["name"] for t in tools or []]
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return f"tool_choice: tool {choice.get('name')!r} is not in tools"
    previous: dict = {}
    for i, m in enumerate(msgs):
        uses, results = _blocks(m, "tool_use"), _blocks(m, "tool_result")
        if (uses or results) and not names:
            return "Requests which include `tool_use` or `tool_result` blocks must define tools."
        if any(not isinstance(u.get("input"), dict) for u in uses):
            return f"messages.{i}: a tool_use block's input must be an object"
        asked = {u.get("id") for u in _blocks(previous, "tool_use")}
        for r in results:
            if r.get("tool_use_id") not in asked:
                return (f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {r.get('tool_use_id')}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
        previous = m
    return None


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _model_info(name: str) -> dict:
    return {"type": "model", "id": name, "display_name": name, "created_at": CREATED_AT, "lifecycle": "active"}


def _tool_use_reply(request: Request, state: State, body: dict, mid: str, model: str, call) -> Response:
    tid = "toolu_" + hashlib.sha256(f"{call.name}:{call.arguments}".encode()).hexdigest()[:24]
    usage = {"input_tokens": call.prompt_tokens, "output_tokens": call.completion_tokens,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    headers = {"request-id": _request_id()}
    if not body.get("stream"):
        return JSONResponse({"id": mid, "type": "message", "role": "assistant", "model": model,
                             "content": [{"type": "tool_use", "id": tid, "name": call.name, "input": json.loads(call.arguments)}],
                             "stop_reason": "tool_use", "stop_sequence": None, "usage": usage}, headers=headers)
    start = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    preamble = [_sse("message_start", {"type": "message_start", "message": start}),
                _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "tool_use", "id": tid, "name": call.name, "input": {}}}),
                _sse("ping", {"type": "ping"})]
    deltas = [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "input_json_delta", "partial_json": p}}) for p in call.pieces]
    epilogue = [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                       "usage": {"output_tokens": call.completion_tokens}}),
                _sse("message_stop", {"type": "message_stop"})]
    fault, connection = take_stream_fault(request)
    return StreamingResponse(paced_stream(preamble, deltas, epilogue, fault=fault, token_delay=state.token_delay,
                                          connection=connection),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})


def routes(state: State) -> list[Route]:
    async def list_models(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return error_response(400, "limit: Input should be between 1 and 1000")
        names = list(state.models)
        if q.get("after_id") in names:
            names = names[names.index(q["after_id"]) + 1:]
        elif q.get("before_id") in names:
            names = names[: names.index(q["before_id"])][-limit:]
        page = names[:limit]
        return JSONResponse({"data": [_model_info(m) for m in page], "has_more": len(names) > len(page),
                             "first_id": page[0] if page else None, "last_id": page[-1] if page else None})

    async def get_model(request: Request) -> Response:
        name = request.path_params["name"]
        if not state.has_model(name):
            return error_response(404, f"model: {name}")
        return JSONResponse(_model_info(name))

    async def messages(request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            return error_response(400, "The request body is not valid JSON.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(400, "model: Field required")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            return error_response(400, "max_tokens: Field required")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            return error_response(400, "max_tokens: Input should be an integer greater than or equal to 1")
        msgs = body.get("messages")
        if msgs is None:
            return error_response(400, "messages: Field required")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            return error_response(400, "messages: at least one message is required")
        if any(m.get("role") not in ("user", "assistant") for m in msgs):
            return error_response(400, "messages: roles must be 'user' or 'assistant'")
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            return error_response(400, "stop_sequences: Input should be a valid list of strings")
        if not state.has_model(model):
            return error_response(404, f"model: {model}")
        problem = _check_tools(body, msgs)
        if problem:
            return error_response(400, problem)
        results = _blocks(msgs[-1], "tool_result")
        texts = [_text_of(body.get("system")), *(_text_of(m.get("content")) for m in msgs), *map(_result_text, results)]
        users = [_text_of(m.get("content")) for m in msgs if m.get("role") == "user"]
        mid = f"msg_standin{next(_ids):06d}"
        choice = body.get("tool_choice") or {}
        if not results and choice.get("type") != "none":
            tools = [(t["name"], t["input_schema"]) for t in body.get("tools") or []]
            call = tool_call(tools, choice.get("name"), users[-1] if users else texts[-1], count_tokens(*texts))
            if call is not None:
                return _tool_use_reply(request, state, body, mid, model, call)
        source = " ".join(map(_result_text, results)) if results else users[-1] if users else texts[-1]
        r = reply(source, prompt_tokens=count_tokens(*texts), max_words=max_tokens,
                  stop=stops, natural=state.reply_words)
        stop_reason = "stop_sequence" if r.stop_sequence is not None else STOP_REASONS[r.finish]
        usage = {"input_tokens": r.prompt_tokens, "output_tokens": r.completion_tokens,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        headers = {"request-id": _request_id()}
        if not body.get("stream"):
            if state.token_delay:
                await asyncio.sleep(state.token_delay * r.completion_tokens)
            return JSONResponse({"id": mid, "type": "message", "role": "assistant", "model": model,
                                 "content": [{"type": "text", "text": r.text}] if r.text else [],
                                 "stop_reason": stop_reason, "stop_sequence": r.stop_sequence, "usage": usage},
                                headers=headers)
        start = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
        preamble = [_sse("message_start", {"type": "message_start", "message": start}),
                    _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}}),
                    _sse("ping", {"type": "ping"})]
        deltas = [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": c}}) for c in r.chunks]
        epilogue = [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    _sse("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": stop_reason, "stop_sequence": r.stop_sequence},
                                           "usage": {"output_tokens": r.completion_tokens}}),
                    _sse("message_stop", {"type": "message_stop"})]
        fault, connection = take_stream_fault(request)
        return StreamingResponse(paced_stream(preamble, deltas, epilogue, fault=fault, token_delay=state.token_delay,
                                              connection=connection),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/v1/messages", messages, methods=["POST"]),
    ]
