"""The API contract: an OpenAPI 3.1 document of every HTTP route the daemon serves.

Served at ``GET /openapi.json``; ``docs/openapi.json`` is a copy written with
``python -m msting.http.openapi > docs/openapi.json`` (a unit test checks that the two are
equal and that every route of ``build_app`` is in the document).

The request bodies are built from the same constants the routes use (the key sets
``GENERATE_KEYS``, ``CHAT_KEYS``, ...): each body schema lists exactly the keys its route
accepts, with ``additionalProperties: false`` where unknown keys are rejected, and
``_body`` refuses to build a schema whose keys differ from the route's set, so a key
added to a route without a schema fails at import (and in CI). The document is built
once, on the first request, and the bytes are kept.

The WebSocket route (``/v1/ws``) is not an HTTP operation; its messages are described
under the top-level extension ``x-websockets``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from msting import __version__
from msting.api import durations, limits
from msting.http import native, openai_api, ws
from msting.http.admin import NO_KEYS, RESTART_KEYS, SWITCH_KEYS, UNLOAD_KEYS
from msting.http.native import LOAD_KEYS
from msting.http.parsing import ROLES

OPENAPI_VERSION = "3.1.0"

JSON = "application/json"
SSE = "text/event-stream"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    """A key that may be null: the routes treat a null like a key left out."""
    out = dict(schema)
    t = out.get("type")
    if isinstance(t, str):
        out["type"] = [t, "null"]
    elif isinstance(t, list) and "null" not in t:
        out["type"] = [*t, "null"]
    elif "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


def _numeric(key: str, description: str) -> dict:
    """A numeric field with the range msting.api.limits gives it (integer when both ends are)."""
    lo, hi = limits.NUMERIC_FIELDS[key]
    kind = "integer" if isinstance(lo, int) and isinstance(hi, int) else "number"
    return _nullable({"type": kind, "minimum": lo, "maximum": hi, "description": description})


NAME = {"type": "string", "maxLength": limits.MAX_NAME_CHARS}


STRING_LIST = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": limits.MAX_STOP_SEQUENCES}]}

# One schema per request key, shared by every route that accepts the key.
PROPERTIES: dict[str, dict] = {
    "model": _nullable({**NAME, "description": "A model name as `GET /llm/models` lists it: `SERVICE~MODEL`, a bare `MODEL` "
                                               "(the default service's, else the one other service that lists it), or "
                                               "`default` (also when left out or null)."}),
    "prompt": {"type": "string", "description": "The text to continue."},
    "max_tokens": _numeric("max_tokens", "Tokens to generate at most (the context window caps it too); "
                                         "left out: the model's `max_tokens`."),
    "max_completion_tokens": _numeric("max_completion_tokens", "OpenAI's newer name for `max_tokens`; wins over it when both are given."),
    "temperature": _numeric("temperature", "Sampling temperature (0 = greedy); left out: the model's `temperature`."),
    "top_p": _numeric("top_p", f"Nucleus sampling (default {limits.DEFAULT_TOP_P:g})."),
    "presence_penalty": _numeric("presence_penalty", f"Default {limits.DEFAULT_PRESENCE_PENALTY:g}."),
    "frequency_penalty": _numeric("frequency_penalty", f"Default {limits.DEFAULT_FREQUENCY_PENALTY:g}."),
    "stop": _nullable({**STRING_LIST, "description": "A stop string or a list of them."}),
    "seed": _numeric("seed", f"Sampling seed; {limits.RANDOM_SEED} (like null) asks for a random one."),
    "stream": _nullable({"type": "boolean", "description": "Answer with Server-Sent Events (default false)."}),
    "n": _numeric("n", "Only 1 is supported."),
    "user": _nullable({"type": "string", "description": "Accepted for compatibility; not used."}),
    "stream_options": _nullable({
        "type": "object", "additionalProperties": False,
        "properties": {"include_usage": {"type": "boolean"}},
        "description": "Only with `stream: true` (else a 400): `include_usage` adds a last chunk with the usage.",
    }),
    "messages": _ref("Messages"),
    "tools": _nullable({
        "type": "array", "minItems": 1, "maxItems": limits.MAX_TOOLS, "items": _ref("Tool"),
        "description": "Functions the model may call (OpenAI's shape). Served by the remote services (openai, anthropic, "
                       "ollama); the daemon's own workers and the stub refuse a request with tools (400), and a fallback "
                       "chain passes over them."}),
    "tool_choice": _nullable({
        "anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                  {"type": "object", "required": ["type", "function"], "additionalProperties": False,
                   "properties": {"type": {"const": "function"},
                                  "function": {"type": "object", "required": ["name"], "additionalProperties": False,
                                               "properties": {"name": {"type": "string"}}}}}],
        "description": "Only with `tools`; a function named must be one of them."}),
    "parallel_tool_calls": _nullable({"type": "boolean", "description": "Only with `tools`: may the model call several at once."}),
    "timeout": _numeric("timeout", "Seconds to wait for the model (default `llm_service.startup_timeout_sec`)."),
    "profile": {**NAME, "description": "A profile name (see `GET /v1/profiles`)."},
    "dry_run": _nullable({"type": "boolean", "description": "Only plan the switch (default false)."}),
    "input": {"anyOf": [{"type": "string", "minLength": 1},
                        {"type": "array", "minItems": 1, "maxItems": limits.MAX_EMBEDDING_INPUTS,
                         "items": {"type": "string", "minLength": 1}}],
              "description": "A non-empty string or a non-empty list of non-empty strings (token arrays are not supported)."},
    "encoding_format": _nullable({"type": "string", "enum": ["float", "base64"], "description": "Default `float`."}),
    "keep_alive": _nullable({
        "anyOf": [{"type": "number", "maximum": limits.MAX_KEEP_ALIVE_SEC},
                  {"type": "string", "maxLength": limits.MAX_DURATION_CHARS, "pattern": durations.PATTERN}],
        "description": "How long an on-demand model stays loaded once idle after this request, as Ollama's `keep_alive`: "
                       "seconds, or a duration (`\"5m\"`, `\"1h30m\"`); 0 unloads it right after; any negative value keeps it "
                       "loaded. Left out: the profile's `keep_alive_sec`. An always-ready model ignores it (it is never unloaded)."}),
}


def _body(keys: set[str] | frozenset[str], *, required: tuple[str, ...] = (), override: dict | None = None,
          description: str | None = None, extra: dict | None = None) -> dict:
    """A request body schema with exactly `keys` (the route's own key set)."""
    props = {**{k: PROPERTIES[k] for k in sorted(keys) if k in PROPERTIES}, **(override or {})}
    missing = set(keys) - set(props)
    stray = set(props) - set(keys)
    if missing or stray:
        raise RuntimeError(f"openapi: body schema does not match the route's keys (missing {sorted(missing)}, extra {sorted(stray)})")
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    schema.update(extra or {})
    return schema


# ---- components -------------------------------------------------------------------

ERROR_TYPES = ["invalid_request_error", "authentication_error", "permission_error", "not_found_error",
               "server_error", "upstream_error", "unavailable_error", "timeout_error"]

USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {"prompt_tokens": {"type": "integer", "minimum": 0}, "completion_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0}}}
TIMINGS = {"type": "object", "additionalProperties": {"type": ["number", "null"]},
           "description": "`queue_ms`, `prompt_ms`, `predicted_ms`, `predicted_per_second`."}
NATIVE_FINISH = {"type": ["string", "null"], "enum": ["stop", "length", "tool_calls", "cancelled", None]}
OPENAI_FINISH = {"type": "string", "enum": ["stop", "length", "tool_calls"]}
TOOL_CALL = {"type": "object", "required": ["id", "type", "function"], "additionalProperties": False,
             "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                            "function": {"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                                         "properties": {"name": {"type": "string", "pattern": f"^{limits.TOOL_NAME_PATTERN}$"},
                                                        "arguments": {"type": "string", "description": "JSON text."}}}}}


def _components() -> dict:
    schemas: dict[str, dict] = {
        "Error": {
            "type": "object", "required": ["error"],
            "description": "Every error, on every route, has this shape and a matching HTTP status.",
            "properties": {"error": {
                "type": "object", "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "enum": ERROR_TYPES},
                    "param": {"type": ["string", "null"], "description": "The request key at fault, when there is one."},
                    "code": {"type": "string", "description": "e.g. `invalid_json`, `invalid_parameter`, `model_not_found`, "
                                                              "`queue_full`, `worker_crashed`."},
                    "stderr": {"type": "string", "description": "A 500 of `POST /llm` (always there) and `model_load_failed`: the lines "
                                                                  "the worker wrote when a model failed to load, empty otherwise."},
                    "error_id": {"type": "string", "description": "A 500 `internal_error`: the id under which the daemon log "
                                                                  "has the details (the reply never carries exception text)."},
                    "close_matches": {"type": "array", "items": {"type": "string"},
                                      "description": "`model_not_found`: the known names closest to the one asked for, as "
                                                     "requests name them."},
                    "attempts": {"type": "array", "items": _ref("Attempt"),
                                 "description": "A remote service's failure: every attempt made, in order (across the "
                                                "fallback chain for `all_services_failed`)."},
                    "services": {"type": "array", "items": {"type": "string"},
                                 "description": "`all_services_failed`: the services tried, in order."},
                    "retryable": {"type": "boolean", "description": "A remote service's failure: whether trying again may succeed."},
                    "upstream_status": {"type": "integer", "description": "The HTTP status the remote engine answered."},
                },
                "additionalProperties": True,
            }},
        },
        "Messages": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ["role"], "additionalProperties": False,
                "properties": {
                    "role": {"type": "string", "enum": sorted(ROLES)},
                    "content": {"anyOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object", "required": ["type", "text"],
                                                    "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}},
                        {"type": "null", "description": "Only an assistant message with `tool_calls`."},
                    ]},
                    "name": {"type": "string"},
                    "tool_calls": {"type": "array", "minItems": 1, "items": TOOL_CALL,
                                   "description": "Only on an assistant message: the calls it made (unique ids)."},
                    "tool_call_id": {"type": "string",
                                     "description": "Only on a `tool` message (then required): the id of the call of an "
                                                    "earlier assistant message that it answers, once."},
                    "refusal": {"type": "null", "description": "Only on an assistant message."},
                },
            },
            "description": "`developer` is read as `system`. Only text content. A `tool` message carries the result of "
                           "an earlier assistant message's tool call.",
        },
        "Usage": USAGE,
        "Timings": TIMINGS,
        "GenerateResult": {
            "type": "object", "required": ["text", "model", "finish_reason", "usage", "timings"],
            "properties": {"text": {"type": "string"}, "model": {"type": "string"}, "finish_reason": NATIVE_FINISH,
                           "usage": _ref("Usage"), "timings": _ref("Timings")},
        },
        "ChatCompletion": {
            "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
                "model": {"type": "string"}, "system_fingerprint": {"type": "null"},
                "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                    "type": "object", "required": ["index", "message", "finish_reason"],
                    "properties": {"index": {"type": "integer"}, "logprobs": {"type": "null"}, "finish_reason": OPENAI_FINISH,
                                   "message": {"type": "object", "required": ["role", "content"],
                                               "properties": {"role": {"const": "assistant"},
                                                              "content": {"type": ["string", "null"],
                                                                          "description": "null: only tool calls."},
                                                              "tool_calls": {"type": "array", "items": TOOL_CALL}}}}}},
                "usage": _ref("Usage"),
            },
        },
        "Completion": {
            "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {
                "id": {"type": "string"}, "object": {"const": "text_completion"}, "created": {"type": "integer"},
                "model": {"type": "string"}, "system_fingerprint": {"type": "null"},
                "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                    "type": "object", "required": ["index", "text", "finish_reason"],
                    "properties": {"index": {"type": "integer"}, "text": {"type": "string"}, "logprobs": {"type": "null"},
                                   "finish_reason": OPENAI_FINISH}}},
                "usage": _ref("Usage"),
            },
        },
        "Embeddings": {
            "type": "object", "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"}, "model": {"type": "string"},
                "data": {"type": "array", "items": {
                    "type": "object", "required": ["object", "index", "embedding"],
                    "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                                   "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                                           {"type": "string", "description": "base64 little-endian float32"}]}}}},
                "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                          "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}},
            },
        },
        "Execution": {
            "type": "object", "required": ["id", "object", "model", "output", "finish_reason", "usage", "timings"],
            "properties": {"id": {"type": "string"}, "object": {"const": "execution"}, "model": {"type": "string"},
                           "output": {"type": "string"}, "finish_reason": NATIVE_FINISH, "usage": _ref("Usage"),
                           "timings": _ref("Timings"),
                           "tool_calls": {"type": "array", "items": TOOL_CALL, "description": "Only when it made some."}},
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by", "service", "upstream", "state", "type", "context_length",
                         "capabilities", "details", "aliases"],
            "properties": {
                "id": {"type": "string", "description": "The name requests use: bare for the default service's models, "
                                                        "`SERVICE~MODEL` for the others' (the stub's always read `stub~...`)."},
                "object": {"const": "model"}, "created": {"type": "integer"},
                "owned_by": {"type": "string", "description": "The service (as `service`)."},
                "service": {"type": "string", "description": "The service that serves it (`local`, `stub` or a configured one)."},
                "upstream": {"type": "string", "description": "The name the service's own engine knows it by."},
                "state": {"type": "string", "description": "The daemon's own models: `stopped`, `loading`, `ready`, ...; "
                                                           "a remote service's: `available`, `loaded` or `unreachable`."},
                "type": {"type": "string", "enum": ["llm", "embeddings"]},
                "context_length": {"type": ["integer", "null"], "description": "null where the service does not say."},
                "capabilities": {"anyOf": [_ref("Capabilities"), {"type": "null"}],
                                 "description": "A remote service's (null: the service's own, see `GET /llm/services/{name}`)."},
                "details": {"anyOf": [_ref("ModelDetails"), {"type": "null"}],
                            "description": "What the model file is, read from its GGUF header; null for remote services' "
                                           "models and a file that cannot be read."},
                "aliases": {"type": "array", "items": {"type": "string"},
                            "description": "Other names that reach it: `SERVICE~MODEL`, and `default` for the default model."},
            },
        },
        "ModelList": {
            "type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        },
        "Tool": {
            "type": "object", "required": ["type", "function"], "additionalProperties": False,
            "properties": {"type": {"const": "function"},
                           "function": {"type": "object", "required": ["name"], "additionalProperties": False,
                                        "properties": {"name": {"type": "string", "pattern": f"^{limits.TOOL_NAME_PATTERN}$",
                                                                "description": "Unique among the request's tools."},
                                                       "description": {"type": "string"},
                                                       "parameters": {"type": "object", "description": "A JSON schema of an object."},
                                                       "strict": {"type": "boolean"}}}},
        },
        "Capabilities": {
            "type": "object", "required": ["chat", "completions", "stream", "embed", "tools"],
            "description": "What a service can do; asking for what it lacks is a 400 `unsupported_by_provider` naming it.",
            "properties": {"chat": {"type": "boolean", "description": "Messages in, a reply out."},
                           "completions": {"type": "boolean", "description": "A raw prompt continued."},
                           "stream": {"type": "boolean"}, "embed": {"type": "boolean"},
                           "tools": {"type": "boolean", "description": "Tool calling: the remote services (openai, "
                                     "anthropic, ollama); not the daemon's own workers or the stub."}},
        },
        "ModelDetails": {
            "type": "object",
            "required": ["type", "arch", "quantization", "context_length", "n_params", "size_bytes", "instructed", "tooling",
                         "coding", "is_gguf", "is_mlx", "pooling", "projector"],
            "description": "Facts read from a model file's GGUF metadata (docs/api.md: model details).",
            "properties": {
                "type": {"type": "string", "enum": ["llm", "embeddings", "vlm"],
                         "description": "embeddings: a declared pooling type; vlm: vision metadata or a projector beside it."},
                "arch": {"type": ["string", "null"]},
                "quantization": {"type": ["string", "null"], "description": "llama.cpp's name of general.file_type, e.g. Q4_K_M."},
                "context_length": {"type": ["integer", "null"], "description": "The training context."},
                "n_params": {"type": "integer", "description": "Parameters, summed over the tensors' shapes."},
                "size_bytes": {"type": "integer"},
                "instructed": {"type": "boolean", "description": "The file has a chat template."},
                "tooling": {"type": "boolean", "description": "Its chat template renders tools."},
                "coding": {"type": "boolean", "description": "A code model (name, tags or architecture)."},
                "is_gguf": {"type": "boolean"}, "is_mlx": {"type": "boolean"},
                "pooling": {"type": ["string", "null"], "description": "An embedding model's pooling type."},
                "projector": {"type": ["string", "null"], "description": "The multimodal projector file beside it."},
            },
        },
        "Attempt": {
            "type": "object", "required": ["service", "url", "error", "ms"],
            "description": "One try at serving a request.",
            "properties": {"service": {"type": "string"},
                           "url": {"type": ["string", "null"], "description": "The upstream URL; null for the daemon's own workers."},
                           "error": {"type": ["string", "null"], "description": "What went wrong; null for the attempt that answered."},
                           "ms": {"type": "number"}},
        },
        "UrlState": {
            "type": "object",
            "required": ["url", "state", "cooling_until", "reason", "latency_ms", "in_flight", "served", "failed",
                         "last_error", "last_error_at", "last_checked"],
            "description": "One URL of a remote service and its circuit breaker.",
            "properties": {
                "url": {"type": "string"},
                "state": {"type": "string", "enum": ["up", "down", "cooling_down", "probing"],
                          "description": "`down`: its health check failed; `cooling_down`: open after failed requests or a "
                                         "`Retry-After`; `probing`: the next request (one) tries it again."},
                "cooling_until": {"type": ["number", "null"], "description": "Unix time a `down` or `cooling_down` URL is tried "
                                                                             "again; null otherwise."},
                "reason": {"type": ["string", "null"], "description": "Why its circuit opened."},
                "latency_ms": {"type": ["number", "null"], "description": "Smoothed time to first token (or health check)."},
                "in_flight": {"type": "integer", "minimum": 0}, "served": {"type": "integer", "minimum": 0},
                "failed": {"type": "integer", "minimum": 0},
                "last_error": {"type": ["string", "null"]}, "last_error_at": {"type": ["number", "null"], "description": "Unix time."},
                "last_checked": {"type": ["number", "null"], "description": "Unix time of its last health check."},
            },
        },
        "Service": {
            "type": "object",
            "required": ["name", "api_format", "builtin", "status", "reason", "default_model", "models", "capabilities", "urls",
                         "is_default"],
            "description": "A service behind the router: `local` (the daemon's own workers), `stub` (the offline test "
                           "provider) or a remote one of `llm.services`.",
            "properties": {
                "name": {"type": "string"},
                "api_format": {"type": "string", "enum": ["local", "stub", "openai", "ollama", "anthropic"]},
                "builtin": {"type": "boolean"},
                "status": {"type": "string", "enum": ["ready", "loading", "degraded", "failed", "stopping", "idle"]},
                "reason": {"type": ["string", "null"]},
                "default_model": {"type": ["string", "null"]},
                "models": {"type": "array", "items": {"type": "string"}, "description": "The service's own model names."},
                "capabilities": _ref("Capabilities"),
                "urls": {"type": "array", "items": _ref("UrlState"), "description": "Empty for `local` and `stub`."},
                "key_source": {"type": "string", "description": "A remote service: where its API key comes from (`env VAR`, "
                                                                "`config` or `none`); never the key."},
                "discovery": {"type": "object", "required": ["enabled", "refreshed_at"],
                              "properties": {"enabled": {"type": "boolean"},
                                             "refreshed_at": {"type": ["number", "null"], "description": "Unix time."}},
                              "description": "A remote service: model discovery by its health checks."},
                "is_default": {"type": "boolean"},
                "in_fallback_chain": {"type": "boolean", "description": "In `GET /llm/services`."},
            },
        },
        "ServiceList": {
            "type": "object", "required": ["object", "default_service", "fallback_chain", "data"],
            "properties": {"object": {"const": "list"}, "default_service": {"type": "string"},
                           "fallback_chain": {"type": "array", "items": {"type": "string"}},
                           "data": {"type": "array", "items": _ref("Service")}},
        },
        "Ping": {
            "type": "object", "required": ["name", "status", "reason", "urls"],
            "properties": {
                "name": {"type": "string"},
                "status": {"type": "string", "enum": ["ready", "loading", "degraded", "failed", "stopping", "idle"]},
                "reason": {"type": ["string", "null"]},
                "urls": {"type": "array", "description": "Each URL checked now (its model list, with the short timeout).",
                         "items": {"type": "object", "required": ["url", "ok", "latency_ms", "error"],
                                   "properties": {"url": {"type": "string"}, "ok": {"type": "boolean"},
                                                  "latency_ms": {"type": ["number", "null"]}, "error": {"type": ["string", "null"]},
                                                  "models": {"type": "integer", "description": "How many it listed (when ok)."}}}},
            },
        },
        "ServiceCapabilities": {
            "type": "object", "required": ["name", "chat", "completions", "stream", "embed", "tools"],
            "properties": {"name": {"type": "string"}, "chat": {"type": "boolean"}, "completions": {"type": "boolean"},
                           "stream": {"type": "boolean"}, "embed": {"type": "boolean"}, "tools": {"type": "boolean"}},
        },
        "Health": {
            "type": "object", "required": ["status", "version", "pid", "ready", "readiness", "default_model", "models"],
            "properties": {"status": {"const": "ok"}, "version": {"type": "string"}, "pid": {"type": "integer"},
                           "uptime_sec": {"type": "number"}, "ready": {"type": "boolean"}, "readiness": {"type": "string"},
                           "profile": {"type": "string"}, "default_model": {"type": "string"},
                           "models": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "Readiness": {
            "type": "object", "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ready", "loading", "degraded", "failed", "stopping", "idle"]},
                           "reason": {"type": ["string", "null"]},
                           "models": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "Job": {
            "type": "object",
            "required": ["id", "type", "state", "params", "step", "steps", "progress", "error", "result", "created_at",
                         "started_at", "finished_at"],
            "description": "A long operation: a profile switch, or a model install, import, update, delete, load or unload "
                           "(docs/api.md: jobs). `kind`, `target`, `created`, `finished` and `duration_ms` repeat it in the "
                           "names profile-switch clients read.",
            "properties": {
                "id": {"type": "string", "description": "Made once; survives daemon restarts."},
                "type": {"type": "string", "enum": ["switch", "install", "import", "load", "unload", "update", "delete"]},
                "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                "params": {"type": "object", "description": "What the job was asked to do (no secrets)."},
                "step": {"type": ["string", "null"], "description": "The running step: resolving, downloading, verifying, installing ..."},
                "steps": {"type": "array", "items": {"type": "object", "required": ["name", "state"], "properties": {
                    "name": {"type": "string"}, "state": {"type": "string", "enum": ["pending", "running", "done", "failed", "skipped"]},
                    "detail": {"type": ["string", "null"]}, "started": {"type": ["number", "null"]},
                    "finished": {"type": ["number", "null"]}, "duration_ms": {"type": ["number", "null"]}}}},
                "progress": {"type": "object", "required": ["bytes_done", "bytes_total", "rate_bps", "eta_sec"], "properties": {
                    "bytes_done": {"type": "integer", "description": "Never decreases."},
                    "bytes_total": {"type": ["integer", "null"]}, "rate_bps": {"type": ["number", "null"]},
                    "eta_sec": {"type": ["number", "null"]},
                    "fraction": {"type": "number", "description": "The share of steps done or skipped."}}},
                "error": {"anyOf": [{"type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}, {"type": "null"}]},
                "result": {"type": ["object", "null"], "description": "install and import: `model`, `path`, `sha256`, `size_bytes`."},
                "created_at": {"type": "number"}, "started_at": {"type": ["number", "null"]}, "finished_at": {"type": ["number", "null"]},
                "kind": {"type": "string"}, "target": {"type": ["string", "null"]}, "created": {"type": "number"},
                "finished": {"type": ["number", "null"]}, "duration_ms": {"type": ["number", "null"]},
            },
        },
        "InstalledModel": {
            "type": "object", "required": ["name", "source", "path", "size_bytes", "sha256", "revision", "details"],
            "description": "A model installed in the data folder (the `llm_models` table).",
            "properties": {
                "name": {"type": "string", "description": "What a profile names it by: `source: installed:NAME`."},
                "source": {"type": "string", "description": "hf://, ollama://, a URL, or `file:PATH` for an import."},
                "path": {"type": "string"}, "format": {"type": "string"}, "size_bytes": {"type": "integer"},
                "sha256": {"type": "string"}, "revision": {"type": ["string", "null"],
                                                          "description": "The upstream's LFS sha256, layer digest or ETag."},
                "details": {"type": "object", "description": "What the file is (the `details` of /v1/models)."},
                "linked": {"type": "boolean"}, "job_id": {"type": ["string", "null"]},
                "installed_at": {"type": "number"}, "updated_at": {"type": "number"},
                "present": {"type": "boolean", "description": "The file is there."},
                "in_use": {"type": "boolean", "description": "The active profile serves it."},
            },
        },
        "Object": {"type": "object", "description": "A JSON object; see docs/api.md for its fields."},
        "SseStream": {"type": "string", "description": "Server-Sent Events (`text/event-stream`); see the operation's description."},
    }
    statuses = {
        "BadRequest": ("400", "Invalid JSON (`invalid_json`, `invalid_unicode`, `invalid_number`, `nesting_too_deep`), "
                              "not an object (`invalid_body`), an unknown parameter, a wrong type or a value out of range "
                              "(`invalid_parameter`, with `param`), on every route."),
        "Unauthorized": ("401", "TCP only, when an API key is set: a missing or wrong `Authorization: Bearer` key."),
        "Forbidden": ("403", "TCP only: a `Host` header that is not loopback or an allowed host."),
        "NotFound": ("404", "An unknown model (`model_not_found`, with `close_matches`; `model_ambiguous` when several "
                            "services list a bare name), service (`service_not_found`), job or route."),
        "Conflict": ("409", "`switch_in_progress`, `model_always_ready`, `model_in_use`, `not_cancellable`."),
        "PayloadTooLarge": ("413", f"`body_too_large`: over {limits.MAX_BODY_BYTES} bytes."),
        "ServerError": ("500", "The engine failed, a worker died, or an internal error."),
        "BadGateway": ("502", "A remote engine failed to answer: `upstream_error`, `upstream_auth_failed`, "
                              "`upstream_stream_cut`, ...; `all_services_failed` when every service of the fallback chain "
                              "failed and not all were unavailable (`attempts` and `services` name each)."),
        "Unavailable": ("503", "`queue_full` (with `Retry-After`), `shutting_down`, `model_failed`, `insufficient_memory`; a "
                               "remote service: `upstream_unavailable`, `upstream_rate_limited`, and `all_services_failed` when "
                               "every service of the fallback chain was unavailable (with `Retry-After`)."),
        "Timeout": ("504", "`load_timeout`: the model was not ready in time; it keeps loading. `upstream_timeout`: a remote "
                           "engine did not answer in time."),
        "TooManyRequests": ("429", "`rate_limit_exceeded`: a rate limit (`rate_limits` of the service, model or client) had "
                                     "no room within the request's wait (`llm.rate_limit_max_wait_sec`, or less with "
                                     "`x-msting-max-wait`), and no service after it in the fallback chain had room; "
                                     "`Retry-After` says when the earliest window has room (absent: the request can never "
                                     "fit, it is bigger than the token limit)."),
    }
    responses = {name: {"description": f"{code}: {text}", "content": {JSON: {"schema": _ref("Error")}}}
                 for name, (code, text) in statuses.items()}
    return {
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "TCP only, and only when the daemon's API key variable "
                                                      "(`llm_service.api_key_env_var`) is set. The Unix socket needs none."}},
    }


def _errors(*names: str) -> dict:
    codes = {"BadRequest": "400", "Unauthorized": "401", "Forbidden": "403", "NotFound": "404", "Conflict": "409",
             "PayloadTooLarge": "413", "TooManyRequests": "429", "ServerError": "500", "BadGateway": "502",
             "Unavailable": "503", "Timeout": "504"}
    common = ("Unauthorized", "Forbidden", "ServerError")
    return {codes[n]: {"$ref": f"#/components/responses/{n}"} for n in (*names, *common)}


WHO_ANSWERED = {
    "X-Msting-Provider": {"description": "The service that answered (`local`, `stub` or a remote one).",
                          "schema": {"type": "string"}},
    "X-Msting-Attempts": {"description": "How many attempts it took, across URLs and the fallback chain.",
                          "schema": {"type": "integer", "minimum": 1}},
    "X-Msting-Upstream": {"description": "The upstream URL that answered; only for a remote service.",
                          "schema": {"type": "string"}},
    "X-Msting-Route": {"description": "The profile's route that picked the model, for a request that named none "
                                      "(absent when no route applied).", "schema": {"type": "string"}},
    "X-Msting-Route-By": {"description": "Who picked the route: `rule` (the first whose conditions held) or "
                                         "`router-model`.", "schema": {"type": "string", "enum": ["rule", "router-model"]}},
    "X-Msting-Cache": {"description": "`hit` (answered from the response cache, no model ran) or `miss`; absent when "
                                      "the profile's cache is off.", "schema": {"type": "string", "enum": ["hit", "miss"]}},
}

EXPLANATION = {
    "type": "object", "required": ["profile", "request", "routes", "route", "by", "model", "why", "cache"],
    "properties": {
        "profile": {"type": "string"},
        "request": {"type": "object", "description": "What the rules see: model, capability, prompt_tokens (estimated), "
                                                     "last_user_chars, user, headers, tools."},
        "routes": {"type": "array", "items": {"type": "object", "required": ["route", "to", "conditions", "matches", "failed"],
                                              "properties": {"route": {"type": "string"}, "to": {"type": "string"},
                                                             "conditions": {"type": "object"}, "matches": {"type": "boolean"},
                                                             "failed": {"type": "array", "items": {"type": "string"}}}}},
        "router_model": _nullable({"type": "object", "description": "The router model's decision: model, budget_ms, "
                                                                    "route (null: none), ms, reason, prompt_tokens, completion_tokens."}),
        "route": {"type": ["string", "null"]},
        "by": {"type": ["string", "null"], "enum": ["rule", "router-model", None]},
        "model": {"type": ["string", "null"], "description": "The model the request would go to (null: the default)."},
        "why": {"type": "string"},
        "cache": {"type": "object", "description": "enabled, cacheable, reason, key (the SHA-256 of the canonical key), "
                                                   "cached (an answer is there now), stats."},
    },
}


def _ok(schema: dict, description: str = "OK", *, stream: str | None = None, who: bool = False) -> dict:
    """A 200; `who`: a generation route's, with the who-answered headers (a stream sends
    them too: its status line goes out with the first event, once a service answered)."""
    content: dict = {JSON: {"schema": schema}}
    if stream:
        content[SSE] = {"schema": _ref("SseStream")}
        description = f"{description}. With `\"stream\": true`: {stream}"
    ok = {"description": description, "content": content}
    if who:
        ok["headers"] = WHO_ANSWERED
    return ok


def _post(op_id: str, summary: str, body: dict, ok: dict, errors: dict, *, tags: list[str], description: str | None = None,
          ok_status: str = "200") -> dict:
    op = {"operationId": op_id, "summary": summary, "tags": tags,
          "requestBody": {"required": True, "content": {JSON: {"schema": body}},
                          "description": "Read as JSON whatever the Content-Type says."},
          "responses": {ok_status: ok, **errors}}
    if description:
        op["description"] = description
    return {"post": op}


def _get(op_id: str, summary: str, ok: dict, errors: dict, *, tags: list[str], parameters: list | None = None,
         security: list | None = None, description: str | None = None) -> dict:
    op: dict = {"operationId": op_id, "summary": summary, "tags": tags, "responses": {"200": ok, **errors}}
    if parameters:
        op["parameters"] = parameters
    if security is not None:
        op["security"] = security
    if description:
        op["description"] = description
    return {"get": op}


NATIVE_SSE = ("`event: token` (`data: {\"text\"}`) lines (and `event: tool_call` lines, each a piece of a call as "
              "OpenAI's `delta.tool_calls` entries), then `event: done` (the result without `text`), or "
              "`event: error` (an Error object) when it fails after the 200: never a silent truncation.")
OPENAI_SSE = ("`data:` chunks (`{kind}`; tool calls as OpenAI streams them in `delta.tool_calls`: a call's index, id and "
              "name first, then pieces of its arguments), then `data: [DONE]`; with `stream_options.include_usage` a last chunk with "
              "empty `choices` carries the usage. A stream that fails after the 200 ends with a `data: {{\"error\": ...}}` "
              "event and no `[DONE]`.")


def _paths() -> dict:
    gen_errors = _errors("BadRequest", "NotFound", "PayloadTooLarge", "TooManyRequests", "BadGateway", "Unavailable", "Timeout")
    oai_errors = gen_errors
    native_tags, oai_tags, admin_tags, llm_tags = ["native"], ["openai"], ["admin"], ["services"]
    return {
        "/health": _get("health", "Liveness: 200 whenever the daemon serves", _ok(_ref("Health")), {}, tags=native_tags, security=[],
                        description="Open on TCP even when an API key is set (liveness probes); the Host check still applies."),
        "/health/ready": _get("health_ready", "Readiness: 200 only when every always-ready model is loaded and verified",
                              _ok(_ref("Readiness")), {"503": {"description": "Not ready (`Retry-After: 1`)",
                                                               "content": {JSON: {"schema": _ref("Readiness")}}},
                                                       **_errors()}, tags=native_tags),
        "/models/load": _post("load_model", "Load a model (idempotent) and wait until it is ready and verified",
                              _body(LOAD_KEYS), _ok(_ref("Object")),
                              _errors("BadRequest", "NotFound", "PayloadTooLarge", "Unavailable", "Timeout"), tags=native_tags),
        "/models/unload": _post("unload_model", "Stop an on-demand model's workers", _body(UNLOAD_KEYS, required=("model",)),
                                _ok(_ref("Object")), _errors("BadRequest", "NotFound", "Conflict", "PayloadTooLarge"), tags=native_tags),
        "/generate": _post("generate", "Generate text", _body(native.GENERATE_KEYS, required=("prompt",)),
                           _ok(_ref("GenerateResult"), stream=NATIVE_SSE, who=True), gen_errors, tags=native_tags),
        "/llm": _post("llm", "Generate text (minimal form)", _body(native.LLM_KEYS, required=("prompt",)),
                      _ok({"type": "object", "required": ["completion"], "properties": {"completion": {"type": "string"}}}, who=True),
                      gen_errors, tags=native_tags, description="A 500 always has `error.stderr`: the lines the worker wrote when a model failed to load, "
                                  "empty otherwise (a worker's own errors go to the daemon log)."),
        "/v1/chat/completions": _post(
            "chat_completions", "OpenAI chat completions",
            _body(openai_api.CHAT_KEYS, required=("messages",)),
            _ok(_ref("ChatCompletion"), stream=OPENAI_SSE.format(kind="chat.completion.chunk"), who=True), oai_errors, tags=oai_tags,
            description="Any other OpenAI parameter (`logprobs`, `response_format`, ...) is a 400 naming it."),
        "/v1/completions": _post(
            "completions", "OpenAI completions",
            _body(openai_api.COMPLETION_KEYS, required=("prompt",), override={
                "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}],
                           "description": "A string, or a list of exactly one string."}}),
            _ok(_ref("Completion"), stream=OPENAI_SSE.format(kind="text_completion"), who=True), oai_errors, tags=oai_tags),
        "/v1/embeddings": _post("embeddings", "OpenAI embeddings: one L2-normalised vector per input",
                                _body(openai_api.EMBEDDING_KEYS, required=("input",)), _ok(_ref("Embeddings"), who=True),
                                oai_errors, tags=oai_tags),
        "/v1/models": _get("list_models", "Every model of every service (the active profile's, and the remote services')",
                           _ok(_ref("ModelList")), _errors(), tags=oai_tags),
        "/v1/models/{model_id}": _get("get_model", "One model", _ok(_ref("Model")), _errors("NotFound"), tags=oai_tags,
                                      parameters=[{"name": "model_id", "in": "path", "required": True,
                                                   "schema": {"type": "string"},
                                                   "description": "A model name, as requests name it (`SERVICE~MODEL`, or bare)."}]),
        "/v1/execute": _post(
            "execute", "A task-level call: `prompt` or `messages`, through the same scheduler",
            _body(openai_api.EXECUTE_KEYS, extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]},
                  description="Exactly one of `prompt` and `messages`."),
            _ok(_ref("Execution"), stream=NATIVE_SSE, who=True), oai_errors, tags=oai_tags),
        "/v1/route/explain": _post(
            "explain_route", "A dry run of the request policies: which route, model and cache outcome a body would get, and why",
            _body(openai_api.EXPLAIN_KEYS, override={
                "prompt": {"type": "string"}},
                description="The body of /v1/chat/completions (`messages`), /v1/completions or /v1/execute (`prompt`) "
                            "or /v1/embeddings (`input`): exactly one of them."),
            _ok(EXPLANATION), _errors("BadRequest", "PayloadTooLarge"), tags=oai_tags,
            description="Nothing is generated; when the profile has a router model it is asked for its decision."),
        "/v1/status": _get("status", "Daemon, models, workers, memory, events", _ok(_ref("Object")), _errors(), tags=admin_tags),
        "/v1/profiles": _get("profiles", "Every profile, with its models and the active one",
                             _ok(_ref("Object")), _errors(), tags=admin_tags),
        "/v1/profiles/switch": _post(
            "switch_profile", "Switch profiles (a job), or plan a switch (`dry_run`)",
            _body(SWITCH_KEYS, required=("profile",)),
            _ok(_ref("Object"), "The plan of a dry run"),
            {"202": {"description": "The switch job", "content": {JSON: {"schema": _ref("Job")}}},
             **_errors("BadRequest", "Conflict", "PayloadTooLarge")}, tags=admin_tags),
        **_job_paths(["jobs"]),
        "/openapi.json": _get("openapi", "This document", _ok({"type": "object"}), _errors(), tags=admin_tags),
        **_operations_paths(admin_tags),
        **_service_paths(llm_tags),
    }


def _list_of(item: dict) -> dict:
    return {"type": "object", "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item}}}


def _job_paths(tags: list[str]) -> dict:
    """msting.http.jobs: the jobs (at /jobs and /v1/jobs alike), installed models, the hub's search."""
    job_id = _param("job_id", "A job's id.")
    create = {
        "type": "object", "required": ["type"], "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "enum": ["install", "import", "load", "unload", "update", "delete"]},
            "params": {"type": "object", "description": "install: `source` (hf://ORG/REPO[/FILE.gguf|:QUANT], ollama://NAME:TAG, "
                                                        "http(s)://...), `sha256`, `name`; import: `path` (absolute), `name`, "
                                                        "`link`; update, delete, load, unload: `name`."},
        },
    }
    job = {"description": "The job", "content": {JSON: {"schema": _ref("Job")}}}
    out: dict = {}
    for prefix, suffix in (("", ""), ("/v1", "_v1")):
        out[f"{prefix}/jobs"] = {
            **_post(f"create_job{suffix}", "Start a model job", create, job,
                    _errors("BadRequest", "NotFound", "Conflict", "PayloadTooLarge", "Unavailable"), tags=tags, ok_status="202",
                    description="A second install of the same source while one runs answers the same job (one transfer). "
                                "A delete of a model the active profile uses is a 409 `model_in_use`."),
            **_get(f"jobs{suffix}", "Every job, newest first", _ok(_list_of(_ref("Job"))), _errors("BadRequest"), tags=tags,
                   parameters=[{"name": "type", "in": "query", "required": False, "schema": {"type": "string"}},
                               {"name": "state", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}}]),
        }
        out[f"{prefix}/jobs/{{job_id}}"] = {
            **_get(f"job{suffix}", "One job", _ok(_ref("Job")), _errors("NotFound"), tags=tags, parameters=[job_id]),
            "delete": {"operationId": f"cancel_job{suffix}", "summary": "Cancel a job (an ended one is returned unchanged)",
                       "tags": tags, "parameters": [job_id],
                       "responses": {"200": _ok(_ref("Job")), **_errors("NotFound", "Conflict")}},
        }
        out[f"{prefix}/jobs/{{job_id}}/events"] = _get(
            f"job_events{suffix}", "A job's progress as server-sent events",
            {"description": "`data: {job}` at once, then on every change (at least 4 a second while bytes move); the stream "
                            "ends after the terminal state's event.", "content": {SSE: {"schema": _ref("SseStream")}}},
            _errors("NotFound"), tags=tags, parameters=[job_id])
    out["/llm/installed"] = _get("installed_models", "The models installed in the data folder",
                                 _ok(_list_of(_ref("InstalledModel"))), _errors(), tags=tags)
    out["/llm/registry/search"] = _get(
        "registry_search", "Search the Hugging Face hub's models (cached in the state database)",
        _ok(_list_of({"type": "object", "required": ["id", "source", "downloads", "likes", "files"], "properties": {
            "id": {"type": "string"}, "source": {"type": "string"}, "downloads": {"type": ["integer", "null"]},
            "likes": {"type": ["integer", "null"]}, "files": {"type": ["array", "null"], "items": {"type": "string"}}}})),
        _errors("BadRequest", "Unavailable"), tags=tags,
        parameters=[{"name": "q", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 200}},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}])
    return out


USAGE_TOTALS = {"requests": {"type": "integer"}, "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                "cached_tokens": {"type": "integer", "description": "Prompt tokens served from a prompt cache."},
                "cost_usd": {"type": "number", "description": "At the configured prices (`per_model.<model>.price`)."},
                "cache_hits": {"type": "integer"}, "errors": {"type": "integer", "description": "Rows whose outcome is not ok."},
                "fallbacks": {"type": "integer"}}
USAGE_REPORT = {
    "type": "object", "required": ["object", "group_by", "since", "until", "groups", "totals"],
    "properties": {
        "object": {"const": "usage"}, "group_by": {"type": "string", "enum": ["service", "model", "day", "client"]},
        "since": {"type": ["number", "null"], "description": "Unix time."}, "until": {"type": ["number", "null"]},
        "groups": {"type": "array", "items": {"type": "object", "properties": {
            "key": {"type": "string"}, **USAGE_TOTALS, "avg_latency_ms": {"type": ["number", "null"]},
            "avg_ttft_ms": {"type": ["number", "null"]}}}},
        "totals": {"type": "object", "properties": USAGE_TOTALS},
    },
}
USAGE_TIME = ("An ISO 8601 date or date and time (UTC unless it has an offset), Unix seconds, or an age such as "
              "`30m`, `24h`, `7d`.")
USAGE_PARAMETERS = [
    {"name": "group_by", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["service", "model", "day", "client"], "default": "service"}},
    {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}, "description": USAGE_TIME},
    {"name": "until", "in": "query", "required": False, "schema": {"type": "string"}, "description": USAGE_TIME},
]


def _operations_paths(tags: list[str]) -> dict:
    """The operator's tools: metrics, the debug page, the readiness checks, restarts."""
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    html = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
    feed = {"description": "`event: state` every half second: `{\"status\": (as /v1/status), \"services\": (as /llm/services' "
                           "data), \"log\": [the last lines of the daemon log]}`", "content": {SSE: {"schema": _ref("SseStream")}}}
    return {
        "/metrics": _get("metrics", "Prometheus metrics (text format 0.0.4)", text, _errors(), tags=tags,
                         description="Needs the API key on TCP unless `llm_service.metrics_public` is true."),
        "/debug": _get("debug_page", "The debug page (one HTML page, no external asset)", html, {}, tags=tags, security=[],
                       description="Open on TCP even when an API key is set: it holds no data; it asks for the key and sends "
                                   "it on its own requests. The Host check still applies."),
        "/v1/usage": _get(
            "usage", "Usage and cost: the usage rows grouped by service, model, day or client, with totals",
            _ok(USAGE_REPORT), _errors("BadRequest"), tags=tags, parameters=USAGE_PARAMETERS,
            description="One row per request that reached the router (answered, failed, rate limited or cancelled), "
                        "kept `llm.usage.retention_days`. `model` groups are `service~model`; `day` groups are UTC dates."),
        "/debug/feed": _get("debug_feed", "The debug page's live feed (server-sent events)", feed, _errors(), tags=tags),
        "/v1/health/checks": _post(
            "run_checks", "Run the readiness checks now (those of `msting llm health`), each with its result and timing",
            _body(NO_KEYS), _ok(_ref("Object"), "Every check passed"),
            {"503": {"description": "A check failed (the same body)", "content": {JSON: {"schema": _ref("Object")}}},
             **_errors("BadRequest")}, tags=tags),
        "/models/restart": _post("restart_model", "Restart a model's workers (each finishes its request first)",
                                 _body(RESTART_KEYS, required=("model",)), _ok(_ref("Object")),
                                 _errors("BadRequest", "NotFound", "PayloadTooLarge", "Unavailable"), tags=tags),
        "/v1/daemon/restart": _post(
            "restart_daemon", "Drain and restart the daemon in the same process", _body(NO_KEYS),
            {"description": "Restarting", "content": {JSON: {"schema": _ref("Object")}}},
            _errors("BadRequest", "Unavailable"), tags=tags, ok_status="202"),
    }


def _param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


SERVICE_PARAM = _param("name", "A service: `local`, `stub` or one of `llm.services`.")


def _service_paths(tags: list[str]) -> dict:
    """msting.http.services: the services behind the router, and their models."""
    unknown = _errors("NotFound")
    return {
        "/llm/services": _get("services", "Every service (local, stub, the remote ones): status, models, each URL's state",
                              _ok(_ref("ServiceList")), _errors(), tags=tags),
        "/llm/services/{name}": _get("service", "One service", _ok(_ref("Service")), unknown, tags=tags,
                                     parameters=[SERVICE_PARAM]),
        "/llm/services/{name}/models": _get("service_models", "One service's models, named as requests name them",
                                            _ok(_ref("ModelList")), unknown, tags=tags, parameters=[SERVICE_PARAM]),
        "/llm/services/{name}/models/{model}": _get(
            "service_model", "One model of one service", _ok(_ref("Model")), unknown, tags=tags,
            parameters=[SERVICE_PARAM, _param("model", "The service's own name of the model, or `default`.")]),
        "/llm/services/{name}/ping": _get(
            "ping_service", "A live check of each URL of the service, now", _ok(_ref("Ping"), "At least one URL answered"),
            {"503": {"description": "No URL answered (the same body)", "content": {JSON: {"schema": _ref("Ping")}}}, **unknown},
            tags=tags, parameters=[SERVICE_PARAM]),
        "/llm/services/{name}/capabilities": _get("service_capabilities", "What the service can do",
                                                  _ok(_ref("ServiceCapabilities")), unknown, tags=tags,
                                                  parameters=[SERVICE_PARAM]),
        "/llm/models": _get("llm_models", "Every model of every service, named as requests name them",
                            _ok(_ref("ModelList")), _errors(), tags=tags),
        "/llm/models/{name}": _get("llm_model", "One model, by any name a request may give", _ok(_ref("Model")), unknown,
                                   tags=tags, parameters=[_param("name", "`SERVICE~MODEL`, a bare model name, or `default`.")]),
    }


def _websockets() -> dict:
    generate = _body(ws.GENERATE_KEYS, required=("type", "id"), override={
        "type": {"const": "generate"},
        "id": {"type": "string", "minLength": 1, "maxLength": limits.MAX_NAME_CHARS, "description": "Not used by a running generation."}},
        extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})
    return {"/v1/ws": {
        "description": "JSON text messages, each with a `type`. Several generations may run at once on one connection; "
                       "closing it cancels them. A bad message is answered with an `error` message; the connection stays open.",
        "client_messages": {
            "generate": generate,
            "cancel": {"type": "object", "required": ["type", "id"], "properties": {"type": {"const": "cancel"}, "id": {"type": "string"}}},
            "subscribe": {"type": "object", "required": ["type", "topics"],
                          "properties": {"type": {"const": "subscribe"}, "topics": {"const": ["status"]}}},
        },
        "server_messages": {
            "token": {"type": "object", "properties": {"type": {"const": "token"}, "id": {"type": "string"}, "text": {"type": "string"}}},
            "done": {"type": "object", "properties": {"type": {"const": "done"}, "id": {"type": "string"}, "model": {"type": "string"},
                                                      "finish_reason": NATIVE_FINISH, "usage": _ref("Usage"), "timings": _ref("Timings")}},
            "error": {"type": "object", "properties": {"type": {"const": "error"}, "id": {"type": ["string", "null"]},
                                                       "error": {"$ref": "#/components/schemas/Error/properties/error"}}},
            "status": {"type": "object", "properties": {"type": {"const": "status"}, "readiness": {"type": "object"},
                                                        "models": {"type": "array", "items": {"type": "object"}}}},
        },
    }}


def build_document() -> dict:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "msting daemon API", "version": __version__,
            "description": "The always-ready local LLM service. Served on the daemon's Unix socket (mode 0600, own uid) and on "
                           "127.0.0.1 TCP (Host-checked; API-key protected when a key is set). Errors always have the `Error` "
                           f"shape. Every body (and WebSocket message) is parsed strictly: at most {limits.MAX_BODY_BYTES} "
                           f"bytes (else 413), valid UTF-8 without lone surrogates, finite numbers, integers within "
                           f"64 bits, objects and arrays nested at most {limits.MAX_DEPTH} deep (else 400). "
                           "See docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8086", "description": "the default TCP address (`llm_service.port`)"}],
        "security": [{}, {"bearer": []}],
        "tags": [{"name": "native"}, {"name": "openai", "description": "OpenAI-compatible"}, {"name": "admin"},
                 {"name": "services", "description": "The services behind the router (local, stub, remote) and their models"},
                 {"name": "jobs", "description": "Model management: installs, imports, updates, deletes, loads and unloads as "
                                                 "jobs (profile switches too), installed models, the hub's search"}],
        "paths": _paths(),
        "components": _components(),
        "x-websockets": _websockets(),
    }


def document_bytes() -> bytes:
    """The document as served and as committed in docs/openapi.json (built once)."""
    global _BYTES
    if _BYTES is None:
        _BYTES = (json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return _BYTES


_BYTES: bytes | None = None


async def openapi_json(request: Request) -> Response:
    return Response(document_bytes(), media_type=JSON)


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]


def main() -> int:
    sys.stdout.buffer.write(document_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
