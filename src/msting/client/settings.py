"""The application client's settings, read from the ``LLM_*`` environment variables;
explicit values override them. Every invalid value is a ValueError naming its variable.
The API key never appears in a repr or a message."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROVIDERS = ("lan", "local", "openai", "stub")
#: A fallback is the stub, or the local daemon (its socket: LLM_BASE_URL is the primary's).
FALLBACKS = ("stub", "lan", "local", "none")
DEFAULT_PROVIDER = "lan"
DEFAULT_FALLBACK = "stub"
DEFAULT_TIMEOUT_SECS = 60.0

ENV_PROVIDER = "LLM_PROVIDER"
ENV_BASE_URL = "LLM_BASE_URL"
ENV_API_KEY = "LLM_API_KEY"
ENV_TIMEOUT = "LLM_TIMEOUT_SECS"
ENV_FALLBACK = "LLM_PROVIDER_FALLBACK"


@dataclass(frozen=True)
class ClientSettings:
    """``provider``: lan, local, openai or stub. ``base_url``: the daemon's or the
    server's URL (for lan/local, None means the local daemon's socket, or
    ``socket_path``). ``fallback``: the provider used when the primary has an outage,
    None for none. ``timeout``: seconds for a whole request."""

    provider: str = DEFAULT_PROVIDER
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECS
    fallback: str | None = DEFAULT_FALLBACK
    socket_path: Path | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        provider: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        fallback: str | None = None,
        socket_path: str | os.PathLike[str] | None = None,
    ) -> ClientSettings:
        """The settings from `environ` (default ``os.environ``); a keyword that is not
        None overrides its variable (``fallback="none"`` turns the fallback off)."""
        env = os.environ if environ is None else environ

        def var(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        chosen = _choice(provider if provider is not None else var(ENV_PROVIDER) or DEFAULT_PROVIDER,
                         PROVIDERS, ENV_PROVIDER if provider is None else "provider")
        url = base_url if base_url is not None else var(ENV_BASE_URL)
        if url is not None:
            url = _url(url, ENV_BASE_URL if base_url is None else "base_url")
        if chosen == "openai" and url is None:
            raise ValueError(f"{ENV_PROVIDER}=openai needs {ENV_BASE_URL}: the OpenAI-compatible server's URL "
                             "(for example http://127.0.0.1:8000/v1)")
        if socket_path is not None and base_url is not None:
            raise ValueError("give socket_path or base_url, not both")
        if timeout is not None:
            seconds = _seconds(timeout, "timeout")
        else:
            raw = var(ENV_TIMEOUT)
            seconds = DEFAULT_TIMEOUT_SECS if raw is None else _seconds(raw, ENV_TIMEOUT)
        back = _choice(fallback if fallback is not None else var(ENV_FALLBACK) or DEFAULT_FALLBACK,
                       FALLBACKS, ENV_FALLBACK if fallback is None else "fallback")
        key = api_key if api_key is not None else var(ENV_API_KEY)
        return cls(
            provider=chosen,
            base_url=url,
            api_key=key or None,
            timeout=seconds,
            fallback=None if back in ("none", chosen) else back,
            socket_path=Path(socket_path) if socket_path is not None else None,
        )


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value.strip().lower()


def _url(value: str, name: str) -> str:
    url = value.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or not urlsplit(url).netloc:
        raise ValueError(f"{name} must be an http:// or https:// URL; got {value!r}")
    return url


def _seconds(value: object, name: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds; got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds; got {value!r}")
    return seconds
