"""`PlainHTTPTransport`: an httpx transport for the daemon's plain HTTP/1.1, on the
standard library's ``http.client``.

httpx's default transport imports httpcore and h11 on first use (about 40 ms), which a
short CLI call such as ``msting llm status`` pays every time; ``http.client`` is already
imported by httpx itself. The daemon speaks only plain HTTP/1.1, over its Unix socket or
on localhost, so nothing of httpcore (TLS, HTTP/2, proxies) is needed here.

Connections are kept alive and reused (a small idle pool, thread-safe). A request that
fails on a *reused* connection before any answer arrived (the daemon closed the idle
connection) is sent again once on a new one. Socket errors map onto httpx's exceptions
(ConnectError, ConnectTimeout, ReadTimeout, ReadError, WriteError), so callers handle
them exactly as with httpx's own transport.
"""

from __future__ import annotations

import http.client
import socket
import threading
from typing import Iterator

import httpx

_POOL_SIZE = 4
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Body(httpx.SyncByteStream):
    """The response body, read as it arrives; the connection goes back to the pool
    only when the body was read to its end."""

    def __init__(self, transport: PlainHTTPTransport, conn: http.client.HTTPConnection,
                 response: http.client.HTTPResponse, read_timeout: float | None) -> None:
        self._transport = transport
        self._conn = conn
        self._response = response
        self._read_timeout = read_timeout

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        while True:
            try:
                chunk = response.read1(65536) if not response.isclosed() else b""
            except socket.timeout as exc:
                raise httpx.ReadTimeout(str(exc) or "timed out reading the answer") from None
            except (OSError, http.client.HTTPException) as exc:
                raise httpx.ReadError(str(exc) or exc.__class__.__name__) from None
            if not chunk:
                if not response.isclosed():
                    response.read()  # a Content-Length body read to its end: mark it done
                return
            yield chunk

    def close(self) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        reusable = response.isclosed() and not response.will_close
        if not response.isclosed():
            response.close()
        self._transport._release(self._conn, reusable)


class PlainHTTPTransport(httpx.BaseTransport):
    """HTTP/1.1 without TLS to one daemon: over the Unix socket `uds`, or to the
    host and port of each request's URL."""

    def __init__(self, uds: str | None = None) -> None:
        self.uds = uds
        self._idle: list[tuple[tuple, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"the msting client speaks plain http only, not {request.url.scheme!r}")
        timeouts = request.extensions.get("timeout", {})
        connect_timeout, read_timeout = timeouts.get("connect"), timeouts.get("read")
        key = (self.uds,) if self.uds else (request.url.host, request.url.port or 80)
        body = request.read()
        target = request.url.raw_path.decode("ascii")
        for attempt in (1, 2):
            conn, reused = self._acquire(key, connect_timeout)
            try:
                if conn.sock is None:
                    try:
                        conn.connect()
                    except socket.timeout as exc:
                        raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from None
                    except OSError as exc:
                        raise httpx.ConnectError(str(exc) or exc.__class__.__name__) from None
                conn.sock.settimeout(read_timeout)
                try:
                    conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
                    for name, value in request.headers.raw:
                        conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
                    conn.endheaders(body or None)
                except socket.timeout as exc:
                    raise httpx.WriteTimeout(str(exc) or "timed out sending the request") from None
                except _STALE as exc:
                    if reused and attempt == 1:  # the daemon closed this idle connection
                        conn.close()
                        continue
                    raise httpx.WriteError(str(exc) or exc.__class__.__name__) from None
                except OSError as exc:
                    raise httpx.WriteError(str(exc) or exc.__class__.__name__) from None
                try:
                    response = conn.getresponse()
                except socket.timeout as exc:
                    raise httpx.ReadTimeout(str(exc) or "timed out waiting for the answer") from None
                except _STALE as exc:
                    if reused and attempt == 1:
                        conn.close()
                        continue
                    raise httpx.RemoteProtocolError(str(exc) or "the daemon closed the connection") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise httpx.ReadError(str(exc) or exc.__class__.__name__) from None
            except BaseException:
                conn.close()
                raise
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.getheaders()]
            # http.client has undone the chunked framing already
            headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
            return httpx.Response(
                status_code=response.status,
                headers=headers,
                stream=_Body(self, conn, response, read_timeout),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason.encode("latin-1")},
            )
        raise httpx.RemoteProtocolError("the daemon closed the connection twice")  # pragma: no cover

    def _acquire(self, key: tuple, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            for i, (k, conn) in enumerate(self._idle):
                if k == key:
                    del self._idle[i]
                    return conn, True
        if self.uds:
            return _UnixConnection(self.uds, timeout), False
        return http.client.HTTPConnection(key[0], key[1], timeout=timeout), False

    def _release(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        if reusable and conn.sock is not None:
            with self._lock:
                if len(self._idle) < _POOL_SIZE:
                    key = (self.uds,) if self.uds else (conn.host, conn.port)
                    self._idle.append((key, conn))
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()
