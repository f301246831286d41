"""Helpers of the central-service acceptance tests (tests/e2e/test_central_service_*.py):
a msting daemon fronting remote services, its config, and a client-side reader of
OpenAI streams that tells a complete stream from an explicit error and from a
truncated one.

The upstreams are real servers: stand-ins (tests/upstreams), llama-cpp-python's own
server, a second msting daemon. Timeouts and intervals are short so that a failure
shows within a second or two; the tests never assert on wall time except the lower
bounds a protocol guarantees (Retry-After).
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import httpx
from daemon_home import DaemonHome
from upstreams.fixtures import StandIn

PROMPT = "Tell me about the quick brown fox"
CHAT = [{"role": "user", "content": PROMPT}]

# Fast, but not so fast that a loaded two-core machine trips them: a healthy localhost
# upstream answers in milliseconds.
FAST_UPSTREAM = {
    "short_timeout_sec": 2,
    "long_timeout_sec": 30,
    "first_token_timeout_sec": 5,
    "health_interval_sec": 0.5,
    "max_attempts": 3,
    "backoff_initial_sec": 0.05,
    "backoff_max_sec": 0.2,
    "breaker_failures": 3,
    "breaker_window_sec": 30,
    "breaker_cooldown_sec": 5,
}


def service(api_format: str, urls: Iterable[str], *, default_model: str | None = None, models: Iterable[str] = (),
            key_env: str | None = None, **upstream: Any) -> dict:
    """One `llm.services.<name>` entry, FAST_UPSTREAM with `upstream` over it."""
    entry: dict = {"api_format": api_format, "urls": list(urls), "upstream": {**FAST_UPSTREAM, **upstream}}
    if default_model is not None:
        entry["default_model"] = default_model
    if models:
        entry["models"] = list(models)
    if key_env is not None:
        entry["api_key_env_var"] = key_env
    return entry


def start_standins(*specs: tuple[str, dict]) -> list[StandIn]:
    """Stand-ins started side by side: each spec is (api, StandIn.start keyword arguments)."""
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(StandIn.start, api, **kw) for api, kw in specs]
    started = []
    errors = []
    for f in futures:
        try:
            started.append(f.result())
        except Exception as exc:  # noqa: BLE001 - close the others, then report
            errors.append(exc)
    if errors:
        for s in started:
            s.close()
        raise errors[0]
    return started


def refused_url() -> str:
    """A URL whose port nothing listens on: connections are refused."""
    from upstreams.fixtures import free_port

    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def central_daemon(services: dict, *, fallback_chain: list[str] | None = None, env: dict[str, str] | None = None,
                   label: str = "central", wait_services: Iterable[str] | None = None) -> Iterator[DaemonHome]:
    """A started msting daemon with these `llm.services` (its own temporary MSTING_HOME
    and port), stopped and removed afterwards. `env` goes into the daemon's environment
    (an API key). It is yielded once every URL of `wait_services` (default: all) has had
    its first health check."""
    dh = DaemonHome(label=label)
    llm: dict = {"services": services}
    if fallback_chain is not None:
        llm["fallback_chain"] = fallback_chain
    dh.write_config({"llm": llm})
    dh.env.update(env or {})
    try:
        dh.start()
        names = list(services) if wait_services is None else list(wait_services)
        dh.wait_for(lambda: all(u["last_checked"] for s in services_of(dh).values() if s["name"] in names for u in s["urls"]),
                    timeout=30, what="the first health check of every URL")
        yield dh
    finally:
        dh.cleanup()


def services_of(dh: DaemonHome) -> dict[str, dict]:
    """GET /llm/services, by name."""
    with dh.client(timeout=10) as c:
        r = c.get("/llm/services")
    r.raise_for_status()
    return {s["name"]: s for s in r.json()["data"]}


def url_state(dh: DaemonHome, service_name: str, url: str) -> dict:
    return next(u for u in services_of(dh)[service_name]["urls"] if u["url"] == url)


def chat_body(model: str, *, stream: bool = False, **extra: Any) -> dict:
    return {"model": model, "messages": CHAT, "stream": stream, **extra}


def work_requests(standin: StandIn) -> list[dict]:
    """The generation and embedding requests a stand-in received (health checks left out)."""
    return [r for r in standin.requests() if r["method"] == "POST"]


# ---- streams as a client sees them -------------------------------------------------------


@dataclass
class StreamResult:
    """One streamed reply, read to its end. `outcome`:
    - "complete": a [DONE] after a chunk with a finish_reason, no error event;
    - "error_event": an explicit `data: {"error": ...}` event, then the end;
    - "http_error": a non-200 status (nothing streamed): `body` is its JSON;
    - "truncated": anything else (the connection ended without either): a failure."""

    status: int
    headers: dict
    outcome: str = "truncated"
    text: str = ""
    finish_reason: str | None = None
    error: dict | None = None
    body: Any = None
    problem: str | None = None  # why a stream is "truncated"
    chunks: list[dict] = field(default_factory=list)


def read_stream(client: httpx.Client, path: str, body: dict) -> StreamResult:
    """POST `body` (stream: true) and read the SSE reply to its end."""
    result = StreamResult(status=0, headers={})
    done = False
    try:
        with client.stream("POST", path, json={**body, "stream": True}) as r:
            result.status, result.headers = r.status_code, dict(r.headers)
            if r.status_code != 200:
                r.read()
                try:
                    result.body = r.json()
                except ValueError:
                    result.body = r.text
                result.outcome = "http_error"
                return result
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if done or result.error is not None:
                    result.problem = f"data after the end: {data[:200]}"
                    return result
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    result.error = event["error"]
                    continue
                result.chunks.append(event)
                for choice in event.get("choices") or []:
                    result.text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                    result.finish_reason = choice.get("finish_reason") or result.finish_reason
    except httpx.HTTPError as exc:  # the connection broke without an end or an error event
        result.problem = f"{type(exc).__name__}: {exc}"
        return result
    if result.error is not None:
        result.outcome = "error_event"
    elif done and result.finish_reason:
        result.outcome = "complete"
    else:
        result.problem = "ended without [DONE] and a finish_reason" if not done else "[DONE] without a finish_reason"
    return result


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The first true value of `predicate()` within `timeout` seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value {last!r}")


# ---- an upstream that ends a stream with a bare [DONE] ------------------------------------


class BareDoneServer:
    """A minimal OpenAI-format server in a thread of this process whose streamed replies
    end as llama-cpp-python's server ends a generation it interrupts (a new request
    arrived, with `interrupt_requests` on, its default): some content, then `data: [DONE]`
    with no chunk carrying a finish_reason. Nothing else in tests/upstreams does that."""

    MODEL = "m"
    WORDS = ["once", " upon", " a"]

    def __init__(self) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, json.dumps({"object": "list", "data": [{"id": outer.MODEL, "object": "model"}]}).encode(),
                           "application/json")

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts += 1
                chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
                chunks += [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in outer.WORDS]
                body = "".join(f"data: {json.dumps({'object': 'chat.completion.chunk', 'model': outer.MODEL, **c})}\n\n"
                               for c in chunks) + "data: [DONE]\n\n"
                self._send(200, body.encode(), "text/event-stream")

        self.posts = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
