"""Sending one request to one upstream URL, and saying precisely how it failed.

One aiohttp session per service (aiohttp, not httpx: on the same streamed request to a
local upstream its client side took 0.5 ms against httpx's 1.2 ms, p50, and the proxy's
added latency is the figure that matters here). It has no retries of its own (the retry
loop in msting.providers.remote.retry is the only one), ignores proxy variables from the
environment, and checks certificates unless the service's `verify_cert` is off. Every failure becomes an
`AttemptFailed` that says whether another attempt makes sense (connect errors,
timeouts, 5xx, 408 and 429 do; a 400 does not: the request itself is wrong) and
carries the upstream's Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import aiohttp

from msting.api.errors import InvalidRequest, MstingError, NotFound, Timeout, TooLarge, Unavailable, UpstreamError
from msting.providers.remote.wire import UpstreamRequest, Wire

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 4096  # bytes of an error reply kept for its message
MAX_JSON_REPLY = 256 << 20  # a model list or embeddings reply larger than this is refused, not read into memory
MAX_RETRY_AFTER = 3600.0
DRAIN_TIMEOUT = 1.0  # seconds to read what follows a reply's end marker
MAX_CONNECTIONS = 256  # per service
READ_BUFFER = 1 << 20  # the longest line of a streamed reply


class AttemptFailed(Exception):
    """One attempt failed. `error` is what the client sees if no other attempt answers;
    `retryable`: another attempt (another URL, later, or another service) may succeed."""

    def __init__(self, error: MstingError, *, retryable: bool, retry_after: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) in seconds, capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def read_capped(content: aiohttp.StreamReader, cap: int) -> bytes:
    """The reply's body up to `cap` + 1 bytes (one more says it was longer): never the
    whole of an endless or huge body in memory."""
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await content.read(cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def redacted(text: str, secret: str | None) -> str:
    """`text` with the API key, and any run of 8 or more of its characters, masked (an
    upstream's 401 may quote the key it got, whole or in part)."""
    if not secret:
        return text
    text = text.replace(secret, "***")
    for size in range(len(secret) - 1, 7, -1):
        for start in range(len(secret) - size + 1):
            piece = secret[start:start + size]
            if piece in text:
                text = text.replace(piece, "***")
    return text


def status_failure(wire: Wire, service: str, status: int, text: str, headers: Mapping[str, str],
                   secret: str | None = None) -> AttemptFailed:
    message = redacted(str(wire.error_message(status, _parse(text))), secret)[:500]
    said = f"{service} answered HTTP {status}: {message}"
    retry_after = retry_after_seconds(headers.get("Retry-After"))
    if status == 429:
        return AttemptFailed(Unavailable("upstream_rate_limited", said, retry_after=None if retry_after is None else max(1, round(retry_after))),
                             retryable=True, retry_after=retry_after)
    if status in RETRYABLE_STATUSES:
        return AttemptFailed(UpstreamError("upstream_error", said, upstream_status=status), retryable=True, retry_after=retry_after)
    if status in (401, 403):
        return AttemptFailed(UpstreamError("upstream_auth_failed", f"{said} (check the service's API key)", upstream_status=status),
                             retryable=False)
    if status == 404:
        return AttemptFailed(NotFound("model_not_found", said, upstream_status=status), retryable=False)
    if status == 413:
        return AttemptFailed(TooLarge("request_too_large", said, upstream_status=status), retryable=False)
    if 400 <= status < 500:
        return AttemptFailed(InvalidRequest("upstream_rejected", said, upstream_status=status), retryable=False)
    return AttemptFailed(UpstreamError("upstream_error", said, upstream_status=status), retryable=True)


def transport_failure(service: str, url: str, exc: BaseException) -> AttemptFailed:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return AttemptFailed(Timeout("upstream_timeout", f"{service} ({url}) did not answer in time"), retryable=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        number = getattr(exc.os_error, "errno", None)
        reason = os.strerror(number).lower() if isinstance(number, int) and number > 0 else str(exc.os_error)
        return AttemptFailed(Unavailable("upstream_unreachable", f"cannot connect to {service} at {url}: {reason}"),
                             retryable=True)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return AttemptFailed(UpstreamError("upstream_broken", f"{service} ({url}) closed the connection in the middle of "
                                           "its reply"), retryable=True)
    return AttemptFailed(UpstreamError("upstream_broken", f"{service} ({url}) broke off: {type(exc).__name__}: {exc}"), retryable=True)


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ValueError)  # ValueError: a line past READ_BUFFER


async def _read_to_end(content: aiohttp.StreamReader) -> None:
    while await content.readany():
        pass


@dataclass(frozen=True)
class Timeouts:
    connect: float  # getting a connection
    read: float  # each read: the reply's headers, then every chunk (the first-token timeout)

    def aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=self.connect, sock_connect=self.connect, sock_read=self.read)


class Upstream:
    """The HTTP side of one service: one aiohttp session (its connections kept alive),
    made on first use, inside the event loop."""

    def __init__(self, service: str, wire: Wire, headers: dict[str, str], *, verify: bool, secret: str | None = None):
        self.service = service
        self.secret = secret  # masked out of every upstream message
        self.wire = wire
        self.headers = headers
        self.verify = verify
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=self.verify)
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers, trust_env=False,
                                                  read_bufsize=READ_BUFFER, raise_for_status=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def json(self, url: str, request: UpstreamRequest, timeout: float) -> Any:
        """The parsed JSON reply; AttemptFailed otherwise."""
        limits = Timeouts(timeout, timeout).aiohttp()

        async def send() -> tuple[int, str, Mapping[str, str]]:
            async with self.session.request(request.method, url + request.path, json=request.body, timeout=limits,
                                            allow_redirects=False) as response:
                cap = MAX_ERROR_BODY if response.status >= 400 else MAX_JSON_REPLY
                data = await read_capped(response.content, cap)
                if len(data) > cap and response.status < 400:
                    raise AttemptFailed(UpstreamError("upstream_bad_reply", f"{self.service} ({url}) answered more than "
                                                      f"{MAX_JSON_REPLY >> 20} MiB"), retryable=False)
                return response.status, data[:cap].decode("utf-8", "replace"), response.headers

        try:
            status, text, headers = await asyncio.wait_for(send(), timeout)  # the whole reply, not each read
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(self.service, url, exc) from None
        if status >= 400:
            raise status_failure(self.wire, self.service, status, text[:MAX_ERROR_BODY], headers, self.secret)
        try:
            return json.loads(text)
        except ValueError:
            raise AttemptFailed(UpstreamError("upstream_bad_reply", f"{self.service} ({url}) answered something that is not JSON"),
                                retryable=True) from None

    async def lines(self, url: str, request: UpstreamRequest, timeouts: Timeouts) -> LineStream:
        """An open streamed reply, its status checked."""
        stream = LineStream(self, url, request)
        await stream.open(timeouts)
        return stream


class LineStream:
    """The lines of one streamed upstream reply; `aclose()` releases the connection."""

    def __init__(self, upstream: Upstream, url: str, request: UpstreamRequest):
        self.upstream = upstream
        self.url = url
        self.request = request
        self._response: aiohttp.ClientResponse | None = None
        self._lines: list[bytes] = []  # complete lines already read
        self._partial = b""  # the start of a line whose end has not come yet

    async def open(self, timeouts: Timeouts) -> None:
        """Send the request; `timeouts.read` bounds the wait for the headers and then for
        each chunk (the first-token timeout: a stalled upstream fails the attempt)."""
        try:
            self._response = await self.upstream.session.request(
                self.request.method, self.url + self.request.path, json=self.request.body, timeout=timeouts.aiohttp(),
                allow_redirects=False)
        except TRANSPORT_ERRORS as exc:
            raise transport_failure(self.upstream.service, self.url, exc) from None
        response = self._response
        if response.status >= 400:
            try:
                body = (await read_capped(response.content, MAX_ERROR_BODY))[:MAX_ERROR_BODY].decode("utf-8", "replace")
            except TRANSPORT_ERRORS:
                body = ""
            await self.aclose()
            raise status_failure(self.upstream.wire, self.upstream.service, response.status, body, response.headers,
                                 self.upstream.secret)

    async def next_lines(self) -> list[str] | None:
        """The lines read and not yet taken, waiting for at least one; None at the end.
        AttemptFailed on a stall (no bytes within the read timeout) or a broken connection."""
        # Whatever arrived is split at once and handed over whole: one await per network
        # read, not one per line (an SSE event is two lines, and each await costs on the
        # token path).
        while not self._lines:
            assert self._response is not None
            try:
                data = await self._response.content.readany()
            except TRANSPORT_ERRORS as exc:
                raise transport_failure(self.upstream.service, self.url, exc) from None
            if not data:
                if not self._partial:
                    return None
                self._lines.append(self._partial)
                self._partial = b""
                break
            if len(self._partial) + len(data) > READ_BUFFER and b"\n" not in data:
                raise AttemptFailed(UpstreamError("upstream_bad_reply", f"{self.upstream.service} ({self.url}) sent a line "
                                                  f"longer than {READ_BUFFER} bytes"), retryable=True)
            pieces = (self._partial + data).split(b"\n")
            self._partial = pieces.pop()
            self._lines = pieces
        lines, self._lines = self._lines, []
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    async def drain(self) -> None:
        """Read what is left after the reply's end marker (the chunked terminator), so
        that the connection goes back to the pool: closing a reply with unread bytes
        closes its connection, and every next request would pay a new connect."""
        response = self._response
        if response is None or response.content.at_eof():
            return
        try:
            if hasattr(asyncio, "timeout"):  # Python 3.11+: no task of its own, as asyncio.wait_for makes
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await _read_to_end(response.content)
            else:
                await asyncio.wait_for(_read_to_end(response.content), DRAIN_TIMEOUT)
        except TRANSPORT_ERRORS:
            response.close()  # an upstream that talks on after its end: the connection goes

    async def aclose(self) -> None:
        if self._response is not None:
            response, self._response = self._response, None
            if response.content.at_eof():
                response.release()
            else:
                response.close()  # unread bytes: the connection cannot be reused


@dataclass
class Deadline:
    """A request's overall budget, in time.monotonic() seconds."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        return self.at - time.monotonic()

    def cap(self, seconds: float) -> float:
        """`seconds`, or less when the deadline comes sooner (never below 1 ms)."""
        return max(0.001, min(seconds, self.left()))
