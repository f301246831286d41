"""The one strict JSON parser for request bodies and WebSocket messages.

Every route that takes a body, and every message on ``/v1/ws``, goes through
:func:`parse_json`; nothing else in the daemon decodes client JSON. What it accepts is
JSON (RFC 8259) that a worker can take without surprise:

- at most :data:`~msting.api.limits.MAX_BODY_BYTES` bytes (413, ``body_too_large``;
  Content-Length is checked before a byte is read, and a chunked body is counted as it
  arrives);
- valid UTF-8 and valid Unicode: no invalid bytes, no lone surrogate escape such as
  ``"\\ud800"``, in keys or values (``invalid_unicode``);
- finite numbers only: no ``NaN``/``Infinity`` literals, no ``1e400``; every integer
  within 64 bits (``invalid_number``);
- objects and arrays nested at most :data:`~msting.api.limits.MAX_DEPTH` deep
  (``nesting_too_deep``).

msgspec decodes in C and already refuses the literals, invalid UTF-8, lone surrogates,
floats that overflow and integers of more than 4300 digits; it recurses about 1000
levels before a RecursionError. One pass over the decoded containers then enforces the
depth limit and the 64-bit integer range (and finiteness, in case a decoder ever lets
a non-finite float through). Errors are 400s (413 for size) that say what was wrong
and where, never a Python exception's text.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request

from msting.api.errors import InvalidRequest, TooLarge
from msting.api.limits import INT64, MAX_BODY_BYTES, MAX_DEPTH
from msting.api.values import json_kind

_INT_MIN, _INT_MAX = INT64
_INF = float("inf")
_decode = msgspec.json.Decoder().decode
_BYTE_AT = re.compile(r"\(byte (\d+)\)")
# A \uXXXX escape (an odd number of backslashes before the u): for the message only.
_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})")
_NON_FINITE = (b"NaN", b"Infinity", b"-Infinity", b"+Infinity", b"-NaN", b"+NaN")


def _error(status: int, code: str, message: str) -> InvalidRequest:
    return TooLarge(code, message) if status == 413 else InvalidRequest(code, message)


def too_large(size: int | None, what: str = "the request body") -> InvalidRequest:
    told = f"{size} bytes" if size is not None else "larger than that"
    return _error(413, "body_too_large", f"{what} is {told}, over the limit of {MAX_BODY_BYTES} bytes ({MAX_BODY_BYTES / 1048576:g} MiB)")


# ---- reading ---------------------------------------------------------------------


async def read_body(request: Request) -> bytes:
    """The whole body, at most MAX_BODY_BYTES (else a 413 InvalidRequest). A client that
    disconnects meanwhile raises starlette's ClientDisconnect."""
    length = None
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            length = value
            break
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large(int(length))
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_large(None)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json_object(request: Request) -> dict:
    """Read the body as a JSON object, whatever the Content-Type says (`curl -d`
    sends a form type)."""
    return parse_object(await read_body(request))


# ---- parsing ---------------------------------------------------------------------


def parse_object(data: bytes | str, what: str = "the request body") -> dict:
    """:func:`parse_json` that also wants a JSON object at the top."""
    value = parse_json(data, what)
    if type(value) is not dict:
        raise _error(400, "invalid_body", f"{what} must be a JSON object, got {json_kind(value)}")
    return value


def parse_json(data: bytes | str, what: str = "the request body") -> Any:
    """Decode one JSON document under the rules above, or raise a 400/413 InvalidRequest.
    `what` names the input in messages ("the request body", "the message")."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _error(400, "invalid_unicode", f"{what} is not valid Unicode (a lone surrogate at character {exc.start})") from None
    if len(data) > MAX_BODY_BYTES:
        raise too_large(len(data), what)
    if not data.strip():
        raise _error(400, "invalid_json", f"{what} is empty; send a JSON object")
    try:
        value = _decode(data)
    except msgspec.DecodeError as exc:  # ValidationError too: numbers out of range
        raise _decode_error(data, str(exc), what) from None
    except RecursionError:
        raise _too_deep(what, None) from None
    t = type(value)
    if t is dict or t is list:
        try:
            _check(value)
        except _Bad as bad:
            raise bad.error(what) from None
    elif t is int and not _INT_MIN <= value <= _INT_MAX or t is float and not -_INF < value < _INF:
        raise _Bad("invalid_number", _number_problem(value), []).error(what)
    return value


def _check(root: dict | list) -> None:
    """Depth and number checks over every decoded value, one level at a time (no call
    per container). Strings need none: the decoder only produces valid Unicode."""
    level = [root]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            _raise_located(root)
        deeper: list = []
        push = deeper.append
        for container in level:
            for value in container.values() if type(container) is dict else container:
                t = type(value)
                if t is str:
                    continue
                if t is int:
                    if not _INT_MIN <= value <= _INT_MAX:
                        _raise_located(root)
                elif t is float:
                    if not -_INF < value < _INF:  # also false for NaN
                        _raise_located(root)
                elif t is dict or t is list:
                    push(value)
        level = deeper
        depth += 1


class _Bad(Exception):
    def __init__(self, code: str, problem: str, path: list):
        self.code = code
        self.problem = problem
        self.path = path

    def error(self, what: str) -> InvalidRequest:
        where = "$" + "".join(f"[{k}]" if type(k) is int else f".{_shown_key(k)}" for k in self.path)
        if len(where) > 120:
            where = where[:120] + "..."
        if self.code == "nesting_too_deep":
            return _too_deep(what, where)
        return _error(400, self.code, f"{what} has {self.problem} at {where}")


def _raise_located(root: dict | list) -> None:
    """Find where the problem _check saw is (depth first, so the path is at hand) and
    raise it; only runs for a body that is refused."""

    def visit(container: dict | list, depth: int, path: list) -> None:
        if depth > MAX_DEPTH:
            raise _Bad("nesting_too_deep", "", path)
        for key, value in container.items() if type(container) is dict else enumerate(container):
            t = type(value)
            if (t is int and not _INT_MIN <= value <= _INT_MAX) or (t is float and not -_INF < value < _INF):
                raise _Bad("invalid_number", _number_problem(value), [*path, key])
            if t is dict or t is list:
                visit(value, depth + 1, [*path, key])

    visit(root, 1, [])
    raise _Bad("invalid_body", "a value that cannot be checked", [])  # not reached


def _number_problem(value: int | float) -> str:
    if type(value) is float:
        return "a number that is not finite"
    return f"an integer of {len(str(abs(value)))} digits, outside the 64-bit range ({_INT_MIN} to {_INT_MAX})"


def _too_deep(what: str, where: str | None) -> InvalidRequest:
    at = f" (at {where})" if where else ""
    return _error(400, "nesting_too_deep", f"{what} nests objects and arrays deeper than {MAX_DEPTH} levels{at}")


def _decode_error(data: bytes, message: str, what: str) -> InvalidRequest:
    """A 400 for what msgspec refused, in words a client can act on."""
    if "out of range" in message:  # a float beyond double, an integer beyond 4300 digits
        kind = "an integer with too many digits" if message.startswith("Integer") else "a number too large to be finite (beyond 1.8e308)"
        return _error(400, "invalid_number", f"{what} has {kind}; numbers must be finite and integers within 64 bits")
    if "UTF-8" in message:
        try:
            data.decode("utf-8")
            at = ""
        except UnicodeDecodeError as exc:
            at = f" at byte {exc.start}"
        return _error(400, "invalid_unicode", f"{what} is not valid UTF-8{at}")
    lone = _lone_surrogate(data) if ("surrogate" in message or "truncated" in message) else None
    if lone is not None:
        return _error(400, "invalid_unicode", f"{what} has a lone UTF-16 surrogate escape (byte {lone}); "
                                              "\\ud800-\\udfff must come in high-low pairs")
    m = _BYTE_AT.search(message)
    if m is not None and data[int(m.group(1)):].startswith(_NON_FINITE):
        return _error(400, "invalid_number", f"{what} has NaN or Infinity (byte {m.group(1)}); these are not JSON, "
                                             "send a finite number")
    return _error(400, "invalid_json", f"{what} is not valid JSON: {message}")


def _lone_surrogate(data: bytes) -> int | None:
    """The byte offset of the first unpaired \\ud800-\\udfff escape, or None."""
    high_at = high_end = None
    for m in _ESCAPE.finditer(data):
        code = int(m.group(1), 16)
        start = m.end() - 6
        if high_at is not None:
            if start == high_end and 0xDC00 <= code <= 0xDFFF:
                high_at = None
                continue
            return high_at
        if 0xD800 <= code <= 0xDBFF:
            high_at, high_end = start, m.end()
        elif 0xDC00 <= code <= 0xDFFF:
            return start
    return high_at


def _shown_key(key: object) -> str:
    text = str(key)
    return text if len(text) <= 40 else text[:40] + "..."
