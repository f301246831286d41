"""Validation of what the daemon sends a worker: the ``--spec`` JSON and the fields of
``generate`` and ``embed`` frames.

Dependency-free (like :mod:`msting.worker.protocol`), so it is cheap to import and
unit-testable without llama.cpp. Every function raises :class:`BadRequest` (a
``ValueError``) with a message meant for the API client, or returns plain keyword
arguments for :class:`msting.worker.engine.Engine`.

The HTTP layer has checked a client's request already; the same ranges are checked
here again (:mod:`msting.api.limits`, one definition), so that no frame, whoever
wrote it, hands llama.cpp a value it would wrap or choke on: a seed beyond uint32, a
non-finite temperature, a text that is not valid Unicode.
"""

from __future__ import annotations

import math
from typing import Any

from msting.api import limits

DEFAULT_N_CTX = 2048
PARALLEL = (1, 64)  # sequences one worker serves at once (slots)
MAX_CHOICES = 64  # strings a generate's `choices` may list (the router model's routes)
MAX_CHOICE_CHARS = 64


class BadRequest(ValueError):
    """A frame (or the spec) is not valid; the message says why."""


def _number(frame: dict[str, Any], name: str, default: float, bounds: tuple[float, float]) -> float:
    value = frame.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{name}' must be a number")
    lo, hi = bounds
    if isinstance(value, float) and not math.isfinite(value) or not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be between {lo:g} and {hi:g}, got {_shown(value)}")
    return float(value)


def _integer(frame: dict[str, Any], name: str, default: int | None, bounds: tuple[int, int]) -> int | None:
    value = frame.get(name)
    if value is None:
        return default
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be an integer from {lo} to {hi}, got {_shown(value)}")
    return value


def _text(value: str, where: str) -> str:
    """`value`, if it is valid Unicode (a lone surrogate cannot be tokenized)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadRequest(f"{where} is not valid Unicode (a lone surrogate at character {exc.start})") from None
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _request_id(frame: dict[str, Any]) -> str:
    req_id = frame.get("id")
    if not isinstance(req_id, str) or not req_id:
        raise BadRequest(f"a {frame.get('type', '?')} frame needs a non-empty string 'id'")
    return req_id


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"messages[{i}].role must be a non-empty string")
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        out.append({"role": _text(role, f"messages[{i}].role"), "content": _text(content, f"messages[{i}].content")})
        # other keys are not passed on
    return out


def parse_generate(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``generate`` frame.

    Returns the engine's keyword arguments (exactly one of ``prompt`` / ``messages``
    is not None) plus ``stream``.
    """
    _request_id(frame)
    prompt, messages = frame.get("prompt"), frame.get("messages")
    if prompt is not None and messages is not None:
        raise BadRequest("send either 'prompt' or 'messages', not both")
    if prompt is None and messages is None:
        raise BadRequest("'prompt' (a string) or 'messages' (a list) is required")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        _text(prompt, "'prompt'")
    if messages is not None:
        messages = _messages(messages)
    max_tokens = _integer(frame, "max_tokens", limits.DEFAULT_MAX_TOKENS, limits.MAX_TOKENS)
    stop = frame.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings")
    if len(stop) > limits.MAX_STOP_SEQUENCES:
        raise BadRequest(f"'stop' may hold at most {limits.MAX_STOP_SEQUENCES} strings, got {len(stop)}")
    for i, s in enumerate(stop):
        _text(s, f"stop[{i}]")
    seed = _integer(frame, "seed", None, limits.SEED)
    stream = frame.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    choices = _choices(frame.get("choices"))
    return {
        **({"choices": choices} if choices else {}),
        "prompt": prompt,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": _number(frame, "temperature", limits.DEFAULT_TEMPERATURE, limits.TEMPERATURE),
        "top_p": _number(frame, "top_p", limits.DEFAULT_TOP_P, limits.TOP_P),
        "presence_penalty": _number(frame, "presence_penalty", limits.DEFAULT_PRESENCE_PENALTY, limits.PRESENCE_PENALTY),
        "frequency_penalty": _number(frame, "frequency_penalty", limits.DEFAULT_FREQUENCY_PENALTY, limits.FREQUENCY_PENALTY),
        "stop": [s for s in stop if s],
        "seed": None if seed == limits.RANDOM_SEED else seed,  # None: a random seed
        "stream": stream,
    }


def _choices(value: Any) -> list[str] | None:
    """The optional `choices`: the output is exactly one of these strings (null or an
    empty list: unconstrained)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) > MAX_CHOICES:
        raise BadRequest(f"'choices' must be a list of at most {MAX_CHOICES} strings")
    for i, choice in enumerate(value):
        if not isinstance(choice, str) or not choice or len(choice) > MAX_CHOICE_CHARS:
            raise BadRequest(f"choices[{i}] must be a non-empty string of at most {MAX_CHOICE_CHARS} characters")
        _text(choice, f"choices[{i}]")
    return list(value)


def parse_embed(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate an ``embed`` frame; returns ``{"inputs": [str, ...]}``."""
    _request_id(frame)
    inputs = frame.get("input")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'input' must be a non-empty list of strings")
    if len(inputs) > limits.MAX_EMBEDDING_INPUTS:
        raise BadRequest(f"'input' may hold at most {limits.MAX_EMBEDDING_INPUTS} strings, got {len(inputs)}")
    for i, text in enumerate(inputs):
        if not isinstance(text, str) or not text:
            raise BadRequest(f"input[{i}] must be a non-empty string")
        _text(text, f"input[{i}]")
    return {"inputs": list(inputs)}


def parse_spec(spec: Any) -> dict[str, Any]:
    """Validate the worker's ``--spec`` object (already JSON-decoded).

    Raises BadRequest; the worker turns that into a boot error (exit 3).
    """
    if not isinstance(spec, dict):
        raise BadRequest("--spec must be a JSON object")
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise BadRequest("--spec needs a 'path' string")

    def opt_int(name: str, default: int | None) -> int | None:
        value = spec.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"--spec '{name}' must be an integer")
        return value

    n_ctx = opt_int("n_ctx", DEFAULT_N_CTX)
    n_threads = opt_int("n_threads", None)
    parallel = opt_int("parallel", 1)
    if not PARALLEL[0] <= parallel <= PARALLEL[1]:
        raise BadRequest(f"--spec 'parallel' must be an integer from {PARALLEL[0]} to {PARALLEL[1]}, got {parallel}")
    embedding = spec.get("embedding")
    if embedding is None:
        embedding = False
    elif not isinstance(embedding, bool):
        raise BadRequest("--spec 'embedding' must be a boolean")
    chat_format = spec.get("chat_format")
    if chat_format is not None and not isinstance(chat_format, str):
        raise BadRequest("--spec 'chat_format' must be a string or null")
    return {
        "name": spec.get("name"),
        "path": path,
        "n_ctx": n_ctx if n_ctx and n_ctx > 0 else DEFAULT_N_CTX,
        "n_threads": n_threads if n_threads and n_threads > 0 else None,
        "parallel": parallel,
        "n_gpu_layers": opt_int("n_gpu_layers", 0) or 0,
        "seed": _spec_seed(opt_int("seed", None)),
        "embedding": embedding,
        "chat_format": chat_format or None,
    }


def _spec_seed(seed: int | None) -> int | None:
    if seed is None or seed == limits.RANDOM_SEED:
        return None
    lo, hi = limits.SEED
    if not lo <= seed <= hi:
        raise BadRequest(f"--spec 'seed' must be an integer from {lo} to {hi}, got {seed}")
    return seed
