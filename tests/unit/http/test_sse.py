"""msting.http.sse.EventStream, driven as a plain ASGI app with a recording `send`.

Nothing is sent before the chunk iterator's first chunk: an MstingError raised before
it is answered as an ordinary JSON error (its status, its Retry-After); the extra
headers (who answered: X-Msting-Provider, X-Msting-Attempts, X-Msting-Upstream) are
read once the first chunk is there, and sent with the status line. Last, the same
through the router: a stream that fails over before its first event names the service
that answered, and one that every service fails is a 502/503 JSON error."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import pytest

from msting.api.errors import InvalidRequest, MstingError, NotFound, Timeout, Unavailable, UpstreamError
from msting.api.events import Attempt, Done, Token
from msting.api.requests import CompletionRequest
from msting.http.calls import stream_headers
from msting.http.errors import error_body
from msting.http.native import native_events
from msting.http.sse import SSE_HEADERS, EventStream
from msting.providers.base import Capabilities, ModelInfo
from msting.providers.router import Router

SCOPE = {"type": "http", "method": "POST", "path": "/generate", "headers": []}


@dataclass
class Sent:
    messages: list[dict]

    @property
    def start(self) -> dict:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def status(self) -> int:
        return self.start["status"]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.start["headers"])

    def header(self, name: str) -> str | None:
        found = [v.decode() for k, v in self.headers if k.decode().lower() == name.lower()]
        assert len(found) <= 1, found
        return found[0] if found else None

    @property
    def bodies(self) -> list[dict]:
        return self.messages[1:]

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.bodies)


def serve(app: EventStream | Callable[[], EventStream], *, disconnect_after_body: int | None = None) -> Sent:
    """Run `app` (or the app a callable makes, inside the event loop) for one request;
    the client disconnects after `disconnect_after_body` body messages (never, when None)."""
    messages: list[dict] = []

    async def main() -> None:
        nonlocal app
        if not isinstance(app, EventStream):
            app = app()
        gone = asyncio.Event()

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            messages.append(message)
            bodies = sum(1 for m in messages if m["type"] == "http.response.body")
            if disconnect_after_body is not None and bodies >= disconnect_after_body:
                gone.set()

        await asyncio.wait_for(app(SCOPE, receive, send), 5)

    asyncio.run(main())
    return Sent(messages)


class Chunks:
    """A chunk iterator: `items` in order (an exception in it is raised there); it notes
    how far it got, and whether it was closed."""

    def __init__(self, *items: Any, hang: bool = False):
        self.items = list(items)
        self.hang = hang
        self.made = 0
        self.closed = False

    async def _gen(self) -> AsyncIterator[str]:
        try:
            for item in self.items:
                if isinstance(item, BaseException):
                    raise item
                self.made += 1
                yield item
            if self.hang:
                await asyncio.Event().wait()
        finally:
            self.closed = True

    def __call__(self) -> AsyncIterator[str]:
        return self._gen()


class HeadersProbe:
    """A `headers` callable that records how many chunks existed when it was called."""

    def __init__(self, chunks: Chunks, headers: list[tuple[bytes, bytes]]):
        self.chunks = chunks
        self.value = headers
        self.calls: list[int] = []

    def __call__(self) -> list[tuple[bytes, bytes]]:
        self.calls.append(self.chunks.made)
        return self.value


WHO = [(b"x-msting-provider", b"lan"), (b"x-msting-attempts", b"2"), (b"x-msting-upstream", b"http://10.0.0.2:8001")]


# ---- an error before the first chunk ---------------------------------------------------


@pytest.mark.parametrize(("error", "status", "retry_after"), [
    (Unavailable("all_services_failed", "no service could answer", retry_after=3, services=["a", "b"]), 503, "3"),
    (Unavailable("queue_full", "the queue is full", retry_after=1), 503, "1"),
    (UpstreamError("all_services_failed", "no service could answer", attempts=[{"service": "a", "url": None,
                                                                                "error": "boom", "ms": 1.0}]), 502, None),
    (NotFound("model_not_found", "model 'x' is not known", close_matches=["y"]), 404, None),
    (InvalidRequest("invalid_parameter", "bad seed", param="seed"), 400, None),
    (Timeout("upstream_timeout", "did not answer in time"), 504, None),
], ids=lambda v: v.code if isinstance(v, MstingError) else None)
def test_an_error_before_the_first_chunk_is_a_plain_json_error_response(error: MstingError, status: int,
                                                                         retry_after: str | None) -> None:
    chunks = Chunks(error, "data: never\n\n")
    probe = HeadersProbe(chunks, WHO)
    sent = serve(EventStream(chunks(), probe))
    assert sent.status == status
    assert sent.header("content-type") == "application/json"
    assert sent.header("retry-after") == retry_after
    assert int(sent.header("content-length")) == len(sent.body)
    assert json.loads(sent.body) == error_body(error)
    assert [m["more_body"] for m in sent.bodies] == [False]  # one whole body, no stream
    assert probe.calls == []  # nobody answered: no who-answered headers
    assert sent.header("x-msting-provider") is None and (b"content-type", b"text/event-stream; charset=utf-8") not in sent.headers
    assert chunks.closed


# ---- the first chunk, then the headers -------------------------------------------------


def test_the_headers_are_read_once_after_the_first_chunk_and_sent_with_the_status_line() -> None:
    chunks = Chunks("event: token\ndata: {}\n\n", "event: token\ndata: {}\n\n", "event: done\ndata: {}\n\n")
    probe = HeadersProbe(chunks, WHO)
    sent = serve(EventStream(chunks(), probe))
    assert probe.calls == [1]  # once, when the first chunk was there (and not the others)
    assert sent.status == 200
    assert sent.headers == SSE_HEADERS + WHO
    assert [m["body"] for m in sent.bodies] == [c.encode() for c in chunks.items] + [b""]
    assert [m["more_body"] for m in sent.bodies] == [True, True, True, False]
    assert chunks.closed


def test_without_a_headers_callable_only_the_sse_headers_go() -> None:
    sent = serve(EventStream(Chunks("data: 1\n\n")()))
    assert sent.status == 200 and sent.headers == SSE_HEADERS
    assert sent.body == b"data: 1\n\n"


def test_a_stream_that_ends_before_any_chunk_is_an_empty_200() -> None:
    chunks = Chunks()
    probe = HeadersProbe(chunks, WHO)
    sent = serve(EventStream(chunks(), probe))
    assert sent.status == 200 and sent.headers == SSE_HEADERS + WHO and probe.calls == [0]
    assert [(m["body"], m["more_body"]) for m in sent.bodies] == [(b"", False)]


def test_a_client_that_goes_away_mid_stream_closes_the_chunk_iterator() -> None:
    chunks = Chunks("data: 1\n\n", hang=True)
    sent = serve(EventStream(chunks()), disconnect_after_body=1)
    assert sent.status == 200 and sent.body == b"data: 1\n\n"
    assert chunks.closed  # its cleanup (cancelling the generation) ran


# ---- through the router ----------------------------------------------------------------


@dataclass
class OneShot:
    """A provider whose streams either raise `error` before any event or answer one token."""

    name: str
    error: MstingError | None = None
    url: str | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)

    def stream(self, request):
        provider = self

        class S:
            model = "m"
            attempts = [Attempt(provider.name, provider.url, None, 1.0)] if provider.url else []

            def __aiter__(self):
                return self._events()

            async def _events(self):
                if provider.error is not None:
                    raise provider.error
                yield Token("hi")
                yield Done("m", "", "stop")

            async def aclose(self):
                pass

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                pass

        return S()

    def models(self) -> list[ModelInfo]:
        return [self.model("m")]

    def model(self, name: str | None) -> ModelInfo:
        return ModelInfo("m", self.name, "ready", "llm", None, True, 0)


def routed_response(*providers: OneShot) -> Sent:
    router = Router(list(providers), fallback_chain=tuple(p.name for p in providers))

    def open_() -> EventStream:  # as a route answers a streamed request
        routed = router.stream(CompletionRequest("x", None))
        return EventStream(native_events(routed), stream_headers(routed))

    return serve(open_)


def test_a_stream_that_failed_over_names_the_service_that_answered_and_the_attempts() -> None:
    sent = routed_response(OneShot("a", error=Unavailable("upstream_unavailable", "a is down")),
                           OneShot("b", url="http://10.0.0.2:8001"))
    assert sent.status == 200
    assert sent.header("x-msting-provider") == "b"
    assert sent.header("x-msting-attempts") == "2"
    assert sent.header("x-msting-upstream") == "http://10.0.0.2:8001"
    assert sent.body.startswith(b'event: token\ndata: {"text":"hi"}\n\n')
    assert b'event: done\ndata: {"model":"b~m"' in sent.body


def test_a_stream_of_the_daemons_own_workers_names_no_upstream() -> None:
    sent = routed_response(OneShot("local"))
    assert (sent.header("x-msting-provider"), sent.header("x-msting-attempts"), sent.header("x-msting-upstream")) == (
        "local", "1", None)


@pytest.mark.parametrize(("second", "status"), [(Unavailable("upstream_unavailable", "b is down", retry_after=2), 503),
                                                (UpstreamError("upstream_error", "b answered HTTP 500"), 502)])
def test_a_stream_every_service_failed_is_a_json_error_naming_each(second: MstingError, status: int) -> None:
    sent = routed_response(OneShot("a", error=Unavailable("upstream_unavailable", "a is down", retry_after=5)),
                           OneShot("b", error=second))
    assert sent.status == status
    body = json.loads(sent.body)["error"]
    assert body["code"] == "all_services_failed" and body["services"] == ["a", "b"]
    assert [t["service"] for t in body["attempts"]] == ["a", "b"]
    assert "a: a is down" in body["message"] and f"b: {second.message}" in body["message"]
    assert sent.header("retry-after") == ("2" if status == 503 else None)
    assert sent.header("x-msting-provider") is None
