"""How a client's JSON value is named in an error message (shared by the HTTP body
parser and the worker's frame decoder). Dependency-free."""

from __future__ import annotations

from typing import Any


def json_kind(value: Any) -> str:
    """How a JSON value is named in an error message: 'an array', 'null', ..."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
