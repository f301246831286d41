"""What the three wire formats share: the lines of a Server-Sent Events stream as
(event, data) pairs, and the reading of the JSON the upstreams send back.

Pure functions and one small line parser; no I/O.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from msting.api.errors import MstingError, Unavailable, UpstreamError
from msting.api.events import Failed

# An error reply's text (an HTML page, a proxy's banner) is cut to this many characters
# before it reaches the client and the log.
MAX_ERROR_TEXT = 1000

# Words of an upstream error that mean "busy, try again later", not "this request is wrong".
_OVERLOADED_WORDS = ("overload", "rate_limit", "rate limit", "too many requests", "busy")
_OVERLOADED_STATUSES = (429, 503, 529)


class SseParser:
    """Turns the lines of an SSE stream, fed one at a time, into (event, data) pairs.

    The APIs msting speaks (OpenAI and its compatible servers, Anthropic) put each
    event's data on one line, so a `data:` line is handed on at once rather than at the
    blank line that ends its event: no token waits for the next line, and a caller that
    drops blank lines loses nothing. `event` is the name the event's `event:` line gave,
    "message" (the SSE default) when it gave none. Comments (":"), blank lines and the
    other fields (`id:`, `retry:`) yield None.
    """

    def __init__(self) -> None:
        self._event = "message"
        self._first = True

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._event = "message"  # the end of an event: its name does not carry over
            return None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value or "message"
        elif name == "data":
            return self._event, value
        return None


_decode = msgspec.json.Decoder().decode


def json_object(text: str) -> dict[str, Any] | None:
    """`text` parsed as a JSON object, or None when it is not one. msgspec parses it (in
    C, on the token path); what it refuses and Python's json reads (NaN, a number out of
    range, a lone surrogate) is read as json reads it."""
    try:
        value = _decode(text)
    except ValueError:  # msgspec.DecodeError
        try:
            value = json.loads(text)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def count(value: Any) -> int:
    """A token count from a reply: 0 when it is absent or not a non-negative integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def positive_int(value: Any) -> int | None:
    """A size from a reply (a context length), or None when it is not a positive integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def vector(value: Any) -> list[float] | None:
    """An embedding vector from a reply, or None when it is not a list of numbers."""
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return None
    return [float(x) for x in value]


def bad_reply(api: str, what: str) -> UpstreamError:
    """The error for a reply without the documented shape; `what` says what came instead."""
    return UpstreamError("upstream_bad_reply", f"the {api} upstream sent {what}, not the reply its API documents")


def model_entries(api: str, body: Any) -> list[tuple[str, dict[str, Any]]]:
    """(id, entry) of each entry of a `{"data": [{"id": ...}, ...]}` model list (the
    OpenAI and Anthropic shape)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise bad_reply(api, "a model list without a data list")
    found = []
    for entry in data:
        name = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_reply(api, "a model list with an entry that has no id")
        found.append((name, entry))
    return found


def stream_error(api: str, message: str, busy: bool) -> Failed:
    """The event for an error the upstream reported mid-stream: an overload or a rate
    limit (`busy`: worth trying elsewhere, or later) is Unavailable, anything else UpstreamError."""
    text = f"the {api} upstream failed mid-stream: {cut(message) or 'no message given'}"
    error: MstingError = Unavailable("upstream_overloaded", text) if busy else UpstreamError("upstream_error", text)
    return Failed(error)


def overloaded(*hints: Any) -> bool:
    """Whether an error's message, type, code or status (`hints`) says the upstream is
    busy or rate-limited rather than the request wrong."""
    for hint in hints:
        if isinstance(hint, int) and not isinstance(hint, bool) and hint in _OVERLOADED_STATUSES:
            return True
        if isinstance(hint, str) and any(word in hint.lower() for word in _OVERLOADED_WORDS):
            return True
    return False


def says_embeddings(*names: Any) -> bool:
    """Whether a model's name or family marks it as an embeddings model (nomic-embed-text,
    family "nomic-bert"; text-embedding-3-small)."""
    return any(isinstance(n, str) and ("embed" in n.lower() or "bert" in n.lower()) for n in names)


def cut(text: str) -> str:
    """An upstream's message as the client and the log get it: stripped, at most
    MAX_ERROR_TEXT characters."""
    text = text.strip()
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + " [...]"


def error_text(status: int, body: Any) -> str:
    """The fallback message of an error reply: its text (cut), else its status."""
    if isinstance(body, str) and body.strip():
        return cut(body)
    if body not in (None, "", {}, []) and not isinstance(body, str):
        return cut(json.dumps(body, ensure_ascii=False, default=str))
    return f"HTTP {status} with no error message"
