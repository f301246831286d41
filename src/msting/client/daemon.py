"""A small client for the msting daemon's HTTP API (see docs/api.md).

It talks HTTP over the daemon's Unix socket (the default; the socket is mode 0600, so
only its owner gets in) or over TCP::

    from msting.client import MstingClient

    with MstingClient.from_env() as client:
        print(client.llm("Once upon a time", max_tokens=32))

Errors the daemon reports come back as :class:`MstingError` with the fields of the
JSON error body; a daemon that cannot be reached raises :class:`DaemonUnavailable`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from msting.api.limits import DEFAULT_TEMPERATURE
from msting.client.transport import PlainHTTPTransport

if TYPE_CHECKING:
    from msting.config import Config, Paths

SOCKET_BASE_URL = "http://msting"
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
#: Generation and model loads may legitimately take minutes.
LONG_TIMEOUT = 600.0


class MstingError(Exception):
    """An error answer from the daemon: ``{"error": {"message", "type", "code"}}``."""

    def __init__(
        self,
        status: int | None,
        type: str | None,
        code: str | None,
        message: str,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.body = body or {}

    def __str__(self) -> str:
        if self.status is None:  # raised by the client itself, not answered by the daemon
            return self.message
        code = f" ({self.code})" if self.code else ""
        return f"HTTP {self.status}: {self.message}{code}"


class DaemonUnavailable(MstingError):
    """The daemon could not be reached (not running, starting, or it went away)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, "unavailable_error", "daemon_unavailable", message)


class RequestTimeout(MstingError):
    """The daemon did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(None, "timeout_error", "client_timeout", message)


class MstingClient:
    """HTTP client for one daemon, over a Unix socket (``socket_path``) or TCP (``url``)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        api_key: str | None = None,
    ) -> None:
        if (socket_path is None) == (url is None):
            raise ValueError("give exactly one of socket_path and url")
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self.url = url.rstrip("/") if url is not None else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The daemon speaks plain HTTP/1.1: a transport on the standard library's
        # http.client spares every short CLI call httpcore's import (~40 ms) and
        # httpx's CA-bundle loading. An https:// URL (a daemon behind a TLS proxy)
        # keeps httpx's own transport.
        transport: httpx.BaseTransport | None = None
        if self.socket_path is not None:
            transport = PlainHTTPTransport(uds=str(self.socket_path))
        elif self.url.startswith("http://"):
            transport = PlainHTTPTransport()
        self._http = httpx.Client(
            base_url=SOCKET_BASE_URL if self.socket_path is not None else self.url,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            headers=headers,
            trust_env=False,  # never route the daemon's traffic through an HTTP proxy
        )

    @classmethod
    def from_env(
        cls,
        paths: Paths | None = None,
        config: Config | None = None,
        prefer: str = "socket",
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> MstingClient:
        """A client for the daemon described by the msting config (``MSTING_HOME`` aware).

        ``prefer="socket"`` uses the Unix socket, ``prefer="tcp"`` the HTTP URL. Raises
        ``msting.config.ConfigError`` when the config is invalid.
        """
        if prefer not in ("socket", "tcp"):
            raise ValueError(f"prefer must be 'socket' or 'tcp', not {prefer!r}")
        from msting.config import load_config, resolve_paths

        if paths is None:
            paths = resolve_paths()
        if config is None:
            config = load_config(paths)
        key_var = getattr(config.llm_service, "api_key_env_var", None)
        api_key = os.environ.get(key_var) if key_var else None
        if prefer == "socket":
            return cls(socket_path=config.socket_path(paths), timeout=timeout, api_key=api_key)
        return cls(url=config.url, timeout=timeout, api_key=api_key)

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path is not None else str(self.url)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MstingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- native routes ---------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /health``: answers within milliseconds whenever the daemon serves."""
        return self._json("GET", "/health", timeout=timeout)

    def ready(self, timeout: float | None = None) -> tuple[bool, dict[str, Any]]:
        """``GET /health/ready``: (True, body) on 200; (False, body) on 503."""
        response = self._send("GET", "/health/ready", timeout=timeout)
        body = _body(response)
        if response.status_code == 200:
            return True, body
        if response.status_code == 503:
            return False, body
        raise _error_from(response, body)

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /v1/status``: the daemon, its models and workers."""
        return self._json("GET", "/v1/status", timeout=timeout)

    def load_model(
        self, name: str = "default", timeout: float | None = LONG_TIMEOUT, *, wait_sec: float | None = None
    ) -> dict[str, Any]:
        """``POST /models/load``: load (if needed) and verify a model; idempotent.

        ``wait_sec`` is how long the daemon waits for the model (its default:
        ``startup_timeout_sec``); ``timeout`` bounds the HTTP request, so keep it longer.
        """
        body: dict[str, Any] = {"model": name}
        if wait_sec is not None:
            body["timeout"] = wait_sec
        return self._json("POST", "/models/load", body, timeout=timeout)

    def unload_model(self, name: str, timeout: float | None = LONG_TIMEOUT) -> dict[str, Any]:
        """``POST /models/unload``: stop a model's workers (after their current request).

        Returns ``{"model", "state", "stopped_pids", "still_alive"}``. A model that is
        always-ready in the active profile is refused (409 ``model_always_ready``).
        """
        return self._json("POST", "/models/unload", {"model": name}, timeout=timeout)

    # -- profiles and jobs -------------------------------------------------------------

    def profiles(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /v1/profiles``: ``{"active": NAME, "data": [profile, ...]}``, each profile
        with its models, estimated memory, ``valid`` and ``problems``."""
        return self._json("GET", "/v1/profiles", timeout=timeout)

    def switch_profile(self, name: str, dry_run: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """``POST /v1/profiles/switch``.

        With ``dry_run``: the plan (what loads and unloads, memory needed against what is
        available, ``mode``), changing nothing. Otherwise the switch starts in the daemon
        and this returns its job at once: follow it with :meth:`job` until its
        ``state`` is no longer ``"running"``. A switch already running is a 409
        ``switch_in_progress``; an invalid or unknown profile a 400 ``invalid_profile``.
        """
        return self._json("POST", "/v1/profiles/switch", {"profile": name, "dry_run": bool(dry_run)}, timeout=timeout)

    def job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: a long operation with its ``state``, ``progress`` and ``steps``."""
        from urllib.parse import quote

        return self._json("GET", f"/v1/jobs/{quote(job_id, safe='')}", timeout=timeout)

    def jobs(self, timeout: float | None = None, *, type: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """``GET /v1/jobs``: the recent jobs of every type, newest first; ``type`` and
        ``state`` filter them."""
        from urllib.parse import urlencode

        query = urlencode({k: v for k, v in (("type", type), ("state", state)) if v})
        return self._json("GET", "/v1/jobs" + (f"?{query}" if query else ""), timeout=timeout)["data"]

    def create_job(self, type: str, params: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """``POST /jobs``: start a job (``install``, ``import``, ``update``, ``delete``,
        ``load``, ``unload``) and return it at once (202). A second install of a file
        already being fetched returns that same job. A bad type or parameter is a 400
        naming the field; deleting a model the active profile uses a 409."""
        return self._json("POST", "/jobs", {"type": type, "params": params}, timeout=timeout)

    def cancel_job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: cancel a job; the job as it is then (a job already
        finished comes back unchanged). An unknown id is a 404."""
        from urllib.parse import quote

        return self._json("DELETE", f"/jobs/{quote(job_id, safe='')}", timeout=timeout)

    def job_events(self, job_id: str, timeout: float | None = LONG_TIMEOUT) -> Iterator[dict[str, Any]]:
        """``GET /jobs/{id}/events``: the job at once, then again on every change (its
        progress several times a second while bytes move), ending after its final
        state. ``timeout`` bounds the wait for each event; the iterator just ends if the
        stream does (check the last job's ``state``)."""
        from urllib.parse import quote

        try:
            with self._http.stream("GET", f"/jobs/{quote(job_id, safe='')}/events", timeout=_timeout(timeout)) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error_from(response, _body(response))
                for _event, data in _iter_sse(response.iter_lines()):
                    yield data
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def search_registry(self, query: str, limit: int | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        """``GET /llm/registry/search?q=``: Hugging Face models matching ``query``, each
        ``{"id", "source", "downloads", "likes", "files"}``. The hub unreachable is a
        502/503 with its reason."""
        from urllib.parse import urlencode

        params: dict[str, Any] = {"q": query}
        if limit is not None:
            params["limit"] = limit
        return self._json("GET", f"/llm/registry/search?{urlencode(params)}", timeout=timeout)["data"]

    def installed_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """``GET /llm/installed``: the installed models (pulled or imported), each with its
        ``name``, ``source``, ``path``, ``size_bytes``, ``sha256``, what the file is, and
        whether the active profile uses it (``in_use``)."""
        return self._json("GET", "/llm/installed", timeout=timeout)["data"]

    def generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        temperature: float | None = None,
        model: str | None = None,
        *,
        timeout: float | None = LONG_TIMEOUT,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /generate``: ``{"text", "model", "finish_reason", "usage", "timings"}``.

        ``params`` are passed through (``top_p``, ``stop``, ``seed``).
        """
        body = _generate_body(prompt, max_tokens, temperature, model, params)
        return self._json("POST", "/generate", body, timeout=timeout)

    def stream_generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        temperature: float | None = None,
        model: str | None = None,
        *,
        timeout: float | None = LONG_TIMEOUT,
        **params: Any,
    ) -> Iterator[str]:
        """``POST /generate`` with ``"stream": true``: yields the text pieces.

        The generator's return value (``StopIteration.value``) is the ``done`` event
        (model, finish_reason, usage, timings). An ``event: error`` raises
        :class:`MstingError`; a stream that ends without ``done`` raises too, so a
        truncated answer never looks complete.
        """
        body = _generate_body(prompt, max_tokens, temperature, model, params)
        body["stream"] = True
        try:
            with self._http.stream("POST", "/generate", json=body, timeout=_timeout(timeout)) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error_from(response, _body(response))
                for event, data in _iter_sse(response.iter_lines()):
                    if event == "token":
                        yield data.get("text", "")
                    elif event == "done":
                        return data
                    elif event == "error":
                        err = data.get("error", data)
                        raise MstingError(
                            response.status_code,
                            err.get("type"),
                            err.get("code"),
                            err.get("message", "the stream failed"),
                            data,
                        )
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        raise MstingError(200, "server_error", "stream_truncated", "the stream ended without a done event")

    def llm(self, prompt: str, max_tokens: int = 64, temperature: float = DEFAULT_TEMPERATURE, *, timeout: float | None = LONG_TIMEOUT) -> str:
        """``POST /llm``: the completion text."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        return self._json("POST", "/llm", body, timeout=timeout)["completion"]

    # -- OpenAI-compatible routes -------------------------------------------------------

    def chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int = 64,
        temperature: float | None = None,
        model: str | None = None,
        *,
        timeout: float | None = LONG_TIMEOUT,
        **params: Any,
    ) -> dict[str, Any]:
        """``POST /v1/chat/completions``: the OpenAI ``chat.completion`` object.

        The reply text is ``result["choices"][0]["message"]["content"]``."""
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens}
        body.update({k: v for k, v in {"temperature": temperature, "model": model, **params}.items() if v is not None})
        return self._json("POST", "/v1/chat/completions", body, timeout=timeout)

    def embed(self, texts: str | list[str], model: str | None = None, *, timeout: float | None = LONG_TIMEOUT) -> list[list[float]]:
        """``POST /v1/embeddings``: one unit-length vector per input text."""
        body: dict[str, Any] = {"input": texts}
        if model is not None:
            body["model"] = model
        data = self._json("POST", "/v1/embeddings", body, timeout=timeout)["data"]
        return [item["embedding"] for item in sorted(data, key=lambda d: d["index"])]

    def models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """``GET /v1/models``: each model with its ``state``, ``type`` and ``context_length``."""
        return self._json("GET", "/v1/models", timeout=timeout)["data"]

    # -- the services behind the daemon ---------------------------------------------------

    def services(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET /llm/services``: every service (local, stub, the configured remote ones),
        each URL's state; ``default_service`` and ``fallback_chain``."""
        return self._json("GET", "/llm/services", timeout=timeout)

    def usage(self, group_by: str = "service", since: str | None = None, until: str | None = None) -> dict[str, Any]:
        """``GET /v1/usage``: the usage rows grouped by service, model, day or client, with totals."""
        from urllib.parse import urlencode

        query = urlencode({k: v for k, v in (("group_by", group_by), ("since", since), ("until", until)) if v is not None})
        return self._json("GET", f"/v1/usage?{query}")

    def ping_service(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """``GET /llm/services/{name}/ping``: a live check of each URL now. A service none
        of whose URLs answers is a result too (the daemon's 503), not an error."""
        from urllib.parse import quote

        response = self._send("GET", f"/llm/services/{quote(name, safe='')}/ping", timeout=timeout)
        data = _body(response)
        if response.status_code >= 400 and response.status_code != 503:
            raise _error_from(response, data)
        return data

    def explain_route(self, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """``POST /v1/route/explain``: which route, model and cache outcome `body` (a
        generation or embeddings request) would get, and why; nothing is generated."""
        return self._json("POST", "/v1/route/explain", body, timeout=timeout)

    # -- plumbing ----------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> httpx.Response:
        try:
            return self._http.request(method, path, json=body, timeout=_timeout(timeout))
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.TransportError) -> MstingError:
        address = self.address
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            if self.socket_path is not None and not self.socket_path.exists():
                return DaemonUnavailable(f"the msting daemon is not running (no socket at {self.socket_path})")
            return DaemonUnavailable(f"cannot connect to the msting daemon at {address}: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeout(f"the msting daemon at {address} did not answer in time")
        return DaemonUnavailable(f"lost the connection to the msting daemon at {address}: {exc}")

    def _json(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> dict[str, Any]:
        response = self._send(method, path, body, timeout)
        data = _body(response)
        if response.status_code >= 400:
            raise _error_from(response, data)
        return data


def _timeout(seconds: float | None) -> Any:
    """``None`` keeps the client's default timeout (httpx's USE_CLIENT_DEFAULT)."""
    if seconds is None:
        return httpx.USE_CLIENT_DEFAULT
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


def _generate_body(prompt: str, max_tokens: int, temperature: float | None, model: str | None, params: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    if model is not None:
        body["model"] = model
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {"raw": response.text[:2000]}
    return data if isinstance(data, dict) else {"value": data}


def _error_from(response: httpx.Response, body: dict[str, Any]) -> MstingError:
    err = body.get("error")
    if isinstance(err, dict):
        return MstingError(
            response.status_code,
            err.get("type"),
            err.get("code"),
            str(err.get("message") or f"HTTP {response.status_code}"),
            body,
        )
    text = body.get("raw") or json.dumps(body)[:500]
    return MstingError(response.status_code, "http_error", None, f"HTTP {response.status_code}: {text}", body)


def _iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse Server-Sent Events into (event, JSON data) pairs."""
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, _sse_json("\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):  # comment / keep-alive
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, _sse_json("\n".join(data))


def _sse_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}
