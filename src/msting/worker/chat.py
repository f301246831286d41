"""Chat prompts: OpenAI-style ``messages`` rendered into one prompt string.

Which format is used (chosen once, at model load):

1. the spec's ``chat_format`` override: a llama-cpp-python chat format name
   ("chatml", "llama-2", "mistral-instruct", ...) or "transcript";
2. else the model's own Jinja template (GGUF ``tokenizer.chat_template``), reported
   as "gguf-template", rendered by llama-cpp-python's ``Jinja2ChatFormatter`` with
   the model's BOS/EOS token strings and ``add_generation_prompt=True``;
3. else the fallback "transcript": a plain ``System:/User:/Assistant:`` dialogue
   (see TRANSCRIPT_TEMPLATE). A model without a template is most likely a base
   model, which continues a plain-text dialogue far better than control markers it
   never saw; the stop strings "\\nUser:" and "\\nSystem:" keep it from writing the
   next turn itself.

The rendered prompt is tokenized with special tokens parsed, and gets a BOS token
when the model asks for one and the prompt does not already start with it (what
llama.cpp's server does; llama-cpp-python instead never adds one after a Jinja
template, and adds a second one after a named format that wrote "<s>").

This module does not import ``llama_cpp``: the engine passes in its
``llama_cpp.llama_chat_format`` module (the engine stays the only importer).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

GGUF_TEMPLATE = "gguf-template"
TRANSCRIPT = "transcript"

# Rendered by Jinja2ChatFormatter like any GGUF template. Roles are capitalized
# ("system" -> "System:"); no trailing space after "Assistant:" because
# SentencePiece/BPE vocabularies attach the space to the next word.
TRANSCRIPT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TRANSCRIPT_STOPS = ("\nUser:", "\nSystem:")


class ChatError(ValueError):
    """The messages cannot be rendered (the template rejected them)."""


@dataclass(frozen=True)
class ChatPrompt:
    prompt: str
    stop: list[str] = field(default_factory=list)  # text stops, or special tokens
    stop_token_ids: list[int] = field(default_factory=list)


class ChatFormat:
    """One way of turning messages into a prompt (a llama-cpp-python chat formatter)."""

    def __init__(
        self,
        name: str,
        formatter: Any,
        extra_stops: tuple[str, ...] = (),
        stop_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self._formatter = formatter
        self._extra_stops = list(extra_stops)
        self._stop_token_ids = list(stop_token_ids)

    def render(self, messages: list[dict[str, str]]) -> ChatPrompt:
        try:
            response = self._formatter(messages=messages)
        except Exception as exc:  # raise_exception() in templates, jinja2 errors
            raise ChatError(
                f"the {self.name} chat format cannot render these messages: {exc}"
            ) from None
        stop = response.stop
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stops = [s for s in stops + self._extra_stops if s]
        return ChatPrompt(
            prompt=response.prompt,
            stop=list(dict.fromkeys(stops)),
            stop_token_ids=self._stop_token_ids,
        )


def named_formats(chat_format_module: Any) -> dict[str, Any]:
    """The llama-cpp-python chat formats usable as prompt formatters, by name.

    llama-cpp-python registers each formatter wrapped in a completion handler; the
    formatter is that handler's ``chat_formatter`` closure variable. Handlers that
    are not plain formatters (function calling, multimodal) are left out.
    """
    registry = chat_format_module.LlamaChatCompletionHandlerRegistry()
    out: dict[str, Any] = {}
    for name, handler in getattr(registry, "_chat_handlers", {}).items():
        if not inspect.isfunction(handler):
            continue
        formatter = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
        if formatter is not None:
            out[name] = formatter
    return out


def valid_names(chat_format_module: Any) -> list[str]:
    return sorted([*named_formats(chat_format_module), TRANSCRIPT])


def select(
    chat_format_module: Any,
    override: str | None,
    template: str | None,
    bos_token: str,
    eos_token: str,
    eos_token_id: int,
) -> ChatFormat:
    """Pick the chat format for a model (see the module docstring).

    Raises ValueError for an unknown override name (with the valid names) and
    for a GGUF template Jinja cannot compile.
    """
    lcf = chat_format_module

    def jinja(tpl: str, name: str, extra_stops: tuple[str, ...] = ()) -> ChatFormat:
        formatter = lcf.Jinja2ChatFormatter(
            template=tpl,
            eos_token=eos_token,
            bos_token=bos_token,
            add_generation_prompt=True,
        )
        ids = (eos_token_id,) if eos_token_id >= 0 else ()
        return ChatFormat(name, formatter, extra_stops, ids)

    if override is not None:
        if override == TRANSCRIPT:
            return jinja(TRANSCRIPT_TEMPLATE, TRANSCRIPT, TRANSCRIPT_STOPS)
        formats = named_formats(lcf)
        if override not in formats:
            raise ValueError(
                f"unknown chat_format {override!r}; valid names: "
                + ", ".join(valid_names(lcf))
            )
        return ChatFormat(override, formats[override])
    if template:
        try:
            return jinja(template, GGUF_TEMPLATE)
        except Exception as exc:
            raise ValueError(f"the model's chat template does not compile: {exc}") from None
    return jinja(TRANSCRIPT_TEMPLATE, TRANSCRIPT, TRANSCRIPT_STOPS)
