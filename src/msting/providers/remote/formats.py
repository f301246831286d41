"""The wire formats by name: a remote service's `api_format` names one of API_FORMATS."""

from __future__ import annotations

from msting.providers.remote.anthropic import AnthropicWire
from msting.providers.remote.ollama import OllamaWire
from msting.providers.remote.openai import OpenAIWire
from msting.providers.remote.wire import Wire

_WIRES: dict[str, type[Wire]] = {"openai": OpenAIWire, "ollama": OllamaWire, "anthropic": AnthropicWire}
API_FORMATS = tuple(_WIRES)


def wire_for(api_format: str) -> Wire:
    """The wire of `api_format`; a ValueError naming the known formats for any other."""
    wire = _WIRES.get(api_format)
    if wire is None:
        raise ValueError(f"unknown api_format {api_format!r}; the formats are: {', '.join(API_FORMATS)}")
    return wire()
