"""Tool calling (OpenAI's function tools), as typed values every layer shares.

A chat request may declare `Tool`s and a `ToolChoice`; an assistant message in its
history may carry the `ToolCall`s it made, and a `tool` message the result of one. A
reply may end in tool calls: a non-streamed one carries them whole (`Done.tool_calls`),
a stream carries them as `ToolCallDelta` events, as OpenAI streams them: the first
delta of a call (its `index`) gives its id and name, the later ones pieces of its
arguments. `ToolCallBuilder` puts the deltas back together; `deltas_of` takes whole
calls apart (a wire whose upstream sends whole calls, a cached answer replayed).

Dependency-free, like the rest of msting.api. A tool's JSON schema and a call's
arguments are JSON text, so these values stay frozen and hashable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

TOOL_CHOICES = ("none", "auto", "required")  # and "function": that one tool, by name
FINISH_TOOL_CALLS = "tool_calls"


@dataclass(frozen=True)
class Tool:
    """A function the model may call. `parameters` is its JSON schema as JSON text
    (None: it takes no arguments)."""

    name: str
    description: str | None = None
    parameters: str | None = None
    strict: bool | None = None

    def schema(self) -> dict[str, Any] | None:
        return None if self.parameters is None else json.loads(self.parameters)

    def as_dict(self) -> dict[str, Any]:
        """As OpenAI's API writes it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.schema()
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """Whether the model may, must or must not call a tool: `mode` is none, auto,
    required, or function (then it must call the tool named `name`)."""

    mode: str
    name: str | None = None

    def as_openai(self) -> str | dict[str, Any]:
        return {"type": "function", "function": {"name": self.name}} if self.mode == "function" else self.mode


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: its id, the tool's name, the arguments as JSON text."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def arguments_object(self) -> Any:
        """The arguments parsed (ValueError when they are not JSON)."""
        return json.loads(self.arguments) if self.arguments.strip() else {}


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call. The first piece of a call (a new `index`) has
    its `id` and `name`; every piece may add to its `arguments`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_openai(self) -> dict[str, Any]:
        """The entry of a chunk's `delta.tool_calls`, as OpenAI streams it."""
        if self.id is not None or self.name is not None:
            return {"index": self.index, "id": self.id, "type": "function",
                    "function": {"name": self.name, "arguments": self.arguments}}
        return {"index": self.index, "function": {"arguments": self.arguments}}


class ToolCallBuilder:
    """Whole `ToolCall`s from a stream's deltas, in index order."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]

    def add(self, delta: ToolCallDelta) -> None:
        call = self._calls.setdefault(delta.index, ["", "", ""])
        if delta.id:
            call[0] = delta.id
        if delta.name:
            call[1] = delta.name
        call[2] += delta.arguments

    def __bool__(self) -> bool:
        return bool(self._calls)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(*self._calls[i]) for i in sorted(self._calls))


def deltas_of(calls: Iterable[ToolCall], first_index: int = 0) -> list[ToolCallDelta]:
    """Whole calls as a stream carries them: each call's id and name, then its arguments."""
    out: list[ToolCallDelta] = []
    for i, call in enumerate(calls, first_index):
        out.append(ToolCallDelta(i, call.id, call.name, ""))
        if call.arguments:
            out.append(ToolCallDelta(i, arguments=call.arguments))
    return out
