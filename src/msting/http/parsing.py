"""Bodies into typed requests: the fields every generation route shares.

Each value is range-checked against msting.api.limits (through `Fields`); what a body
leaves out keeps SamplingParams' defaults, and `max_tokens` and `temperature` left out
take the model's own when it is queued.
"""

from __future__ import annotations

import re
from typing import Any

from msting.api import limits
from msting.api.errors import InvalidRequest
from msting.api.requests import NO_HEADERS, CacheControl, ChatRequest, CompletionRequest, Message, RequestMeta, SamplingParams
from msting.http.errors import Fields, shown
from msting.http.security import CLIENT_SCOPE_KEY

ROLES = {"system", "developer", "user", "assistant"}
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
        out.append(Message("system" if role == "developer" else role, _content(fields, where, msg.get("content"))))
    return tuple(out)


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
    """A task-level body (/v1/execute, the WebSocket): exactly one of prompt or messages."""
    body = fields.body
    if ("prompt" in body) == ("messages" in body):
        raise fields.error("prompt", "give exactly one of 'prompt' or 'messages'")
    if "prompt" in body:
        prompt = fields.string("prompt", required=True)
        assert prompt is not None
        model = model_name(fields)
        return CompletionRequest(prompt, model, sampling(fields), meta)
    chat = messages(fields)
    model = model_name(fields)
    return ChatRequest(chat, model, sampling(fields), meta)
