"""Sending one request to one upstream URL, and saying precisely how it failed.

One `httpx.AsyncClient` per service, with httpx's own retries off (the retry loop in
msting.providers.remote.retry is the only one), proxies from the environment ignored
unless asked for, and the service's `verify_cert`. Every failure becomes an
`AttemptFailed` that says whether another attempt makes sense (connect errors,
timeouts, 5xx, 408 and 429 do; a 400 does not: the request itself is wrong) and
carries the upstream's Retry-After.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator

import httpx

from msting.api.errors import InvalidRequest, MstingError, NotFound, Timeout, TooLarge, Unavailable, UpstreamError
from msting.providers.remote.wire import UpstreamRequest, Wire

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 4096  # bytes of an error reply kept for its message
MAX_RETRY_AFTER = 3600.0


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


def status_failure(wire: Wire, service: str, status: int, text: str, headers: httpx.Headers) -> AttemptFailed:
    message = str(wire.error_message(status, _parse(text)))[:500]
    said = f"{service} answered HTTP {status}: {message}"
    retry_after = retry_after_seconds(headers.get("retry-after"))
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


def transport_failure(service: str, url: str, exc: Exception) -> AttemptFailed:
    if isinstance(exc, httpx.TimeoutException):
        return AttemptFailed(Timeout("upstream_timeout", f"{service} ({url}) did not answer in time"), retryable=True)
    if isinstance(exc, httpx.ConnectError):
        return AttemptFailed(Unavailable("upstream_unreachable", f"cannot connect to {service} at {url}: {exc}"), retryable=True)
    return AttemptFailed(UpstreamError("upstream_broken", f"{service} ({url}) broke off: {type(exc).__name__}: {exc}"), retryable=True)


class Upstream:
    """The HTTP side of one service."""

    def __init__(self, service: str, wire: Wire, headers: dict[str, str], *, verify: bool, long_timeout: float):
        self.service = service
        self.wire = wire
        self.client = httpx.AsyncClient(
            headers=headers, verify=verify, trust_env=False, follow_redirects=False,
            timeout=httpx.Timeout(long_timeout), limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def json(self, url: str, request: UpstreamRequest, timeout: float) -> Any:
        """The parsed JSON reply; AttemptFailed otherwise."""
        try:
            response = await self.client.request(request.method, url + request.path, json=request.body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise transport_failure(self.service, url, exc) from None
        if response.status_code >= 400:
            raise status_failure(self.wire, self.service, response.status_code, response.text[:MAX_ERROR_BODY], response.headers)
        try:
            return response.json()
        except ValueError:
            raise AttemptFailed(UpstreamError("upstream_bad_reply", f"{self.service} ({url}) answered something that is not JSON"),
                                retryable=True) from None

    async def lines(self, url: str, request: UpstreamRequest, timeouts: httpx.Timeout) -> LineStream:
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
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    async def open(self, timeouts: httpx.Timeout) -> None:
        """Send the request; `timeouts.read` bounds the wait for the headers and then for
        each chunk (the first-token timeout: a stalled upstream fails the attempt)."""
        client = self.upstream.client
        http_request = client.build_request(self.request.method, self.url + self.request.path, json=self.request.body,
                                            timeout=timeouts)
        try:
            self._response = await client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_failure(self.upstream.service, self.url, exc) from None
        response = self._response
        if response.status_code >= 400:
            try:
                body = (await response.aread())[:MAX_ERROR_BODY].decode("utf-8", "replace")
            except httpx.HTTPError:
                body = ""
            await self.aclose()
            raise status_failure(self.upstream.wire, self.upstream.service, response.status_code, body, response.headers)
        self._lines = response.aiter_lines()

    async def next_line(self) -> str | None:
        """The next line, None at the end; AttemptFailed on a stall (no bytes within the
        read timeout) or a broken connection."""
        assert self._lines is not None
        try:
            return await self._lines.__anext__()
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise transport_failure(self.upstream.service, self.url, exc) from None

    async def aclose(self) -> None:
        if self._response is not None:
            response, self._response = self._response, None
            try:
                await response.aclose()
            except Exception:  # closing a broken connection: nothing left to save
                pass


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
