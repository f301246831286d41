"""msting.providers.remote.upstream: how a failed attempt is classified, and that an
upstream's error message never carries the service's API key."""

from __future__ import annotations

import pytest

from msting.api.errors import InvalidRequest, NotFound, Unavailable, UpstreamError
from msting.providers.remote.formats import wire_for
from msting.providers.remote.upstream import redacted, retry_after_seconds, status_failure

KEY = "sk-live-0123456789abcdef"


@pytest.mark.parametrize("text", [
    f"Incorrect API key provided: {KEY}.",
    f"Incorrect API key provided: {KEY[:12]}********",
    f"the key ending {KEY[-10:]} is revoked",
])
def test_an_upstream_message_quoting_the_key_whole_or_in_part_is_masked(text: str) -> None:
    masked = redacted(text, KEY)
    assert "***" in masked
    for size in range(8, len(KEY) + 1):
        assert all(KEY[i:i + size] not in masked for i in range(len(KEY) - size + 1))


def test_a_401_quoting_the_key_is_a_failure_whose_message_has_no_key() -> None:
    body = '{"error": {"message": "Incorrect API key provided: ' + KEY + '", "type": "invalid_request_error"}}'
    failure = status_failure(wire_for("openai"), "lan", 401, body, {}, KEY)
    assert KEY not in failure.error.message and "***" in failure.error.message
    assert isinstance(failure.error, UpstreamError) and not failure.retryable


@pytest.mark.parametrize(("status", "kind", "retryable"), [
    (429, Unavailable, True), (500, UpstreamError, True), (503, UpstreamError, True), (408, UpstreamError, True),
    (400, InvalidRequest, False), (404, NotFound, False), (422, InvalidRequest, False),
])
def test_statuses_are_classified(status: int, kind: type, retryable: bool) -> None:
    failure = status_failure(wire_for("openai"), "lan", status, '{"error": {"message": "no"}}', {})
    assert isinstance(failure.error, kind) and failure.retryable is retryable
    assert f"HTTP {status}" in failure.error.message


def test_a_429_carries_its_retry_after() -> None:
    failure = status_failure(wire_for("openai"), "lan", 429, "{}", {"Retry-After": "2"})
    assert failure.retry_after == 2.0 and failure.error.retry_after == 2


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("nan", None), ("soon", None),
                                                 (None, None), ("999999", 3600.0)])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value) == seconds


def _serve(body: bytes, status: int):
    """A real local HTTP server answering every request with `body`, in chunks."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for i in range(0, len(body), 1000):
            await response.write(body[i:i + 1000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return web.AppRunner(app)


@pytest.mark.parametrize(("status", "size"), [(200, 50_000), (500, 2_000_000)])
def test_a_huge_reply_is_not_read_into_memory_whole(monkeypatch: pytest.MonkeyPatch, status: int, size: int) -> None:
    import asyncio

    from aiohttp import web

    from msting.providers.remote import upstream
    from msting.providers.remote.upstream import AttemptFailed, Upstream

    monkeypatch.setattr(upstream, "MAX_JSON_REPLY", 10_000)
    body = b'{"data": [' + b'{"id": "m"},' * (size // 12) + b'{"id": "last"}]}'

    async def main() -> AttemptFailed:
        runner = _serve(body, status)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        up = Upstream("lan", wire_for("openai"), {}, verify=True)
        try:
            with pytest.raises(AttemptFailed) as exc:
                await up.json(f"http://127.0.0.1:{port}", wire_for("openai").list_models(), 10)
            return exc.value
        finally:
            await up.close()
            await runner.cleanup()

    failure = asyncio.run(main())
    if status == 200:
        assert failure.error.code == "upstream_bad_reply" and "more than" in failure.error.message
    else:
        assert "HTTP 500" in failure.error.message and len(failure.error.message) < 1000
