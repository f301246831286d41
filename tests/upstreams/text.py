"""Deterministic reply text and embedding vectors, shared by the three stand-ins.

A reply echoes the words of the prompt (lowercased, punctuation dropped), cycled up to
`natural` words (the stand-in's ``--reply-words``, 12 unless told): the prompt "Say hello"
gives "say hello say hello ...". One word is one token and one streamed chunk (the first
bare, the next ones with a leading space), so the protocols' token limits
(``max_tokens``, ``num_predict``, ``max_completion_tokens``) are word counts:

* a limit below the natural length stops the reply there: finish ``length``;
* a stop sequence ends the text just before its first occurrence in the natural reply
  (the chunk it falls in is shortened, the chunks after it dropped): finish ``stop`` with
  the sequence recorded (Anthropic's ``stop_sequence``);
* otherwise the reply has its natural length: finish ``stop``.

An empty prompt echoes the word "ok".

Tools. Given tools (and a tool choice other than none), a stand-in whose last message is
not a tool's result calls one tool, deterministically (`tool_call`): the one the choice
names, else the first; its arguments fill each property of the tool's schema from the
prompt (a string property gets the prompt's words, a number their count, a boolean
true), and stream as `ARGUMENT_PIECES` pieces. After a tool result the reply echoes
that result's words: the model "read" it.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

DEFAULT_REPLY_WORDS = 12
EMBEDDING_DIMS = 8
_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def count_tokens(*texts: str) -> int:
    """The stand-ins' token count of a prompt: its words."""
    return sum(len(words_of(t)) for t in texts)


@dataclass
class Reply:
    chunks: list[str]  # the streamed pieces, in order; "".join(chunks) == text
    finish: str  # "stop" | "length"
    stop_sequence: str | None = None  # the stop sequence that ended the reply, if one did
    prompt_tokens: int = 0
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = "".join(self.chunks)

    @property
    def completion_tokens(self) -> int:
        return len(self.chunks)


def reply(source: str, *, prompt_tokens: int | None = None, max_words: int | None = None, stop: Iterable[str] = (),
          natural: int = DEFAULT_REPLY_WORDS) -> Reply:
    """The reply to a prompt whose words are those of `source`.

    `max_words` None (or negative) is no limit; `prompt_tokens` defaults to the words of `source`.
    """
    base = words_of(source) or ["ok"]
    natural_chunks = [(w if i == 0 else " " + w) for i, w in enumerate(base[i % len(base)] for i in range(natural))]
    full = "".join(natural_chunks)
    hits = [(full.find(s), s) for s in stop if s and s in full]
    stop_at, stop_seq = min(hits) if hits else (len(full), None)
    chunks: list[str] = []
    pos = 0
    for chunk in natural_chunks:
        if pos >= stop_at:
            break
        chunks.append(chunk[: stop_at - pos])
        pos += len(chunk)
    finish = "stop"
    if max_words is not None and 0 <= max_words < len(chunks):
        chunks, finish, stop_seq = chunks[:max_words], "length", None
    return Reply(chunks, finish, stop_seq, count_tokens(source) if prompt_tokens is None else prompt_tokens)


def as_stop_list(value: str | Sequence[str] | None) -> list[str]:
    """A protocol's ``stop`` value (a string, a list, or absent) as a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [s for s in value if isinstance(s, str)]


def embedding(text: str, dims: int = EMBEDDING_DIMS) -> list[float]:
    """A unit vector of `dims` floats drawn from SHA-256 of `text` (the same text, the same vector)."""
    raw = b""
    counter = 0
    while len(raw) < 4 * dims:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [u / 0xFFFFFFFF * 2 - 1 for u in struct.unpack(f"<{dims}I", raw[: 4 * dims])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


ARGUMENT_PIECES = 3  # how many pieces a streamed tool call's arguments come in


@dataclass
class Call:
    """The one tool call a stand-in makes: the tool, its arguments as JSON text, and the
    arguments split as they stream."""

    name: str
    arguments: str
    pieces: list[str]
    prompt_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


def tool_call(tools: Sequence[tuple[str, dict | None]], named: str | None, prompt: str, prompt_tokens: int = 0) -> Call | None:
    """The call made given `tools` ((name, JSON schema) pairs) and the tool the choice
    names (None: any); None when there are no tools."""
    if not tools:
        return None
    name, schema = next((t for t in tools if t[0] == named), tools[0])
    words = " ".join(words_of(prompt)) or "ok"
    arguments = {}
    for key, spec in ((schema or {}).get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        arguments[key] = (len(words.split()) if kind in ("integer", "number") else True if kind == "boolean"
                          else None if kind in ("object", "array", "null") else words)
    text = json.dumps(arguments)
    step = max(1, -(-len(text) // ARGUMENT_PIECES))
    return Call(name, text, [text[i:i + step] for i in range(0, len(text), step)], prompt_tokens)
