"""Who may talk to the daemon.

- **Unix socket**: the socket file is mode 0600, and every accepted connection is
  checked with ``SO_PEERCRED``: a peer whose uid is not the daemon's is disconnected
  before a byte is read (:func:`http_protocol_class`). No API key is needed there.
- **TCP**: when the API key variable (``llm_service.api_key_env_var``, default
  ``LLM_API_KEY``) is set in the daemon's environment, every request except
  ``GET /health``, the debug page's own HTML (``/debug``: no data in it; the page asks
  for the key and sends it on its every request) and, with
  ``llm_service.metrics_public``, ``/metrics``, needs ``Authorization: Bearer <key>`` (compared in constant time);
  otherwise 401 in the OpenAI error format. Independently of the key, the ``Host``
  header must name a loopback host (``localhost``, ``127.x.y.z``, ``[::1]``, any
  port) or one of ``llm_service.allowed_hosts``: DNS-rebinding protection; otherwise
  403 (:class:`SecurityMiddleware`).

The transport of a request is told by its ASGI scope: uvicorn sets ``scope["server"]``
to ``(socket_path, None)`` on a Unix socket and to ``(host, port)`` on TCP. A scope
without ``server`` is treated as TCP (the stricter side).

The middleware is pure ASGI: it never wraps ``receive`` or ``send``, so streaming
responses pass through untouched, and an accepted request costs one pass over the
header list, one dict lookup (Host) and one ``hmac.compare_digest``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("msting.http.security")

OPEN_PATHS = frozenset({"/health", "/debug"})  # liveness probes, the debug page's shell: no API key needed, even on TCP
METRICS_PATH = "/metrics"  # open too with llm_service.metrics_public
CLIENT_SCOPE_KEY = "msting.client"  # the scope entry naming the API key a request came with: key:<VAR>, never the key
LOOPBACK_HOST_NAMES = frozenset({"localhost", "[::1]"})  # plus any 127.x.y.z
_HOST_CACHE_MAX = 1024

# A Host header value (RFC 9110 uri-host [":" port]), already lower-cased: an IPv6
# literal in brackets or a name/IPv4 address, an optional trailing dot, an optional port.
_HOST_RE = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]/@\s]+?)\.?(?::[0-9]*)?")


# ----------------------------------------------------------------------- helpers


def is_loopback_address(host: str) -> bool:
    """True for a bind address that only this machine can reach: ``localhost``,
    127.0.0.0/8 or ``::1`` (brackets allowed)."""
    host = host.strip().lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str | None:
    """The host part of a Host header value, lower-cased, without port or trailing dot;
    None when it is not a well-formed host."""
    m = _HOST_RE.fullmatch(value.strip().lower())
    return m.group(1) if m else None


def is_loopback_host_name(name: str) -> bool:
    if name in LOOPBACK_HOST_NAMES:
        return True
    try:
        if name.startswith("127."):
            return ipaddress.IPv4Address(name).is_loopback
        if name.startswith("["):  # [0:0::1] and other spellings of ::1
            return ipaddress.IPv6Address(name[1:-1]).is_loopback
    except ValueError:
        pass
    return False


def normalize_allowed_host(entry: str) -> str:
    """An ``allowed_hosts`` entry as it is compared: lower-case, no port; a bare IPv6
    address gets its brackets."""
    entry = entry.strip().lower()
    if entry.count(":") >= 2 and not entry.startswith("["):
        entry = f"[{entry}]"
    return host_name(entry) or entry


def read_api_key(var: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from the environment variable ``var``; None when unset or blank."""
    value = (os.environ if environ is None else environ).get(var, "")
    value = value.strip()
    return value or None


@dataclass(frozen=True)
class SecurityPolicy:
    """What the TCP listener demands. Built once, at daemon start."""

    api_key: str | None = field(default=None, repr=False)  # never logged or shown
    key_var: str = "LLM_API_KEY"
    allowed_hosts: frozenset[str] = frozenset()
    open_paths: frozenset[str] = OPEN_PATHS  # served without the key

    @property
    def auth_required(self) -> bool:
        return self.api_key is not None

    @classmethod
    def from_config(cls, config: Any, environ: Mapping[str, str] | None = None) -> SecurityPolicy:
        """Read the key (once) from the variable the config names. The bind address
        itself, when it is a specific non-loopback address, is an allowed Host too."""
        svc = config.llm_service
        allowed = {normalize_allowed_host(h) for h in getattr(svc, "allowed_hosts", ()) or ()}
        bind = svc.host.strip().lower()
        if bind not in ("0.0.0.0", "::", "[::]", "") and not is_loopback_address(bind):
            allowed.add(normalize_allowed_host(bind))
        open_paths = OPEN_PATHS | {METRICS_PATH} if getattr(svc, "metrics_public", False) else OPEN_PATHS
        return cls(api_key=read_api_key(svc.api_key_env_var, environ), key_var=svc.api_key_env_var, allowed_hosts=frozenset(allowed),
                   open_paths=open_paths)

    def describe(self) -> str:
        """One line for the daemon log (never the key)."""
        auth = (f"API-key auth ON for TCP (Bearer key from ${self.key_var}; {', '.join(sorted(self.open_paths))} stay open)"
                if self.auth_required else f"API-key auth OFF for TCP (${self.key_var} is not set)")
        hosts = ", ".join(sorted(self.allowed_hosts)) or "none"
        unix = "mode 0600 + peer uid check" if peer_check_available() else "mode 0600 (no SO_PEERCRED here)"
        return f"{auth}; Host header must be loopback or an allowed host ({hosts}); Unix socket: {unix}"


def _error_body(message: str, type_: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


_MISSING_KEY = _error_body(
    "missing API key: this endpoint needs 'Authorization: Bearer <key>' when called over TCP",
    "authentication_error", "invalid_api_key")
_WRONG_KEY = _error_body("invalid API key", "authentication_error", "invalid_api_key")
_AUTH_HEADERS = [(b"www-authenticate", b"Bearer")]


# -------------------------------------------------------------------- middleware


class SecurityMiddleware:
    """Pure ASGI middleware enforcing :class:`SecurityPolicy` on TCP requests."""

    def __init__(self, app: Any, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy
        self._key = policy.api_key.encode("utf-8") if policy.api_key is not None else None
        self._key_id = f"key:{policy.key_var}"
        self._allowed = policy.allowed_hosts
        self._open = policy.open_paths
        self._host_ok: dict[bytes, bool] = {}  # Host header value -> allowed, bounded

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            return await self.app(scope, receive, send)
        server = scope.get("server")
        if server is not None and server[1] is None:  # the Unix socket: peer uid checked at accept
            return await self.app(scope, receive, send)

        host: bytes | None = None
        auth: bytes | None = None
        origin: bytes | None = None
        duplicate_host = False
        for name, value in scope["headers"]:
            if name == b"host":
                duplicate_host = host is not None
                host = value
            elif name == b"authorization":
                auth = value
            elif name == b"origin":
                origin = value

        # A browser page on another site may post to 127.0.0.1 with a legitimate Host
        # header; its Origin header gives it away (CSRF from web pages).
        if origin is not None and not self._check_host(origin.partition(b"://")[2] or b"\0"):
            shown = origin.decode("latin-1")[:100]
            return await self._deny_host(scope, receive, send,
                                         f"cross-origin request from '{shown}' refused; add its host to llm_service.allowed_hosts")

        if host is None or duplicate_host:
            if duplicate_host or scope.get("http_version") != "1.0":
                what = "several Host headers" if duplicate_host else "no Host header"
                return await self._deny_host(scope, receive, send, f"the request has {what}; send one Host header naming "
                                             "localhost, 127.0.0.1 or [::1] (or a name in llm_service.allowed_hosts)")
        else:
            ok = self._host_ok.get(host)
            if ok is None:
                ok = self._check_host(host)
            if not ok:
                text = host.decode("latin-1")
                shown = host_name(text) or text[:100]
                return await self._deny_host(scope, receive, send,
                                             f"Host header '{shown}' is not allowed; add it to llm_service.allowed_hosts")

        if self._key is not None and scope["path"] not in self._open:
            if auth is None:
                log.debug("refused %s %s from %s: no API key", scope.get("method", "WEBSOCKET"), scope["path"], scope.get("client"))
                return await _deny(scope, receive, send, 401, _MISSING_KEY, _AUTH_HEADERS)
            scheme, _, token = auth.partition(b" ")
            # compare_digest runs even for a wrong scheme, so timing tells nothing about the key
            good = hmac.compare_digest(token.strip(), self._key)
            if not good or scheme.lower() != b"bearer":
                log.debug("refused %s %s from %s: wrong API key", scope.get("method", "WEBSOCKET"), scope["path"], scope.get("client"))
                return await _deny(scope, receive, send, 401, _WRONG_KEY, _AUTH_HEADERS)
            scope[CLIENT_SCOPE_KEY] = self._key_id
        return await self.app(scope, receive, send)

    def _check_host(self, raw: bytes) -> bool:
        name = host_name(raw.decode("latin-1"))
        ok = name is not None and (is_loopback_host_name(name) or name in self._allowed)
        if len(self._host_ok) >= _HOST_CACHE_MAX:  # bounded: a client cycling names cannot grow it
            self._host_ok.clear()
        self._host_ok[raw] = ok
        return ok

    async def _deny_host(self, scope: dict, receive: Any, send: Any, message: str) -> None:
        log.debug("refused %s %s from %s: %s", scope.get("method", "WEBSOCKET"), scope.get("path"), scope.get("client"), message)
        await _deny(scope, receive, send, 403, _error_body(message, "permission_error", "host_not_allowed"), [])


async def _deny(scope: dict, receive: Any, send: Any, status: int, body: bytes, extra_headers: list) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    # WebSocket: refuse before accepting. With the denial-response extension the client
    # gets the same HTTP status and JSON body; without it, a close with 1008 (policy
    # violation), which servers turn into an HTTP 403.
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


# ------------------------------------------------------------- peer credentials

_SO_PEERCRED = getattr(socket, "SO_PEERCRED", None)  # Linux
_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected AF_UNIX socket."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size))


def peer_check_available() -> bool:
    return _SO_PEERCRED is not None


def with_peer_check(base: type) -> type:
    """A subclass of uvicorn protocol class ``base`` that drops, at accept, any Unix
    socket connection from a process whose uid is not this daemon's.

    WebSocket connections arrive through the HTTP protocol (an upgrade on a connection
    it already accepted), so checking the HTTP protocol covers them too.
    """
    if _SO_PEERCRED is None:  # not Linux: the socket's 0600 mode is the protection
        return base
    own_uid = os.getuid()

    class PeerChecked(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is None or sock.family != socket.AF_UNIX:
                return
            try:
                pid, uid, _gid = peer_credentials(sock)
            except OSError as exc:
                log.warning("closed a Unix socket connection: cannot read its peer credentials (%s)", exc)
                transport.close()
                return
            if uid != own_uid:
                log.warning("closed a Unix socket connection from pid %d uid %d: only uid %d may use this socket", pid, uid, own_uid)
                transport.close()

    PeerChecked.__name__ = PeerChecked.__qualname__ = f"PeerChecked{base.__name__}"
    return PeerChecked


def http_protocol_class() -> type:
    """uvicorn's HTTP/1.1 protocol (httptools when importable, else h11) with the peer
    check, writing a response's head and body start as one (msting.http.transport)."""
    from msting.http.transport import with_head_held

    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is a dependency; h11 is the fallback uvicorn always has
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return with_peer_check(with_head_held(base))
