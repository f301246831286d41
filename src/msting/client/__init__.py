"""The msting client.

* :class:`LLMClient` / :class:`AsyncLLMClient` and the functions :func:`generate`,
  :func:`stream_generate`, :func:`get_available_models`, :func:`get_provider_status`
  (async: ``agenerate`` ...): the interface for applications, configured by the
  ``LLM_*`` environment variables, with a fallback provider (``msting.client.service``);
* :class:`MstingClient`: the daemon's own API, used by the CLI (``msting.client.daemon``).

Importing this package stays cheap, since the CLI imports it on every call: the
application interface is imported on first use of one of its names (about 10 ms
saved), and no config, provider or async transport is imported until one is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from msting.client.daemon import DaemonUnavailable, MstingClient, MstingError, RequestTimeout

if TYPE_CHECKING:
    from msting.client.llm import LLMFallbackWarning, LLMRequest, LLMResponse, ServerUnavailable, is_outage
    from msting.client.service import (
        AsyncLLMClient,
        LLMClient,
        agenerate,
        aget_available_models,
        aget_provider_status,
        astream_generate,
        generate,
        get_available_models,
        get_provider_status,
        stream_generate,
    )
    from msting.client.settings import ClientSettings

#: The application interface's names, and the module each lives in.
_LAZY = {
    **dict.fromkeys(["LLMFallbackWarning", "LLMRequest", "LLMResponse", "ServerUnavailable", "is_outage"], "msting.client.llm"),
    **dict.fromkeys(["AsyncLLMClient", "LLMClient", "agenerate", "aget_available_models", "aget_provider_status",
                     "astream_generate", "generate", "get_available_models", "get_provider_status", "stream_generate"],
                    "msting.client.service"),
    "ClientSettings": "msting.client.settings",
}

__all__ = [
    "AsyncLLMClient", "ClientSettings", "DaemonUnavailable", "LLMClient", "LLMFallbackWarning", "LLMRequest",
    "LLMResponse", "MstingClient", "MstingError", "RequestTimeout", "ServerUnavailable", "agenerate",
    "aget_available_models", "aget_provider_status", "astream_generate", "generate", "get_available_models",
    "get_provider_status", "is_outage", "stream_generate",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'msting.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
