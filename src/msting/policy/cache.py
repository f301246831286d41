"""The response cache: exact-match answers to reproducible generation requests.

Where it lives: in the daemon's memory (an LRU dict), empty at each start. A hit must
answer in well under 2 ms over the Unix socket; a SQLite read plus its JSON would
spend much of that, and answers are cheap to make again after a restart. Bounded by
``max_entries`` and ``max_bytes`` (the text and key sizes, counted), each entry lives
``ttl_sec``; the oldest-used go first.

The key. A request is cacheable when its answer is reproducible: temperature 0, or a
fixed seed. Its key is the canonical JSON (sorted keys, no whitespace, UTF-8) of
everything that changes the output: the profile, the resolved ``service~model``, the
kind (chat or completion), the prompt or every message's role and content (and its
tool calls, or the call a tool result answers), the tools, tool_choice and
parallel_tool_calls, and every sampling parameter (max_tokens, temperature, top_p,
penalties, stop, seed, choices);
the dict key is its SHA-256. The entry keeps the canonical text too and a hit compares
it, so two requests that differ in one parameter can never share an answer, not even
through a hash collision.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from msting.api.events import Usage
from msting.api.requests import ChatRequest, CompletionRequest, GenerationRequest, Message, SamplingParams
from msting.api.tools import ToolCall

ENTRY_OVERHEAD = 256  # bytes an entry costs beyond its texts (a rough, fixed share)


def reproducible(sampling: SamplingParams) -> bool:
    """Is the answer the same each time? Greedy sampling, or a fixed seed."""
    return sampling.temperature == 0 or sampling.seed is not None


def canonical(request: GenerationRequest, profile: str, service: str, model: str) -> str:
    """The canonical serialization of what makes `request`'s answer (see the module)."""
    body: dict = {"v": 2, "profile": profile, "service": service, "model": model, "sampling": request.sampling.as_dict()}
    if isinstance(request, ChatRequest):
        body["kind"] = "chat"
        body["messages"] = [_message(m) for m in request.messages]
        if request.tools or request.tool_choice is not None or request.parallel_tool_calls is not None:
            body["tools"] = [t.as_dict() for t in request.tools]
            body["tool_choice"] = request.tool_choice.as_openai() if request.tool_choice is not None else None
            body["parallel_tool_calls"] = request.parallel_tool_calls
    else:
        assert isinstance(request, CompletionRequest)
        body["kind"] = "completion"
        body["prompt"] = request.prompt
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _message(m: Message) -> list:
    if m.tool_calls:
        return [m.role, m.content, [c.as_dict() for c in m.tool_calls]]
    if m.tool_call_id is not None:
        return [m.role, m.content, m.tool_call_id]
    return [m.role, m.content]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit answers with: the reply's text and tool calls, why it ended, its
    usage, and the model that made it (its public name)."""

    model: str
    text: str
    finish_reason: str | None
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass
class _Entry:
    canonical: str
    answer: CachedAnswer
    expires: float
    size: int


class ResponseCache:
    def __init__(self, *, ttl_sec: float, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_sec = ttl_sec
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, canonical_text: str) -> CachedAnswer | None:
        key = digest(canonical_text)
        entry = self._entries.get(key)
        if entry is None or entry.canonical != canonical_text:
            self.misses += 1
            return None
        if entry.expires <= self._clock():
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.answer

    def peek(self, canonical_text: str) -> bool:
        """Is there a live answer for this key? (Counts nothing, moves nothing.)"""
        entry = self._entries.get(digest(canonical_text))
        return entry is not None and entry.canonical == canonical_text and entry.expires > self._clock()

    def put(self, canonical_text: str, answer: CachedAnswer) -> None:
        calls = sum(len(c.id) + len(c.name) + len(c.arguments) for c in answer.tool_calls)
        size = ENTRY_OVERHEAD + 2 * (len(canonical_text) + len(answer.text) + len(answer.model) + calls)
        if size > self.max_bytes:
            return
        key = digest(canonical_text)
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(canonical_text, answer, self._clock() + self.ttl_sec, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                "ttl_sec": self.ttl_sec, "max_entries": self.max_entries, "max_bytes": self.max_bytes}
