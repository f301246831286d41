"""Bodies into typed requests: the fields every generation route shares.

Each value is range-checked against msting.api.limits (through `Fields`); what a body
leaves out keeps SamplingParams' defaults, and `max_tokens` and `temperature` left out
take the model's own when it is queued.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from msting.api import limits
from msting.api.errors import InvalidRequest
from msting.api.requests import NO_HEADERS, CacheControl, ChatRequest, CompletionRequest, Message, RequestMeta, SamplingParams
from msting.api.tools import TOOL_CHOICES, Tool, ToolCall, ToolChoice
from msting.http.errors import Fields, shown
from msting.http.security import CLIENT_SCOPE_KEY

ROLES = {"system", "developer", "user", "assistant", "tool"}
MESSAGE_KEYS = {"role", "content", "name"}
ROLE_KEYS = {"assistant": MESSAGE_KEYS | {"tool_calls", "refusal"}, "tool": MESSAGE_KEYS | {"tool_call_id"}}
TOOL_KEYS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})  # the body fields of tool calling
TOOL_NAME = re.compile(limits.TOOL_NAME_PATTERN)
CLIENT_HEADER = "x-msting-client"
CLIENT_LABEL = re.compile(r"[A-Za-z0-9._@:-]{1,64}")
MAX_META_HEADERS = 16  # x-msting-* and user-agent kept for the routing rules
MAX_META_HEADER_CHARS = 256
NO_CACHE_CONTROL = CacheControl()


def request_meta(scope: dict[str, Any], fields: Fields | None = None) -> RequestMeta:
    """Who sent the request, from its ASGI scope (the headers; the API key's id the
    security middleware put there) and body (the OpenAI `user` field, `tools`), and
    the body's `keep_alive` (seconds or a duration; see RequestMeta)."""
    headers: dict[str, str] = {}
    cache = NO_CACHE_CONTROL
    for raw_name, raw_value in scope.get("headers", ()):
        if raw_name == b"cache-control":
            directives = {d.strip().partition("=")[0] for d in raw_value.decode("latin-1").lower().split(",")}
            cache = CacheControl(no_cache=cache.no_cache or "no-cache" in directives, no_store=cache.no_store or "no-store" in directives)
        elif raw_name.startswith(b"x-msting-") or raw_name == b"user-agent":
            if len(headers) < MAX_META_HEADERS:
                headers[raw_name.decode("latin-1")] = raw_value.decode("latin-1")[:MAX_META_HEADER_CHARS]
    label = headers.get(CLIENT_HEADER)
    if label is not None and not CLIENT_LABEL.fullmatch(label):
        raise InvalidRequest("invalid_header", f"the {CLIENT_HEADER} header must be 1 to 64 letters, digits or ._@:- characters, "
                             f"got {shown(label)}", param=CLIENT_HEADER)
    key = scope.get(CLIENT_SCOPE_KEY)
    client = f"{key}/{label}" if key and label else key or label
    user = tools = keep_alive = None
    if fields is not None:
        user = fields.string("user", max_chars=limits.MAX_NAME_CHARS) if "user" in fields.body else None
        tools = fields.body.get("tools")
        keep_alive = fields.duration("keep_alive", max_sec=limits.MAX_KEEP_ALIVE_SEC, max_chars=limits.MAX_DURATION_CHARS)
    return RequestMeta(client=client, user=user, headers=headers or NO_HEADERS, cache_control=cache, tools_requested=bool(tools),
                       keep_alive=keep_alive)


def model_name(fields: Fields) -> str | None:
    return fields.string("model", max_chars=limits.MAX_NAME_CHARS)


def sampling(fields: Fields, *, max_tokens_key: str = "max_tokens", penalties: bool = False) -> SamplingParams:
    """A seed of -1 means a random one, as null does. `penalties`: the OpenAI routes'
    presence_penalty and frequency_penalty."""
    seed = fields.integer("seed", None, limits.SEED)
    extra = {}
    if penalties:
        extra = {"presence_penalty": fields.number("presence_penalty", limits.DEFAULT_PRESENCE_PENALTY, limits.PRESENCE_PENALTY),
                 "frequency_penalty": fields.number("frequency_penalty", limits.DEFAULT_FREQUENCY_PENALTY, limits.FREQUENCY_PENALTY)}
    return SamplingParams(
        max_tokens=fields.integer(max_tokens_key, None, limits.MAX_TOKENS),
        temperature=fields.number("temperature", None, limits.TEMPERATURE),
        top_p=fields.number("top_p", limits.DEFAULT_TOP_P, limits.TOP_P),
        stop=tuple(fields.string_list("stop", max_items=limits.MAX_STOP_SEQUENCES)),
        seed=None if seed == limits.RANDOM_SEED else seed,
        **extra,
    )


def messages(fields: Fields) -> tuple[Message, ...]:
    """The chat's messages. An assistant message may carry `tool_calls` (its content
    then may be null); a `tool` message answers one of them, by `tool_call_id`."""
    raw = fields.body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise fields.error("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    calls: set[str] = set()  # the tool call ids made so far
    answered: set[str] = set()
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise fields.error("messages", f"{where} must be an object with 'role' and 'content'")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise fields.error("messages", f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {shown(role)}")
        allowed = ROLE_KEYS.get(role, MESSAGE_KEYS)
        extra = set(msg) - allowed
        if extra:
            raise fields.error("messages", f"{where} (role {role}) has unsupported field(s): {', '.join(sorted(extra))}; "
                               f"supported: {', '.join(sorted(allowed))}")
        if msg.get("refusal") is not None:
            raise fields.error("messages", f"{where}.refusal must be null (a refusal cannot be sent back)")
        if role == "assistant" and msg.get("tool_calls") is not None:
            made = _tool_calls(fields, where, msg["tool_calls"], calls)
            content = "" if msg.get("content") is None else _content(fields, where, msg["content"])
            out.append(Message("assistant", content, tool_calls=made))
            continue
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise fields.error("messages", f"{where}.tool_call_id must be the id of a tool call an earlier assistant "
                                   f"message made, got {shown(call_id)}")
            if call_id not in calls:
                raise fields.error("messages", f"{where}.tool_call_id {shown(call_id)} matches no tool call of an earlier "
                                   "assistant message" + (f" (the calls made: {', '.join(sorted(calls))})" if calls else ""))
            if call_id in answered:
                raise fields.error("messages", f"{where}: tool call {shown(call_id)} has been answered already")
            answered.add(call_id)
            out.append(Message("tool", _content(fields, where, msg.get("content")), tool_call_id=call_id))
            continue
        out.append(Message("system" if role == "developer" else role, _content(fields, where, msg.get("content"))))
    return tuple(out)


def _tool_calls(fields: Fields, where: str, raw: object, seen: set[str]) -> tuple[ToolCall, ...]:
    """An assistant message's tool_calls: [{id, type: function, function: {name, arguments}}]."""
    if not isinstance(raw, list) or not raw:
        raise fields.error("messages", f"{where}.tool_calls must be a non-empty list of tool calls")
    out = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict) or set(call) - {"id", "type", "function"}:
            raise fields.error("messages", f"{at} must be an object with id, type and function (only those)")
        call_id, function = call.get("id"), call.get("function")
        if not isinstance(call_id, str) or not call_id or len(call_id) > limits.MAX_NAME_CHARS:
            raise fields.error("messages", f"{at}.id must be a string of 1 to {limits.MAX_NAME_CHARS} characters, got {shown(call_id)}")
        if call_id in seen:
            raise fields.error("messages", f"{at}.id {shown(call_id)} is the id of an earlier tool call: ids must be unique")
        if call.get("type", "function") != "function":
            raise fields.error("messages", f"{at}.type must be 'function', got {shown(call.get('type'))}")
        if not isinstance(function, dict) or set(function) - {"name", "arguments"}:
            raise fields.error("messages", f"{at}.function must be an object with name and arguments (only those)")
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise fields.error("messages", f"{at}.function.name must be 1 to 64 letters, digits, _ or -, got {shown(name)}")
        if not isinstance(arguments, str):
            raise fields.error("messages", f"{at}.function.arguments must be a string (the arguments as JSON text), "
                               f"got {shown(arguments)}")
        seen.add(call_id)
        out.append(ToolCall(call_id, name, arguments))
    return tuple(out)


def tools(fields: Fields) -> tuple[tuple[Tool, ...], ToolChoice | None, bool | None]:
    """The body's `tools`, `tool_choice` and `parallel_tool_calls` (OpenAI's shapes)."""
    body = fields.body
    raw = body.get("tools")
    declared: list[Tool] = []
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise fields.error("tools", "'tools' must be a non-empty list of {\"type\": \"function\", \"function\": {...}} "
                               "objects (leave it out for none)")
        if len(raw) > limits.MAX_TOOLS:
            raise fields.error("tools", f"'tools' may hold at most {limits.MAX_TOOLS} tools, got {len(raw)}")
        for i, entry in enumerate(raw):
            declared.append(_tool(fields, f"tools[{i}]", entry, {t.name for t in declared}))
    choice = _tool_choice(fields, {t.name for t in declared})
    parallel = None
    if body.get("parallel_tool_calls") is not None:
        parallel = fields.boolean("parallel_tool_calls", True)
        if not declared:
            raise fields.error("parallel_tool_calls", "'parallel_tool_calls' is only allowed when 'tools' are given")
    return tuple(declared), choice, parallel


def _tool(fields: Fields, where: str, entry: object, names: set[str]) -> Tool:
    if not isinstance(entry, dict) or set(entry) - {"type", "function"}:
        raise fields.error("tools", f"{where} must be an object with type and function (only those), got {shown(entry)}")
    if entry.get("type") != "function":
        raise fields.error("tools", f"{where}.type must be 'function' (the only tool type), got {shown(entry.get('type'))}")
    function = entry.get("function")
    if not isinstance(function, dict):
        raise fields.error("tools", f"{where}.function must be an object with a name, got {shown(function)}")
    extra = set(function) - {"name", "description", "parameters", "strict"}
    if extra:
        raise fields.error("tools", f"{where}.function has unsupported field(s): {', '.join(sorted(extra))}; "
                           "supported: description, name, parameters, strict")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise fields.error("tools", f"{where}.function.name must be 1 to 64 letters, digits, _ or -, got {shown(name)}")
    if name in names:
        raise fields.error("tools", f"{where}.function.name {shown(name)} is declared twice: tool names must be unique")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise fields.error("tools", f"{where}.function.description must be a string, got {shown(description)}")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise fields.error("tools", f"{where}.function.parameters must be a JSON schema object, got {shown(parameters)}")
    if isinstance(parameters, dict) and "type" in parameters and parameters["type"] != "object":
        raise fields.error("tools", f"{where}.function.parameters must describe an object (type \"object\"), "
                           f"got type {shown(parameters['type'])}")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise fields.error("tools", f"{where}.function.strict must be true or false, got {shown(strict)}")
    text = None if parameters is None else json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Tool(name, description, text, strict)


def _tool_choice(fields: Fields, names: set[str]) -> ToolChoice | None:
    raw = fields.body.get("tool_choice")
    if raw is None:
        return None
    if not names:
        raise fields.error("tool_choice", "'tool_choice' is only allowed when 'tools' are given")
    if isinstance(raw, str):
        if raw not in TOOL_CHOICES:
            raise fields.error("tool_choice", f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)} or "
                               f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {shown(raw)}")
        return ToolChoice(raw)
    function = raw.get("function") if isinstance(raw, dict) else None
    if (not isinstance(raw, dict) or set(raw) != {"type", "function"} or raw.get("type") != "function"
            or not isinstance(function, dict) or set(function) != {"name"}):
        raise fields.error("tool_choice", "'tool_choice' must be one of none, auto, required or "
                           f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {shown(raw)}")
    name = function["name"]
    if name not in names:
        raise fields.error("tool_choice", f"'tool_choice' names the tool {shown(name)}, which 'tools' does not declare "
                           f"(declared: {', '.join(sorted(names))})")
    return ToolChoice("function", name)


def chat_request(fields: Fields, sampling_params: SamplingParams, meta: RequestMeta) -> ChatRequest:
    """A chat body's request: its messages, model and tools, with these sampling params."""
    chat = messages(fields)
    declared, choice, parallel = tools(fields)
    request = ChatRequest(chat, model_name(fields), sampling_params, meta, declared, choice, parallel)
    if request.uses_tools and not meta.tools_requested:  # tool calls or results in the history
        request = replace(request, meta=replace(meta, tools_requested=True))
    return request


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


def prompt_or_messages(fields: Fields, meta: RequestMeta) -> CompletionRequest | ChatRequest:
    """A task-level body (/v1/execute, the WebSocket): exactly one of prompt or messages
    (tools only with messages)."""
    body = fields.body
    if ("prompt" in body) == ("messages" in body):
        raise fields.error("prompt", "give exactly one of 'prompt' or 'messages'")
    given = sorted(TOOL_KEYS & set(body))
    if "prompt" in body and given:
        raise fields.error(given[0], f"'{given[0]}' needs 'messages': a prompt takes no tools")
    if "prompt" in body:
        prompt = fields.string("prompt", required=True)
        assert prompt is not None
        model = model_name(fields)
        return CompletionRequest(prompt, model, sampling(fields), meta)
    return chat_request(fields, sampling(fields), meta)
