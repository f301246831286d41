"""msting.providers.remote.formats: each api_format names its wire; no other name does."""

from __future__ import annotations

import pytest

from msting.providers.remote.anthropic import AnthropicWire
from msting.providers.remote.formats import API_FORMATS, wire_for
from msting.providers.remote.ollama import OllamaWire
from msting.providers.remote.openai import OpenAIWire


def test_each_format_has_its_wire():
    assert API_FORMATS == ("openai", "ollama", "anthropic")
    for name, kind in zip(API_FORMATS, (OpenAIWire, OllamaWire, AnthropicWire)):
        wire = wire_for(name)
        assert isinstance(wire, kind) and wire.api_format == name


def test_an_unknown_format_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown api_format 'gemini'; the formats are: openai, ollama, anthropic"):
        wire_for("gemini")
