"""The Ollama stand-in (Ollama's docs/api.md): GET / ("Ollama is running"), /api/version,
/api/tags, /api/ps; POST /api/show, /api/chat, /api/generate, /api/embed (and the older
/api/embeddings). Replies stream as NDJSON unless the request says ``"stream": false`` (Ollama's
default is to stream); the last object has ``done: true``, ``done_reason`` (stop / length; load
/ unload for the empty requests that load or unload a model), ``prompt_eval_count``,
``eval_count`` and the durations in nanoseconds. ``options.num_predict`` (negative: no limit)
and ``options.stop`` are honoured. Errors are {"error": "..."}.

Model names carry a tag as in Ollama: "m" is listed and matched as "m:latest". /api/ps lists
the models that have answered a request and have not been unloaded (``keep_alive: 0``).
With ``--api-key``, ``Authorization: Bearer <key>`` is required (401 otherwise).

Tool calling as Ollama's /api/chat does it: given ``tools``, a chat whose last message is
not a ``tool`` result is answered with one call (text.tool_call) in ``message.tool_calls``
(arguments an object, no id, as Ollama before 0.12 sends them), the whole call in one
streamed line before the ``done`` line, whose done_reason stays ``stop``. A ``tool``
message's content is what the next reply echoes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .app import State, json_body, take_stream_fault
from .faults import paced_stream
from .text import EMBEDDING_DIMS, as_stop_list, count_tokens, embedding, reply, tool_call

API_BASE = ""
VERSION = "0.9.0"
WORK_PATHS = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings"})
HEALTH_PATHS = frozenset({"/", "/api/version", "/api/tags", "/api/ps", "/api/show"})
MODIFIED_AT = datetime.now(timezone.utc).isoformat()
DEFAULT_KEEP_ALIVE = 300.0
DETAILS = {"parent_model": "", "format": "gguf", "family": "standin", "families": ["standin"],
           "parameter_size": "260K", "quantization_level": "F32"}
SIZE = 1_185_376


def normalize(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def route_kind(method: str, path: str) -> str | None:
    if method == "POST" and path in WORK_PATHS:
        return "work"
    if path in HEALTH_PATHS:
        return "health"
    return None


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def check_auth(headers: Any, state: State) -> Response | None:
    if state.api_key is None or headers.get("authorization") == f"Bearer {state.api_key}":
        return None
    return error_response(401, "unauthorized")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _keep_alive_sec(value: Any) -> float | None:
    """Seconds to keep a model loaded (None: forever) from a keep_alive of 300, "5m", "-1" ..."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        unit = next((u for u in ("ms", "s", "m", "h") if value.endswith(u)), "")
        try:
            seconds = float(value[: len(value) - len(unit)]) * units.get(unit, 1)
        except ValueError:
            return DEFAULT_KEEP_ALIVE
    else:
        return DEFAULT_KEEP_ALIVE
    return None if seconds < 0 else seconds


def _options(body: dict) -> tuple[int | None, list[str]]:
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    limit = options.get("num_predict")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        limit = None
    return limit, as_stop_list(options.get("stop"))


def _durations(prompt_tokens: int, eval_tokens: int) -> dict:
    return {"total_duration": 1_000_000 * (2 + prompt_tokens + eval_tokens), "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 1_000_000 * max(prompt_tokens, 1),
            "eval_count": eval_tokens, "eval_duration": 1_000_000 * max(eval_tokens, 1)}


def routes(state: State) -> list[Route]:
    state.normalize = normalize  # type: ignore[assignment]
    state.models[:] = list(dict.fromkeys(normalize(m) for m in state.models))
    loaded: dict[str, float | None] = state.extra.setdefault("loaded", {})  # name -> expiry (unix time; None: never)

    def touch(name: str, keep_alive: Any) -> bool:
        """Note `name` as loaded for `keep_alive`; False when that unloads it."""
        seconds = _keep_alive_sec(keep_alive)
        if seconds == 0:
            loaded.pop(name, None)
            return False
        loaded[name] = None if seconds is None else time.time() + seconds
        return True

    def model_or_error(body: Any) -> tuple[str | None, Response | None]:
        if not isinstance(body, dict):
            return None, error_response(400, "invalid request body")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return None, error_response(400, "model is required")
        if not state.has_model(name):
            return None, error_response(404, f'model "{name}" not found, try pulling it first')
        return normalize(name), None

    def stream_or_json(request: Request, body: dict, lines: list[dict], final: dict) -> Response | None:
        """NDJSON (one line per chunk, then `final`), or None when the request said stream: false
        (the caller then answers `final` with the chunks' text folded in)."""
        if body.get("stream", True) is False:
            return None
        fault, connection = take_stream_fault(request)
        encode = lambda obj: json.dumps(obj).encode() + b"\n"  # noqa: E731
        return StreamingResponse(paced_stream([], [encode(x) for x in lines], [encode(final)], fault=fault,
                                              token_delay=state.token_delay, connection=connection),
                                 media_type="application/x-ndjson")

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [{"name": m, "model": m, "modified_at": MODIFIED_AT, "size": SIZE,
                                         "digest": _digest(m), "details": DETAILS} for m in state.models]})

    async def ps(request: Request) -> Response:
        now = time.time()
        for name, expiry in list(loaded.items()):
            if (expiry is not None and expiry < now) or name not in state.models:
                loaded.pop(name)
        far = datetime(2318, 1, 1, tzinfo=timezone.utc).isoformat()
        return JSONResponse({"models": [
            {"name": m, "model": m, "size": SIZE, "digest": _digest(m), "details": DETAILS,
             "expires_at": far if exp is None else datetime.fromtimestamp(exp, timezone.utc).isoformat(),
             "size_vram": 0, "context_length": 4096}
            for m, exp in loaded.items()]})

    async def show(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, dict) and "name" in body and "model" not in body:
            body = {**body, "model": body["name"]}  # the older field name
        name, bad = model_or_error(body)
        if bad:
            return bad
        return JSONResponse({
            "modelfile": f"FROM {name}\n", "parameters": "stop \"<|end|>\"", "template": "{{ .Prompt }}",
            "details": DETAILS, "modified_at": MODIFIED_AT, "capabilities": ["completion", "embedding"],
            "model_info": {"general.architecture": "standin", "general.parameter_count": 260_000,
                           "standin.context_length": 4096, "standin.embedding_length": EMBEDDING_DIMS},
        })

    async def chat(request: Request) -> Response:
        body = await json_body(request)
        name, bad = model_or_error(body)
        if bad:
            return bad
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return error_response(400, "messages must be a list of message objects")
        if not messages:  # an empty chat loads (or with keep_alive 0 unloads) the model
            kept = touch(name, body.get("keep_alive"))
            return JSONResponse({"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                                 "done_reason": "load" if kept else "unload", "done": True})
        touch(name, body.get("keep_alive"))
        limit, stop = _options(body)
        texts = [m.get("content") if isinstance(m.get("content"), str) else "" for m in messages]
        users = [t for m, t in zip(messages, texts) if m.get("role") == "user"]
        tools = [(t["function"]["name"], t["function"].get("parameters")) for t in body.get("tools") or []
                 if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)]
        call = None if messages[-1].get("role") == "tool" else tool_call(tools, None, users[-1] if users else texts[-1],
                                                                           count_tokens(*texts))
        if call is not None:
            calls = [{"function": {"name": call.name, "arguments": json.loads(call.arguments)}}]
            final = {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                     "done_reason": "stop", "done": True, **_durations(call.prompt_tokens, 1)}
            line = {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": "", "tool_calls": calls},
                    "done": False}
            streamed = stream_or_json(request, body, [line], final)
            if streamed is not None:
                return streamed
            final["message"]["tool_calls"] = calls
            return JSONResponse(final)
        source = texts[-1] if messages[-1].get("role") == "tool" else users[-1] if users else texts[-1]
        r = reply(source, prompt_tokens=count_tokens(*texts), max_words=limit, stop=stop, natural=state.reply_words)
        final = {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                 "done_reason": r.finish, "done": True, **_durations(r.prompt_tokens, r.completion_tokens)}
        lines = [{"model": name, "created_at": _now(), "message": {"role": "assistant", "content": c}, "done": False}
                 for c in r.chunks]
        streamed = stream_or_json(request, body, lines, final)
        if streamed is not None:
            return streamed
        if state.token_delay:
            await asyncio.sleep(state.token_delay * r.completion_tokens)
        final["message"]["content"] = r.text
        return JSONResponse(final)

    async def generate(request: Request) -> Response:
        body = await json_body(request)
        name, bad = model_or_error(body)
        if bad:
            return bad
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            return error_response(400, "prompt must be a string")
        if not prompt:  # an empty prompt loads (or with keep_alive 0 unloads) the model
            kept = touch(name, body.get("keep_alive"))
            return JSONResponse({"model": name, "created_at": _now(), "response": "", "done": True,
                                 "done_reason": "load" if kept else "unload"})
        touch(name, body.get("keep_alive"))
        limit, stop = _options(body)
        system = body.get("system") if isinstance(body.get("system"), str) else ""
        r = reply(prompt, prompt_tokens=count_tokens(system, prompt), max_words=limit, stop=stop, natural=state.reply_words)
        final = {"model": name, "created_at": _now(), "response": "", "done": True, "done_reason": r.finish,
                 "context": list(range(1, r.prompt_tokens + r.completion_tokens + 1)),
                 **_durations(r.prompt_tokens, r.completion_tokens)}
        lines = [{"model": name, "created_at": _now(), "response": c, "done": False} for c in r.chunks]
        streamed = stream_or_json(request, body, lines, final)
        if streamed is not None:
            return streamed
        if state.token_delay:
            await asyncio.sleep(state.token_delay * r.completion_tokens)
        final["response"] = r.text
        return JSONResponse(final)

    async def embed(request: Request) -> Response:
        body = await json_body(request)
        name, bad = model_or_error(body)
        if bad:
            return bad
        given = body.get("input")
        inputs = [given] if isinstance(given, str) else given
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            return error_response(400, "input must be a string or a list of strings")
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            return error_response(400, "dimensions must be a positive integer")
        touch(name, body.get("keep_alive"))
        tokens = count_tokens(*inputs)
        return JSONResponse({"model": name, "embeddings": [embedding(x, dims or EMBEDDING_DIMS) for x in inputs],
                             "total_duration": 1_000_000 * (1 + tokens), "load_duration": 1_000_000,
                             "prompt_eval_count": tokens})

    async def embeddings_legacy(request: Request) -> Response:
        body = await json_body(request)
        name, bad = model_or_error(body)
        if bad:
            return bad
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return error_response(400, "prompt must be a string")
        touch(name, body.get("keep_alive"))
        return JSONResponse({"embedding": embedding(prompt) if prompt else []})

    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings_legacy, methods=["POST"]),
    ]
