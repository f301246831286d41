"""The HTTP the downloads speak, on the standard library's `http.client`: one GET (or
HEAD) with redirects followed, the response's body read into a caller's buffer, JSON
for metadata. Failures are `FetchError`s that say whether trying again may help."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from msting import __version__

MAX_REDIRECTS = 10
USER_AGENT = f"msting/{__version__}"
SHORT_LINK_BPS = 2e9  # a capped receive buffer that still allows this rate costs nothing


class FetchError(Exception):
    """A request that failed; `transient` when another attempt may succeed (a dropped
    connection, a timeout, a 5xx or 429), `status` the HTTP status if one came."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass
class Reply:
    conn: http.client.HTTPConnection
    response: http.client.HTTPResponse
    url: str  # after redirects
    first_headers: http.client.HTTPMessage  # the first response's (the hub's X-Linked-* headers)

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def close(self) -> None:
        self.conn.close()

    def cap_receive_buffer(self, size: int) -> bool:
        """Hold the kernel's receive buffer to about `size` bytes when the round trip is so
        short (loopback, a LAN) that `size` per round trip is still more than
        `SHORT_LINK_BPS`: what that buffer holds when the process dies is received again.
        On a longer link the kernel's autotuning stays (its window is what the rate needs,
        and what is in flight there is the network's). Linux's TCP_INFO gives the RTT; where
        it does not, nothing changes. True when capped."""
        sock = self.conn.sock
        rtt_us = _rtt_us(sock) if sock is not None else None
        if not rtt_us or size / (rtt_us / 1e6) < SHORT_LINK_BPS:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # the kernel doubles it for its bookkeeping
        except OSError:
            return False
        return True

    def abort(self) -> None:
        """Wake a read blocked in another thread (a cancel)."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _rtt_us(sock: socket.socket) -> int | None:
    """The smoothed round-trip time (tcpi_rtt, microseconds) of a TCP socket, on Linux."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    return struct.unpack_from("I", info, 68)[0] if len(info) >= 72 else None  # after 8 u8s and 15 u32s


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"cannot fetch {url!r}: only http:// and https:// URLs", transient=False)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()), target
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), target


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    """Send one request, following redirects; a 2xx, 206 or 416 reply is returned open
    (the caller reads and closes it), anything else raised as a FetchError."""
    sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    first = None
    for _ in range(MAX_REDIRECTS + 1):
        conn, target = _connection(url, timeout)
        try:
            conn.request(method, target, headers=sent)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise FetchError(f"{method} {url}: {exc or type(exc).__name__}", transient=True) from None
        first = first if first is not None else response.headers
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            location = urljoin(url, response.getheader("Location"))
            response.read()
            conn.close()
            if urlsplit(location).netloc != urlsplit(url).netloc:
                sent.pop("Authorization", None)  # a token goes to its own host only
            url = location
            continue
        if 200 <= response.status < 300 or response.status == 416:
            return Reply(conn, response, url, first)
        body = response.read(2000).decode("utf-8", "replace")
        conn.close()
        raise FetchError(f"{method} {url}: HTTP {response.status} {response.reason}" + (f": {body.strip()[:300]}" if body.strip() else ""),
                         transient=response.status >= 500 or response.status in (408, 429), status=response.status)
    raise FetchError(f"{method} {url}: more than {MAX_REDIRECTS} redirects", transient=False)


def get_json(url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0):
    """GET a JSON document (metadata: the hub's API, a registry's manifest)."""
    reply = request(url, headers={"Accept": "application/json", **(headers or {})}, timeout=timeout)
    try:
        body = reply.response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"GET {url}: {exc or type(exc).__name__}", transient=True) from None
    finally:
        reply.close()
    try:
        return json.loads(body)
    except ValueError:
        raise FetchError(f"GET {url}: the reply is not JSON ({body[:100]!r})", transient=False) from None
