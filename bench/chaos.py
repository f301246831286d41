#!/usr/bin/env python3
"""Chaos: faults and hostile input against real daemons and real llama.cpp workers.

    .venv/bin/python bench/chaos.py [--quick] [--soak MINUTES] [--json-out PATH] [--no-docs] [--keep-homes]

One daemon runs under a fresh, short temporary MSTING_HOME (``harness.Home``) with the
config in ``CHAOS_CONFIG`` (the shipped defaults, with a short ``hang_timeout_sec`` and
``health_interval_sec`` so that hangs are found in seconds; the restart policy is the
shipped one). Two profiles are written into the home: ``chaos`` (stories260K, the
default model, and msting-tiny, both always ready) and ``chaos-b`` (msting-tiny the
default, stories260K with another ``n_ctx``). The daemon starts on the implicit
``default`` profile and is switched to ``chaos``, so a daemon that comes back on
``chaos`` after a kill -9 shows that it restored its state.

The phases, in order (counts for the full run; ``--quick`` runs fewer):

1. 200 worker ``kill -9`` under continuous mixed load (plain and streaming, native and
   OpenAI routes, Unix socket and TCP, several clients), alternating the two models;
2. 20 ``SIGSTOP`` hangs of a busy worker, under the same load;
3. 50 profile switches ``chaos`` ⇄ ``chaos-b`` under load (``POST /v1/profiles/switch``,
   then polling the job);
4. the fuzz: 10,000 requests drawn by schemathesis from the daemon's ``GET /openapi.json``
   (valid-shaped and negative), plus hypothesis-drawn hostile JSON sent raw (bench/fuzz.py);
   the rejected ones in bursts interleaved with idle windows while ``GET /health`` is
   sampled from another process, so that /health before and during the fuzz is a ratio
   within one run;
5. 50 daemon ``kill -9``, each followed by ``msting llm start``, checking what came back
   (profile, models, default model) and that no process of the killed daemon is left;
6. a soak: 16 concurrent clients for ``--soak`` minutes (default 30), sampling the RSS
   of the daemon, its workers and the spare.

Every request is sent by hand-written HTTP/1.1 on a raw socket (``RawConn``) and every
reply is classified (``classify``): *ok* (validated: the route's response schema from
the OpenAPI document, non-empty text, a finish_reason, usage; for streams the terminal
``done`` event or ``[DONE]``), *error* (an error status with the error body, or an
explicit error event in a stream), *truncated* (presented as a success but incomplete or
malformed: must be 0), *lost* (no answer, or a dropped connection: must be 0; a daemon
kill -9 cuts its own requests, counted apart). Time to serve again after a fault = the
fault → the first 200 of ``POST /generate {"max_tokens": 1}`` for that model (sent right
after the fault; it waits in the queue). Restarts are read from ``GET /v1/status``.

Results: stdout, ``bench/results/chaos.json`` (``chaos.quick.json`` for ``--quick``) and,
for a full run, ``docs/reliability.md``. Exit code 1 when a must-be-zero count is not zero
or a phase failed. Every loop is bounded in count and time; only the daemon's Unix
socket and 127.0.0.1 are targets. tests/e2e/test_chaos.py runs a CI-sized plan with this
same code. This file must not import from ``tests/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fuzz  # noqa: E402 - bench/fuzz.py
import harness as h  # noqa: E402 - bench/harness.py
import psutil  # noqa: E402
import yaml  # noqa: E402

ROOT = HERE.parent
DOCS = ROOT / "docs" / "reliability.md"
DEFAULT_JSON = ROOT / "bench" / "results" / "chaos.json"
SEED = 20261201

# The chaos daemon's config: shipped defaults except these (recorded in the results).
CHAOS_CONFIG: dict = {
    "llm_service": {"hang_timeout_sec": 3, "health_interval_sec": 1},
    "logging": {"file_level": "INFO"},
}
STORIES_NAME = "stories260K"
TINY_NAME = "msting-tiny"

# ---- targets ------------------------------------------------------------------------
KILL_MEDIAN_SLACK_MS = 600.0  # worker kill -9 -> serving again: median <= load_ms + 0.6 s
KILL_MAX_SLACK_MS = 1500.0  # ... and max <= load_ms + 1.5 s
HANG_SLACK_MS = 1000.0  # SIGSTOP -> serving again <= hang_timeout + load_ms + 1 s
FUZZ_MIN_RPS = 500.0
FUZZ_PACE_RPS = 600.0  # /health is compared idle vs during a fuzz paced at this rate (the target's 500/s, and some)


@dataclass
class Plan:
    worker_kills: int
    hangs: int
    switches: int
    fuzz: int  # schemathesis requests
    hostile: int  # hypothesis hostile JSON requests
    huge: int  # bodies over the size limit
    daemon_kills: int
    soak_sec: float
    load_clients: int = 4
    soak_clients: int = 16
    fuzz_senders: int = 4
    max_tokens: int = 48
    seed: int = SEED


PLANS = {
    "full": Plan(worker_kills=200, hangs=20, switches=50, fuzz=10_000, hostile=2_000, huge=10, daemon_kills=50, soak_sec=30 * 60),
    "quick": Plan(worker_kills=20, hangs=2, switches=4, fuzz=1_000, hostile=200, huge=5, daemon_kills=3, soak_sec=60),
    # tests/e2e/test_chaos.py
    "ci": Plan(worker_kills=20, hangs=2, switches=2, fuzz=1_000, hostile=150, huge=3, daemon_kills=1, soak_sec=0),
}


# =======================================================================================
# raw HTTP/1.1


class Dropped(Exception):
    """The connection ended before the reply was complete."""


@dataclass
class Reply:
    status: int | None = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the whole message arrived, as its framing says
    error: str | None = None  # connect | timeout | dropped | reset | send
    elapsed: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


class RawConn:
    """One keep-alive connection, hand-written HTTP/1.1: to the Unix socket
    (``("unix", path)``) or to TCP (``("tcp", "127.0.0.1", port)``)."""

    IDLE_REUSE_SEC = 20.0  # uvicorn closes idle keep-alive connections after 30 s

    def __init__(self, target: tuple, timeout: float = 60.0):
        self.target = target
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.last_used = 0.0
        self.host = "msting" if target[0] == "unix" else f"127.0.0.1:{target[2]}"

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def _connect(self) -> None:
        if self.target[0] == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(self.target[1])
        else:
            s = socket.create_connection((self.target[1], self.target[2]), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.buf = b""

    def request(self, method: str, path: str, body: bytes | None = None, *, timeout: float | None = None,
                chunked: bool = False, headers: dict | None = None) -> Reply:
        t0 = time.monotonic()
        deadline = t0 + (timeout or self.timeout)
        reply = Reply()
        if self.sock is not None and t0 - self.last_used > self.IDLE_REUSE_SEC:
            self.close()
        if self.sock is None:
            try:
                self._connect()
            except OSError as exc:
                self.close()
                reply.error = f"connect: {type(exc).__name__}"
                reply.elapsed = time.monotonic() - t0
                return reply
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body is not None:
            head.append("Content-Type: application/json")
            head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
        send_error = None
        try:
            assert self.sock is not None
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            if body is None:
                self.sock.sendall(data)
            elif not chunked:
                self.sock.sendall(data + body if len(body) < 65536 else data)
                if len(body) >= 65536:
                    view = memoryview(body)
                    for i in range(0, len(body), 1 << 20):
                        self.sock.sendall(view[i:i + (1 << 20)])
            else:
                self.sock.sendall(data)
                for i in range(0, len(body), 1 << 16):
                    part = body[i:i + (1 << 16)]
                    self.sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                self.sock.sendall(b"0\r\n\r\n")
        except socket.timeout:
            send_error = "timeout"
        except OSError as exc:  # the server answered (413) and closed before reading it all: read that answer
            send_error = f"send: {type(exc).__name__}"
        try:
            self._read(reply, deadline)
        except socket.timeout:
            reply.error = "timeout"
        except (Dropped, OSError) as exc:
            reply.error = send_error or ("dropped" if isinstance(exc, Dropped) else f"reset: {type(exc).__name__}")
        reply.elapsed = time.monotonic() - t0
        self.last_used = time.monotonic()
        if reply.error or not reply.complete or reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    def _recv(self, deadline: float) -> None:
        assert self.sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise Dropped()
        self.buf += chunk

    def _read(self, reply: Reply, deadline: float) -> None:
        while b"\r\n\r\n" not in self.buf:
            self._recv(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        reply.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            reply.headers[k.strip().lower()] = v.strip()
        if "content-length" in reply.headers:
            n = int(reply.headers["content-length"])
            while len(self.buf) < n:
                self._recv(deadline)
            reply.body, self.buf = self.buf[:n], self.buf[n:]
            reply.complete = True
        elif reply.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            try:
                while True:
                    while b"\r\n" not in self.buf:
                        self._recv(deadline)
                    size_line, self.buf = self.buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(self.buf) < size + 2:
                        self._recv(deadline)
                    parts.append(self.buf[:size])
                    self.buf = self.buf[size + 2:]
                    if size == 0:
                        break
            finally:
                reply.body = b"".join(parts)
            reply.complete = True
        else:  # no length: until the server closes
            try:
                while True:
                    self._recv(deadline)
            except Dropped:
                pass
            reply.body, self.buf = self.buf, b""
            reply.complete = True
            self.close()


def post_json(conn: RawConn, path: str, body: Any, timeout: float | None = None) -> Reply:
    return conn.request("POST", path, json.dumps(body).encode(), timeout=timeout)


# =======================================================================================
# what a reply must look like


def parse_sse(body: bytes) -> tuple[list[tuple[str | None, str]], bool]:
    """Events (name, data) of an SSE body, and whether the body ended on an event boundary."""
    text = body.decode("utf-8", "replace")
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        events.append((name, "\n".join(data)))
    return events, text.endswith("\n\n") or not text


class Contract:
    """Response validators built from the daemon's own OpenAPI document."""

    def __init__(self, doc: dict):
        import jsonschema_rs

        self.doc = doc
        comps = doc["components"]

        def make(schema: dict) -> Any:
            return jsonschema_rs.validator_for({"components": comps, **schema})

        self.error = make({"$ref": "#/components/schemas/Error"})
        self.responses: dict[tuple[str, str, str], Any] = {}
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                for status, resp in op.get("responses", {}).items():
                    if "$ref" in resp:
                        continue
                    schema = (resp.get("content") or {}).get("application/json", {}).get("schema")
                    if schema is not None:
                        self.responses[(method.upper(), path, status)] = make(schema)

    def validator(self, method: str, route: str, status: int) -> Any:
        return self.responses.get((method, route, str(status)))


def _route_template(path: str) -> str:
    p = path.split("?", 1)[0]
    if p.startswith("/v1/models/"):
        return "/v1/models/{model_id}"
    if p.startswith("/v1/jobs/"):
        return "/v1/jobs/{job_id}"
    return p


NATIVE_STREAM_ROUTES = {"/generate", "/v1/execute"}
TEXT_FIELD = {"/generate": ("text",), "/v1/execute": ("output",), "/v1/chat/completions": ("choices", 0, "message", "content"),
              "/v1/completions": ("choices", 0, "text")}


def _dig(obj: Any, keys: tuple) -> Any:
    for k in keys:
        obj = obj[k]
    return obj


def classify(contract: Contract, method: str, path: str, reply: Reply, *, stream: bool, strict_text: bool) -> tuple[str, str, str]:
    """(class, code, detail). class: ok | error | truncated | lost. `strict_text`: a
    generation that must come back with non-empty text (the load's own requests)."""
    route = _route_template(path)
    if reply.status is None:
        return "lost", reply.error or "no answer", ""
    if not reply.complete:
        return "lost", reply.error or "dropped", f"status {reply.status}, {len(reply.body)} bytes before the connection ended"
    ctype = reply.headers.get("content-type", "")
    if reply.status >= 400:
        try:
            body = reply.json()
        except ValueError:
            return "error", f"http {reply.status}", "error body is not JSON: " + reply.body[:120].decode("utf-8", "replace")
        if not contract.error.is_valid(body):
            return "error", f"http {reply.status}", "error body does not match the Error schema: " + reply.body[:160].decode("utf-8", "replace")
        return "error", str(body["error"].get("code")), ""
    if reply.status == 499:
        return "lost", "499", ""
    if ctype.startswith("text/event-stream"):
        return _classify_stream(contract, route, reply, strict_text)
    try:
        body = reply.json()
    except ValueError:
        return "truncated", "bad json", reply.body[:160].decode("utf-8", "replace")
    v = contract.validator(method, route, reply.status)
    if v is not None and not v.is_valid(body):
        errs = "; ".join(e.message[:100] for e in list(v.iter_errors(body))[:2])
        return "truncated", "schema", f"{errs} | {reply.body[:160].decode('utf-8', 'replace')}"
    if stream and route in TEXT_FIELD:
        return "truncated", "not a stream", "asked for a stream, got JSON"
    if strict_text and route in TEXT_FIELD:
        try:
            text = _dig(body, TEXT_FIELD[route])
        except (KeyError, IndexError, TypeError):
            text = None
        usage = body.get("usage") or {}
        if not text or not usage.get("completion_tokens"):
            return "truncated", "empty", reply.body[:160].decode("utf-8", "replace")
    return "ok", str(reply.status), ""


def _classify_stream(contract: Contract, route: str, reply: Reply, strict_text: bool) -> tuple[str, str, str]:
    events, whole = parse_sse(reply.body)
    if not whole:
        return "truncated", "partial event", reply.body[-120:].decode("utf-8", "replace")
    if route in NATIVE_STREAM_ROUTES:
        names = [n for n, _ in events]
        terminal = [i for i, n in enumerate(names) if n in ("done", "error")]
        if not terminal:
            return "truncated", "no terminal event", f"{len(events)} events, none done/error"
        if terminal[0] != len(events) - 1:
            return "truncated", "events after the end", str(names[-3:])
        name, data = events[-1]
        try:
            payload = json.loads(data)
        except ValueError:
            return "truncated", "bad event json", data[:120]
        if name == "error":
            return ("error", str(payload.get("error", {}).get("code")), "") if contract.error.is_valid(payload) else \
                ("error", "error event", "error event does not match the Error schema")
        text = "".join(json.loads(d).get("text", "") for n, d in events[:-1] if n == "token")
        if payload.get("finish_reason") not in ("stop", "length", "cancelled") or not isinstance(payload.get("usage"), dict):
            return "truncated", "bad done event", data[:160]
        if strict_text and (not text or not payload["usage"].get("completion_tokens")):
            return "truncated", "empty", data[:160]
        return "ok", "stream", ""
    datas = [d for _, d in events]
    if not datas:
        return "truncated", "empty stream", ""
    if datas[-1] != "[DONE]":
        try:
            last = json.loads(datas[-1])
        except ValueError:
            return "truncated", "bad chunk json", datas[-1][:120]
        if isinstance(last, dict) and "error" in last:
            return ("error", str(last["error"].get("code")), "") if contract.error.is_valid(last) else \
                ("error", "error event", "error chunk does not match the Error schema")
        return "truncated", "no [DONE]", datas[-1][:160]
    chunks = []
    for d in datas[:-1]:
        try:
            chunks.append(json.loads(d))
        except ValueError:
            return "truncated", "bad chunk json", d[:120]
    if any("error" in c for c in chunks):
        return "truncated", "error then [DONE]", ""
    finishes = [ch.get("finish_reason") for c in chunks for ch in c.get("choices") or []]
    if not any(f in ("stop", "length") for f in finishes):
        return "truncated", "no finish_reason", ""
    if strict_text:
        text = "".join((ch.get("delta") or {}).get("content") or ch.get("text") or "" for c in chunks for ch in c.get("choices") or [])
        if not text:
            return "truncated", "empty", ""
        if not any(c.get("usage") for c in chunks):
            return "truncated", "no usage chunk", ""
    return "ok", "stream", ""


# =======================================================================================
# the load


PROMPT = "Once upon a time"
LOAD_KINDS = ["generate", "generate-stream", "chat", "chat-stream", "completions", "completions-stream", "execute", "execute-stream"]


def load_request(kind: str, model: str | None, max_tokens: int) -> tuple[str, dict, bool]:
    """(route, body, stream) of one load request; greedy, so every reply is the same text."""
    stream = kind.endswith("-stream")
    base = kind.removesuffix("-stream")
    common: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
    if model is not None:
        common["model"] = model
    if stream:
        common["stream"] = True
    if base == "generate":
        return "/generate", {"prompt": PROMPT, **common}, stream
    if base == "execute":
        return "/v1/execute", {"prompt": PROMPT, **common}, stream
    if base == "completions":
        body = {"prompt": PROMPT, **common}
    else:
        body = {"messages": [{"role": "user", "content": "Tell me a story."}], **common}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return ("/v1/completions" if base == "completions" else "/v1/chat/completions"), body, stream


@dataclass
class Rec:
    t0: float
    t1: float
    kind: str
    model: str | None
    transport: str
    cls: str
    code: str
    detail: str


class Load:
    """`clients` threads sending LOAD_KINDS round robin over the models, each with its own
    raw connection (every fourth client on TCP, the others on the Unix socket). Bounded in
    requests and time."""

    def __init__(self, ctx: Ctx, clients: int, models: list[str | None], max_sec: float, max_requests: int = 1_000_000,
                 timeout: float = 90.0):
        self.ctx = ctx
        self.models = models
        self.stop_event = threading.Event()
        self.records: list[Rec] = []
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + max_sec
        self.max_requests = max_requests
        self.timeout = timeout
        self.threads = [threading.Thread(target=self._loop, args=(i,), name=f"load-{i}", daemon=True) for i in range(clients)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def _loop(self, i: int) -> None:
        tcp = i % 4 == 3
        conn = RawConn(("tcp", "127.0.0.1", self.ctx.home.port) if tcp else ("unix", str(self.ctx.home.socket)), self.timeout)
        n = i
        try:
            for _ in range(self.max_requests):
                if self.stop_event.is_set() or time.monotonic() > self.deadline:
                    return
                kind = LOAD_KINDS[n % len(LOAD_KINDS)]
                model = self.models[(n // len(LOAD_KINDS)) % len(self.models)]
                n += 1
                route, body, stream = load_request(kind, model, self.ctx.plan.max_tokens)
                t0 = time.monotonic()
                reply = post_json(conn, route, body)
                t1 = time.monotonic()
                if reply.status is None and (reply.error or "").startswith("connect"):
                    rec = Rec(t0, t1, kind, model, "tcp" if tcp else "unix", "refused", reply.error or "", "")
                    time.sleep(0.05)
                else:
                    cls, code, detail = classify(self.ctx.contract, "POST", route, reply, stream=stream, strict_text=True)
                    rec = Rec(t0, t1, kind, model, "tcp" if tcp else "unix", cls, code, detail)
                with self.lock:
                    self.records.append(rec)
        finally:
            conn.close()

    def stop(self) -> list[Rec]:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 30)
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            raise h.BenchError(f"load threads did not stop: {alive}")
        return self.records


def summarize(records: list[Rec]) -> dict:
    by_cls = Counter(r.cls for r in records)
    out: dict[str, Any] = {"sent": sum(1 for r in records if r.cls != "refused"), **{k: by_cls.get(k, 0) for k in
                           ("ok", "error", "truncated", "lost", "cut_by_daemon_kill", "refused")}}
    out["errors_by_code"] = dict(Counter(r.code for r in records if r.cls == "error").most_common())
    out["by_kind"] = {k: dict(Counter(r.cls for r in records if r.kind == k)) for k in sorted({r.kind for r in records})}
    out["streams_ended_by_error_event"] = sum(1 for r in records if r.cls == "error" and r.kind.endswith("-stream"))
    bad = [r for r in records if r.cls in ("truncated", "lost")]
    out["bad_examples"] = [{"kind": r.kind, "model": r.model, "transport": r.transport, "class": r.cls, "code": r.code,
                            "detail": r.detail[:300]} for r in bad[:10]]
    if records:
        span = max(r.t1 for r in records) - min(r.t0 for r in records)
        out["requests_per_sec"] = round(out["sent"] / span, 1) if span > 0 else None
    return out


# =======================================================================================
# the daemon under test


PROFILE_A = "chaos"
PROFILE_B = "chaos-b"


def profiles(stories: Path) -> dict[str, dict]:
    a = {"description": "chaos: stories260K and msting-tiny", "default_model": STORIES_NAME,
         "models": {STORIES_NAME: {"source": str(stories), "n_ctx": 2048, "always_ready": True},
                    TINY_NAME: {"source": "builtin:tiny", "always_ready": True}}}
    b = {"description": "chaos-b: msting-tiny the default, stories260K with a smaller n_ctx", "default_model": TINY_NAME,
         "models": {TINY_NAME: {"source": "builtin:tiny", "always_ready": True},
                    STORIES_NAME: {"source": str(stories), "n_ctx": 1024, "always_ready": True}}}
    return {PROFILE_A: a, PROFILE_B: b}


def effective_config(home_config: dict) -> dict:
    """The shipped default config with the home's overrides: every value the daemon ran with."""
    from importlib import resources

    shipped = yaml.safe_load(resources.files("msting.config").joinpath("default.yaml").read_text())
    return h.merge(shipped, home_config)


class Ctx:
    """The chaos daemon and what every phase shares."""

    def __init__(self, plan: Plan, log: Callable[[str], None] = print, keep: bool = False):
        self.plan = plan
        self.log = log
        self.keep = keep
        self.rng = random.Random(plan.seed)
        self.home = h.Home("chaos", CHAOS_CONFIG)
        folder = self.home.path / "config" / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        self.profiles = profiles(h.STORIES)
        for name, body in self.profiles.items():
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
        self.models = [STORIES_NAME, TINY_NAME]
        self.conn = RawConn(("unix", str(self.home.socket)), 90)
        self.contract: Contract = None  # type: ignore[assignment]
        self.doc: dict = {}

    # ---- api ------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30) -> Any:
        r = self.conn.request("GET", path, timeout=timeout)
        if r.status != 200:
            raise h.BenchError(f"GET {path}: {r.status} {r.error} {r.body[:300]!r}")
        return r.json()

    def post(self, path: str, body: Any, timeout: float = 90) -> Reply:
        return post_json(self.conn, path, body, timeout)

    def status(self) -> dict:
        return self.get("/v1/status")

    def model(self, st: dict, name: str) -> dict:
        return next(m for m in st["models"] if m["name"] == name and m["type"] == "llm")

    def restarts(self, st: dict | None = None) -> dict[str, int]:
        st = st or self.status()
        return {f"{m['name']}:{m['type']}": m["restarts"] for m in st["models"]}

    # ---- life cycle -----------------------------------------------------------------
    def start(self) -> dict:
        t0 = time.monotonic()
        started = self.home.start()
        job = self.switch(PROFILE_A)
        if job["state"] != "succeeded":
            raise h.BenchError(f"switch to {PROFILE_A} failed: {job.get('error')}")
        self.wait_ready(self.models, 90)
        self.doc = self.get("/openapi.json")
        self.contract = Contract(self.doc)
        return {"start": started, "switch_ms": job.get("duration_ms"), "wall_sec": round(time.monotonic() - t0, 2)}

    def switch(self, profile: str, timeout: float = 120) -> dict:
        r = self.post("/v1/profiles/switch", {"profile": profile})
        if r.status != 202:
            raise h.BenchError(f"POST /v1/profiles/switch {profile}: {r.status} {r.body[:300]!r}")
        job_id = r.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{job_id}")
            if job["state"] != "running":
                return job
            time.sleep(0.02)
        raise h.BenchError(f"switch to {profile} did not finish within {timeout:g} s")

    def wait_ready(self, models: list[str], timeout: float) -> dict:
        """Every model in `models` ready with a verified, serving worker; a FATAL model is
        loaded again by hand (POST /models/load) and that is recorded by the caller."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                st = self.status()
                ok = True
                for name in models:
                    m = self.model(st, name)
                    w = m["workers"][0]
                    if not (m["state"] == "ready" and w["verified"] and w["pid"] and w["state"] in ("READY", "BUSY")):
                        ok = False
                if ok:
                    return st
                last = {n: self.model(st, n)["state"] for n in models}
            except (h.BenchError, StopIteration, KeyError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.02)
        raise h.BenchError(f"models {models} not ready within {timeout:g} s (last: {last})\n{self.home.log_tail()}")

    def serve_again(self, model: str, t_fault: float, timeout: float = 120) -> dict:
        """fault -> the first 200 of POST /generate {"max_tokens": 1} for `model`. Stops early
        when the model is FATAL (503 model_failed)."""
        conn = RawConn(("unix", str(self.home.socket)), 60)
        deadline = t_fault + timeout
        attempts = 0
        codes: Counter = Counter()
        try:
            while time.monotonic() < deadline:
                attempts += 1
                r = post_json(conn, "/generate", {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0.0},
                              timeout=max(1.0, deadline - time.monotonic()))
                if r.status == 200:
                    return {"ms": round((time.monotonic() - t_fault) * 1000.0, 1), "attempts": attempts, "codes": dict(codes)}
                code = r.error or str(r.status)
                try:
                    code = r.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    pass
                codes[code] += 1
                if code == "model_failed":
                    return {"ms": None, "attempts": attempts, "codes": dict(codes), "fatal": True}
                time.sleep(0.02)
        finally:
            conn.close()
        return {"ms": None, "attempts": attempts, "codes": dict(codes), "timed_out": True}

    def recover(self, model: str) -> dict:
        """A FATAL model: POST /models/load (what an operator would do)."""
        t0 = time.monotonic()
        r = self.post("/models/load", {"model": model, "timeout": 60})
        return {"status": r.status, "ms": round((time.monotonic() - t0) * 1000.0, 1)}

    def close(self) -> list[int]:
        self.conn.close()
        return self.home.cleanup(self.keep)


# =======================================================================================
# phases


def _load_ms(ctx: Ctx, model: str) -> float | None:
    try:
        return ctx.model(ctx.status(), model)["load_ms"]
    except (h.BenchError, StopIteration, KeyError):
        return None


def phase_worker_kills(ctx: Ctx, n: int) -> dict:
    """n kill -9 of a serving worker under load, alternating the models."""
    faults = []
    load = Load(ctx, ctx.plan.load_clients, ctx.models, max_sec=n * 30 + 120).start()
    try:
        time.sleep(0.5)
        for i in range(n):
            model = ctx.models[i % len(ctx.models)]
            st = ctx.wait_ready([model], 90)
            time.sleep(ctx.rng.uniform(0.05, 0.5))  # land the kill anywhere in a request
            st = ctx.status()
            m = ctx.model(st, model)
            w = m["workers"][0]
            pid, before = w["pid"], m["restarts"]
            if not pid or m["state"] != "ready":
                st = ctx.wait_ready([model], 90)
                m = ctx.model(st, model)
                pid, before = m["workers"][0]["pid"], m["restarts"]
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            served = ctx.serve_again(model, t)
            fault: dict[str, Any] = {"i": i + 1, "model": model, "pid": pid, "state_before": w["state"], **served}
            if served.get("fatal") or served.get("timed_out"):
                fault["recovered_by_load"] = ctx.recover(model)
            st2 = ctx.wait_ready([model], 90)
            m2 = ctx.model(st2, model)
            fault.update(load_ms=m2["load_ms"], restarts_delta=m2["restarts"] - before, new_pid=m2["workers"][0]["pid"])
            faults.append(fault)
            if (i + 1) % 10 == 0 or fault["ms"] is None:
                ctx.log(f"  worker kill {i + 1}/{n} [{model}]: serving again in {fault['ms']} ms (load_ms {fault['load_ms']})"
                        + (" FATAL: loaded again by hand" if fault.get("fatal") else "") + (" TIMED OUT" if fault.get("timed_out") else ""))
    finally:
        records = load.stop()
    return {"faults": faults, "load": summarize(records), **_fault_summary(faults, "kill")}


def _fault_summary(faults: list[dict], kind: str, hang_ms: float = 0.0) -> dict:
    times = [f["ms"] for f in faults if f["ms"] is not None]
    loads = [f["load_ms"] for f in faults if f.get("load_ms") is not None]
    out: dict[str, Any] = {"n": len(faults), "served_again": len(times), "not_served_again": len(faults) - len(times),
                           "fatal": sum(1 for f in faults if f.get("fatal")), "serve_again_ms": h.spread(times, 1),
                           "load_ms": h.spread(loads, 2), "restarts_delta": dict(Counter(f.get("restarts_delta") for f in faults))}
    if kind == "kill" and times:
        med_budget = (h.percentile(loads, 50) or 0.0) + KILL_MEDIAN_SLACK_MS
        over = [f for f in faults if f["ms"] is None or f["ms"] > (f.get("load_ms") or 0.0) + KILL_MAX_SLACK_MS]
        out["targets"] = {"median_budget_ms": round(med_budget, 1), "median_met": out["serve_again_ms"]["median"] <= med_budget
                          and not out["not_served_again"], "max_met": not over, "over_max_budget": len(over)}
    if kind == "hang":
        over = [f for f in faults if f["ms"] is None or f["ms"] > hang_ms + (f.get("load_ms") or 0.0) + HANG_SLACK_MS]
        one = sum(1 for f in faults if f.get("restarts_delta") == 1)
        out["targets"] = {"budget_ms": f"{hang_ms:g} + load_ms + {HANG_SLACK_MS:g}", "met": not over and bool(faults),
                          "over_budget": len(over), "exactly_one_restart": one, "one_restart_met": one == len(faults)}
    return out


def phase_hangs(ctx: Ctx, n: int) -> dict:
    """n SIGSTOP of a busy worker under load: the daemon must kill it and restart it once."""
    hang_ms = CHAOS_CONFIG["llm_service"]["hang_timeout_sec"] * 1000.0
    faults = []
    load = Load(ctx, ctx.plan.load_clients, ctx.models, max_sec=n * 60 + 120).start()
    try:
        time.sleep(0.5)
        for i in range(n):
            model = ctx.models[i % len(ctx.models)]
            ctx.wait_ready([model], 90)
            deadline = time.monotonic() + 5
            while True:  # stop it while it works on a request
                st = ctx.status()
                m = ctx.model(st, model)
                w = m["workers"][0]
                if (w["state"] == "BUSY" and w["pid"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            pid, before = w["pid"], m["restarts"]
            t = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            served = ctx.serve_again(model, t, timeout=hang_ms / 1000.0 + 90)
            fault: dict[str, Any] = {"i": i + 1, "model": model, "pid": pid, "state_before": w["state"], **served}
            gone_by = time.monotonic() + 10
            while time.monotonic() < gone_by and _alive(pid):
                time.sleep(0.02)
            if _alive(pid):  # the daemon never noticed: clean up ourselves
                fault["not_killed_by_daemon"] = True
                _kill(pid)
            if served.get("fatal") or served.get("timed_out"):
                fault["recovered_by_load"] = ctx.recover(model)
            st2 = ctx.wait_ready([model], 90)
            m2 = ctx.model(st2, model)
            fault.update(load_ms=m2["load_ms"], restarts_delta=m2["restarts"] - before, new_pid=m2["workers"][0]["pid"],
                         last_error=m2["last_error"])
            faults.append(fault)
            ctx.log(f"  hang {i + 1}/{n} [{model}, {w['state']}]: serving again in {fault['ms']} ms, restarts +{fault['restarts_delta']}"
                    + (" NOT KILLED BY THE DAEMON" if fault.get("not_killed_by_daemon") else ""))
    finally:
        records = load.stop()
    return {"faults": faults, "load": summarize(records), "hang_timeout_ms": hang_ms, **_fault_summary(faults, "hang", hang_ms)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def phase_switches(ctx: Ctx, n: int) -> dict:
    """n profile switches chaos <-> chaos-b under load (n is made even: it ends on chaos)."""
    n += n % 2
    switches = []
    load = Load(ctx, ctx.plan.load_clients, ctx.models, max_sec=n * 60 + 120).start()
    current = PROFILE_A
    try:
        time.sleep(0.5)
        for i in range(n):
            target = PROFILE_B if current == PROFILE_A else PROFILE_A
            t0 = time.monotonic()
            job = ctx.switch(target)
            sw = {"i": i + 1, "to": target, "state": job["state"], "duration_ms": job.get("duration_ms"),
                  "wall_ms": round((time.monotonic() - t0) * 1000.0, 1), "mode": (job.get("result") or {}).get("mode"),
                  "error": job.get("error")}
            switches.append(sw)
            if job["state"] == "succeeded":
                current = target
            if (i + 1) % 10 == 0 or job["state"] != "succeeded":
                ctx.log(f"  switch {i + 1}/{n} -> {target}: {job['state']} in {sw['duration_ms']} ms")
            ctx.wait_ready(ctx.models, 90)
            time.sleep(0.3)
        if current != PROFILE_A:
            ctx.switch(PROFILE_A)
    finally:
        records = load.stop()
    ok = [s for s in switches if s["state"] == "succeeded"]
    return {"switches": switches, "n": len(switches), "succeeded": len(ok),
            "duration_ms": h.spread([s["duration_ms"] for s in ok if s["duration_ms"] is not None], 1),
            "load": summarize(records)}


# ---- the fuzz ---------------------------------------------------------------------


@dataclass
class FuzzResult:
    req: fuzz.FuzzRequest
    status: int | None
    cls: str
    code: str
    detail: str
    t0: float
    t1: float
    reply: bytes
    pass_: str = ""  # fuzz (paced), max (as fast as possible) or positive


class Senders:
    """`n` threads sending fuzz requests from one shared list, each on its own connection."""

    def __init__(self, ctx: Ctx, n: int, timeout: float = 60.0):
        self.ctx = ctx
        self.conns = [RawConn(("unix", str(ctx.home.socket)), timeout) for _ in range(n)]

    def run(self, reqs: list[fuzz.FuzzRequest], until: float | None = None, rate: float | None = None) -> tuple[list[FuzzResult], int]:
        """Send reqs[...] until they are all sent or perf_counter() passes `until`, at
        most `rate` requests/s in all when given (else as fast as the senders go);
        returns the results and how many were taken."""
        idx = [0]
        start = time.perf_counter()
        lock = threading.Lock()
        results: list[FuzzResult] = []

        def worker(conn: RawConn) -> None:
            while True:
                if until is not None and time.perf_counter() >= until:
                    return
                with lock:
                    if idx[0] >= len(reqs):
                        return
                    req = reqs[idx[0]]
                    k = idx[0]
                    idx[0] += 1
                if rate:
                    wait = start + k / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                t0 = time.perf_counter()
                reply = conn.request(req.method, req.path, req.body, chunked=req.chunked)
                t1 = time.perf_counter()
                cls, code, detail = classify(self.ctx.contract, req.method, req.path, reply, stream=req.stream, strict_text=False)
                res = FuzzResult(req, reply.status, cls, code, detail, t0, t1, reply.body[:400])
                with lock:
                    results.append(res)

        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in self.conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results, idx[0]

    def close(self) -> None:
        for c in self.conns:
            c.close()


def ws_fuzz(ctx: Ctx, msgs: list[fuzz.FuzzRequest], timeout: float = 30.0) -> dict:
    """Hostile messages on /v1/ws, one at a time on one connection: each must be answered
    by an `error` (or, valid after all, `done`) message, and the connection must stay open."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import unix_connect

    import contextlib

    results: list[tuple[fuzz.FuzzRequest, str, str, str]] = []  # req, class, code, detail
    conn = None
    stack = contextlib.ExitStack()
    reconnects = 0
    t0 = time.monotonic()
    try:
        for req in msgs:
            if conn is None:
                stack = contextlib.ExitStack()
                conn = stack.enter_context(unix_connect(str(ctx.home.socket), uri="ws://msting/v1/ws", max_size=None, open_timeout=10))
                reconnects += 1
            try:
                body = req.body or b""
                try:
                    silent = json.loads(body).get("type") == "cancel"  # a cancel is never answered
                except (ValueError, AttributeError, RecursionError):
                    silent = False
                if silent:
                    conn.send(body.decode("utf-8", "replace"))
                    results.append((req, "ok", "cancel", ""))
                    continue
                try:
                    conn.send(body.decode("utf-8"))
                except UnicodeDecodeError:
                    conn.send(body)  # not UTF-8: a binary message
                end = time.monotonic() + timeout
                while True:
                    msg = json.loads(conn.recv(timeout=max(0.01, end - time.monotonic())))
                    if msg.get("type") == "error":
                        err = {"error": msg.get("error")}
                        code = str((msg.get("error") or {}).get("code"))
                        if not ctx.contract.error.is_valid(err):
                            results.append((req, "error", code, "error message off the Error schema"))
                        elif (msg.get("error") or {}).get("type") == "server_error":
                            results.append((req, "server_error", code, json.dumps(msg)[:200]))
                        else:
                            results.append((req, "error", code, ""))
                        break
                    if msg.get("type") == "done":
                        results.append((req, "ok", str(msg.get("finish_reason")), ""))
                        break
            except TimeoutError:
                results.append((req, "lost", "timeout", "no error or done message"))
                stack.close()
                conn = None
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                results.append((req, "lost", f"closed {code}", str(exc)[:200]))
                stack.close()
                conn = None
    finally:
        stack.close()
    elapsed = time.monotonic() - t0
    bad = [r for r in results if r[1] in ("lost", "server_error")]
    return {"sent": len(results), "classes": dict(Counter(r[1] for r in results)), "codes": dict(Counter(r[2] for r in results)),
            "by_source": {s: dict(Counter(r[1] for r in results if r[0].source == s)) for s in sorted({r[0].source for r in results})},
            "lost": sum(1 for r in results if r[1] == "lost"), "server_errors": sum(1 for r in results if r[1] == "server_error"),
            "connections": reconnects, "messages_per_sec": round(len(results) / elapsed, 1) if elapsed else None,
            "examples_bad": [{"source": r[0].source, "note": r[0].note, "body": r[0].excerpt(160), "class": r[1], "code": r[2],
                              "detail": r[3]} for r in bad[:15]]}


def _body_limit() -> int:
    try:
        from msting.api.limits import MAX_BODY_BYTES

        return MAX_BODY_BYTES
    except ImportError:  # a daemon without a body limit
        return 4 * 1024 * 1024


def phase_fuzz(ctx: Ctx, n_schema: int, n_hostile: int, n_huge: int) -> dict:
    t0 = time.monotonic()
    schema_reqs, draw_stats = fuzz.schemathesis_requests(ctx.doc, n_schema, ctx.plan.seed)
    t_schema = time.monotonic() - t0
    t1 = time.monotonic()
    hostile = fuzz.hostile_requests(n_hostile, ctx.plan.seed + 1, huge=n_huge, limit=_body_limit())
    t_hostile = time.monotonic() - t1
    ctx.log(f"  drew {len(schema_reqs)} schemathesis requests in {t_schema:.1f} s and {len(hostile)} hostile ones in {t_hostile:.1f} s")
    positive = [r for r in schema_reqs if r.source == "schemathesis-positive"]
    rejecting = fuzz.shuffled([r for r in schema_reqs if r.source != "schemathesis-positive"] + hostile, ctx.plan.seed)
    ctx.wait_ready(ctx.models, 60)
    before = ctx.status()
    restarts0 = ctx.restarts(before)
    senders = Senders(ctx, ctx.plan.fuzz_senders)
    sampler = h.HealthSampler(ctx.home)
    windows: list[tuple[str, float, float]] = []
    results: list[FuzzResult] = []
    try:
        sampler.run(0.3, "raw")  # warm up the sampler's connection
        sampler.start("raw")
        window = 1.0
        bound = time.monotonic() + 1800
        # 1. paced at FUZZ_PACE_RPS in 1 s bursts between 1 s idle windows: /health idle vs during
        # 2. the same requests again as fast as the senders go: the rejection path's throughput
        for kind, rate in (("fuzz", FUZZ_PACE_RPS), ("max", None)):
            pos = 0
            while pos < len(rejecting) and time.monotonic() < bound:
                a = time.perf_counter()
                time.sleep(window)
                windows.append(("idle", a, time.perf_counter()))
                a = time.perf_counter()
                res, taken = senders.run(rejecting[pos:], until=a + window, rate=rate)
                pos += taken
                windows.append((kind, a, time.perf_counter()))
                for r in res:
                    r.pass_ = kind
                results += res
        a = time.perf_counter()
        time.sleep(window)
        windows.append(("idle", a, time.perf_counter()))
        samples = sampler.stop()
        # the valid-shaped ones reach the models: sent after the rejection bursts
        a = time.perf_counter()
        res, _ = senders.run(positive)
        for r in res:
            r.pass_ = "positive"
        results += res
        positive_sec = time.perf_counter() - a
    finally:
        senders.close()
        sampler.close()
    ws_msgs = fuzz.hostile_ws_messages(max(1, n_hostile // 4), ctx.plan.seed + 2, huge=min(2, n_huge), limit=_body_limit())
    ws_res = ws_fuzz(ctx, ws_msgs)
    after = ctx.wait_ready(ctx.models, 120)
    restarts1 = ctx.restarts(after)
    out = fuzz_report(results, samples, windows, restarts0, restarts1, draw_stats,
                      {"schemathesis_draw_sec": round(t_schema, 1), "hostile_draw_sec": round(t_hostile, 1),
                       "positive_sec": round(positive_sec, 1), "senders": ctx.plan.fuzz_senders, "window_sec": window,
                       "max_tokens_cap": fuzz.MAX_TOKENS_CAP, "seed": ctx.plan.seed})
    out["websocket"] = ws_res
    return out


def fuzz_report(results: list[FuzzResult], samples: list, windows: list, restarts0: dict, restarts1: dict, draw_stats: dict,
                params: dict) -> dict:
    out: dict[str, Any] = {"params": params, "sent": len(results)}
    out["by_source"] = {s: dict(Counter(r.cls for r in results if r.req.source == s)) for s in sorted({r.req.source for r in results})}
    out["classes"] = dict(Counter(r.cls for r in results))
    out["status"] = {str(k): v for k, v in sorted(Counter(r.status for r in results).items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}
    five = [r for r in results if r.status is not None and r.status >= 500]
    out["5xx"] = len(five)
    out["lost"] = sum(1 for r in results if r.cls == "lost")
    out["truncated"] = sum(1 for r in results if r.cls == "truncated")
    restarted = {k: restarts1.get(k, 0) - restarts0.get(k, 0) for k in restarts1}
    out["restarts_before"] = restarts0
    out["restarts_after"] = restarts1
    out["input_restarts"] = sum(v for v in restarted.values() if v > 0)

    def example(r: FuzzResult) -> dict:
        return {"op": r.req.op, "source": r.req.source, "note": r.req.note, "body": r.req.excerpt(200), "status": r.status,
                "class": r.cls, "code": r.code, "detail": r.detail[:200], "reply": r.reply[:300].decode("utf-8", "replace")}

    def distinct(rs: list[FuzzResult], limit: int = 25) -> list[dict]:
        seen, outl = set(), []
        for r in rs:
            key = (r.req.op, r.status, r.code, r.req.source)
            if key in seen:
                continue
            seen.add(key)
            outl.append(example(r))
            if len(outl) >= limit:
                break
        return outl

    out["examples_5xx"] = distinct(five)
    out["examples_lost"] = distinct([r for r in results if r.cls == "lost"])
    out["examples_truncated"] = distinct([r for r in results if r.cls == "truncated"])
    out["examples_odd_errors"] = distinct([r for r in results if r.cls == "error" and r.detail])  # non-JSON / off-schema error bodies
    accepted = [r for r in results if r.req.source != "schemathesis-positive" and r.status is not None and r.status < 400]
    out["negative_accepted"] = len(accepted)
    out["examples_negative_accepted"] = distinct(accepted, 15)
    out["by_op"] = {op: dict(Counter(str(r.status) for r in results if r.req.op == op)) for op in sorted({r.req.op for r in results})}
    out["draw"] = draw_stats
    out["latency_ms_by_source"] = {s: h.latency([(r.t1 - r.t0) * 1000.0 for r in results if r.req.source == s])
                                   for s in sorted({r.req.source for r in results})}
    slow = sorted((r for r in results if r.req.source != "schemathesis-positive"), key=lambda r: r.t0 - r.t1)[:8]
    out["slowest_rejections"] = [{"op": r.req.op, "source": r.req.source, "note": r.req.note or r.req.excerpt(80),
                                  "ms": round((r.t1 - r.t0) * 1000.0, 1), "status": r.status} for r in slow]
    # throughput through the rejection path: the unpaced bursts
    fuzz_w = [(a, b) for k, a, b in windows if k == "fuzz"]
    max_w = [(a, b) for k, a, b in windows if k == "max"]
    idle_w = [(a, b) for k, a, b in windows if k == "idle"]
    rejecting = [r for r in results if r.req.source != "schemathesis-positive" and r.pass_ == "max"]
    paced = [r for r in results if r.req.source != "schemathesis-positive" and r.pass_ == "fuzz"]
    busy = sum(b - a for a, b in max_w)
    paced_sec = sum(b - a for a, b in fuzz_w)
    out["rejection"] = {"requests": len(rejecting), "burst_sec": round(busy, 2),
                        "requests_per_sec": round(len(rejecting) / busy, 1) if busy else None,
                        "latency_ms": h.latency([(r.t1 - r.t0) * 1000.0 for r in rejecting]),
                        "paced": {"requests": len(paced), "sec": round(paced_sec, 2), "target_rps": FUZZ_PACE_RPS,
                                  "requests_per_sec": round(len(paced) / paced_sec, 1) if paced_sec else None,
                                  "latency_ms": h.latency([(r.t1 - r.t0) * 1000.0 for r in paced])}}
    out["rejection"]["met"] = bool(out["rejection"]["requests_per_sec"] and out["rejection"]["requests_per_sec"] >= FUZZ_MIN_RPS)

    def inside(t: float, ws: list) -> int | None:
        for i, (a, b) in enumerate(ws):
            if a <= t < b:
                return i
        return None

    idle_s = [s[0] for s in samples if inside(s[2], idle_w) is not None and s[1] != "error"]
    fuzz_s = [s[0] for s in samples if inside(s[2], fuzz_w) is not None and s[1] != "error"]
    errors = sum(1 for s in samples if s[1] == "error")
    per_window = []
    for i, (a, b) in enumerate(idle_w):
        vals = [s[0] for s in samples if a <= s[2] < b and s[1] != "error"]
        if len(vals) >= 20:
            per_window.append(h.percentile(vals, 99))
    max_s = [s[0] for s in samples if inside(s[2], max_w) is not None and s[1] != "error"]
    hb, hd = h.latency(idle_s), h.latency(fuzz_s)
    noise = (max(per_window) / h.percentile(per_window, 50)) if len(per_window) >= 2 and h.percentile(per_window, 50) else None
    ratio = (hd["p99"] / hb["p99"]) if hb["p99"] and hd["p99"] else None
    out["health"] = {"before": hb, "during": hd, "during_unpaced": h.latency(max_s), "p99_ratio": round(ratio, 2) if ratio else None,
                     "idle_window_p99_ms": [round(x, 3) for x in per_window],
                     "noise_ratio": round(noise, 2) if noise else None, "errors": errors,
                     "met": bool(ratio and noise and ratio <= noise and out["rejection"]["paced"]["requests_per_sec"]
                                 and out["rejection"]["paced"]["requests_per_sec"] >= FUZZ_MIN_RPS)}
    return out


# ---- daemon kills -------------------------------------------------------------------


def phase_daemon_kills(ctx: Ctx, n: int) -> dict:
    """n kill -9 of the daemon, each followed by `msting llm start`: what came back."""
    kills = []
    outages: list[list[float]] = []
    expected = {"profile": PROFILE_A, "default_model": STORIES_NAME, "models": sorted(ctx.models)}
    load = Load(ctx, 2, ctx.models, max_sec=n * 60 + 120).start()
    try:
        time.sleep(0.5)
        for i in range(n):
            st = ctx.wait_ready(ctx.models, 90)
            old = [w["pid"] for m in st["models"] for w in m["workers"] if w["pid"]] + ([st["spare"]["pid"]] if st["spare"]["pid"] else [])
            pid = st["pid"]
            time.sleep(ctx.rng.uniform(0.05, 0.5))
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            outages.append([t, t + 3600])
            ctx.conn.close()
            while _alive(pid) and time.monotonic() < t + 5:
                time.sleep(0.005)
            proc, start_sec = ctx.home.cli("llm", "start", "--json", "--timeout", "90", timeout=150)
            served = ctx.serve_again(STORIES_NAME, t)
            outages[-1][1] = time.monotonic()
            k: dict[str, Any] = {"i": i + 1, "pid": pid, "start_exit": proc.returncode, "start_sec": round(start_sec, 3), **served}
            if proc.returncode != 0:
                k["start_output"] = (proc.stdout + proc.stderr)[-500:]
            try:
                st2 = ctx.wait_ready(ctx.models, 60)
                got = {"profile": st2["profile"], "default_model": st2["default_model"],
                       "models": sorted(m["name"] for m in st2["models"] if m["type"] == "llm")}
                k["restored"] = got
                k["restored_ok"] = got == expected
                k["new_pid"] = st2["pid"]
            except h.BenchError as exc:
                k["restored_ok"] = False
                k["restored"] = str(exc)[:300]
            left = time.monotonic() + 5
            while time.monotonic() < left and any(_alive(p) for p in old):
                time.sleep(0.05)
            orphans = [p for p in old if _alive(p)]
            k["orphans"] = orphans
            for p in orphans:
                _kill(p)
            kills.append(k)
            if (i + 1) % 10 == 0 or not k["restored_ok"] or orphans or k["ms"] is None:
                ctx.log(f"  daemon kill {i + 1}/{n}: serving again in {k['ms']} ms (start {k['start_sec']:.2f} s), "
                        f"restored {'yes' if k['restored_ok'] else 'NO: ' + str(k['restored'])}, orphans {orphans}")
    finally:
        records = load.stop()
    # a request cut by the kill itself, or refused while the daemon was down, is not lost
    for r in records:
        if r.cls == "lost" and any(a <= r.t1 and r.t0 <= b for a, b in outages):
            r.cls = "cut_by_daemon_kill"
    times = [k["ms"] for k in kills if k["ms"] is not None]
    return {"kills": kills, "n": len(kills), "restored_ok": sum(1 for k in kills if k.get("restored_ok")),
            "expected": expected, "serve_again_ms": h.spread(times, 1),
            "start_sec": h.spread([k["start_sec"] for k in kills], 3), "orphans": sum(len(k["orphans"]) for k in kills),
            "load": summarize(records)}


# ---- soak -----------------------------------------------------------------------------


def phase_soak(ctx: Ctx, seconds: float) -> dict:
    ctx.wait_ready(ctx.models, 60)
    rss = []
    load = Load(ctx, ctx.plan.soak_clients, ctx.models, max_sec=seconds + 5).start()
    t0 = time.monotonic()
    interval = 10.0 if seconds >= 300 else max(1.0, seconds / 20)
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(min(interval, max(0.0, seconds - (time.monotonic() - t0))))
            try:
                st = ctx.status()
            except (h.BenchError, OSError) as exc:
                rss.append({"t": round(time.monotonic() - t0, 1), "error": str(exc)[:200]})
                continue
            mem = st["memory"]
            rss.append({"t": round(time.monotonic() - t0, 1), "daemon": mem["daemon_rss_bytes"], "workers": mem["workers_rss_bytes"],
                        "spare": (st.get("spare") or {}).get("rss_bytes"),
                        "per_model": {m["name"]: m["rss_bytes"] for m in st["models"]},
                        "restarts": sum(m["restarts"] for m in st["models"]), "served": sum(m["requests_served"] for m in st["models"])})
    finally:
        records = load.stop()
    good = [s for s in rss if "error" not in s]
    out: dict[str, Any] = {"seconds": seconds, "clients": ctx.plan.soak_clients, "samples": rss, "load": summarize(records)}
    if len(good) >= 2:
        base = good[max(0, len(good) // 10)]  # after a tenth of the soak: caches and arenas warmed up
        last = good[-1]
        for key in ("daemon", "workers"):
            out[f"{key}_rss_mb"] = {"first": round(good[0][key] / 2**20, 1), "baseline": round(base[key] / 2**20, 1),
                                     "last": round(last[key] / 2**20, 1), "max": round(max(s[key] for s in good) / 2**20, 1),
                                     "growth_mb": round((last[key] - base[key]) / 2**20, 1),
                                     "growth_pct": round(100.0 * (last[key] - base[key]) / base[key], 1) if base[key] else None}
        out["restarts_during"] = good[-1]["restarts"] - good[0]["restarts"]
    return out


# =======================================================================================
# the run


MUST_BE_ZERO = ("truncated", "lost", "input_restarts", "fuzz_5xx")
STOP = threading.Event()  # SIGTERM/SIGHUP: stop after the current phase's cleanup


def _on_signal(signum: int, frame: Any) -> None:
    """KeyboardInterrupt, not SystemExit: hypothesis would take a SystemExit raised while
    it draws for a failure of its own and go on."""
    STOP.set()
    raise KeyboardInterrupt(f"signal {signum}")


def run_chaos(plan: Plan, *, log: Callable[[str], None] = print, keep: bool = False, phases: list[str] | None = None) -> dict:
    """Run `plan` against a fresh daemon; the results dict (see `totals` for the
    must-be-zero counts). Always stops what it started."""
    phases = phases or ["worker_kills", "hangs", "switches", "fuzz", "daemon_kills", "soak"]
    res: dict[str, Any] = {"plan": asdict(plan), "errors": [], "started_at": _dt.datetime.now().isoformat(timespec="seconds")}
    if not h.STORIES.is_file():
        raise h.BenchError(f"{h.STORIES} is missing")
    ctx = Ctx(plan, log, keep)
    try:
        res["config"] = {"home_config": ctx.home.config, "effective": effective_config(ctx.home.config), "profiles": ctx.profiles}
        res["startup"] = ctx.start()
        st = ctx.status()
        res["models"] = {m["name"]: {"load_ms": m["load_ms"], "n_ctx": m["n_ctx"], "n_threads": m["n_threads"], "source": m["source"]}
                         for m in st["models"]}
        log(f"daemon up on profile {st['profile']}: {', '.join(res['models'])}")
        steps: list[tuple[str, Callable[[], dict], bool]] = [
            ("worker_kills", lambda: phase_worker_kills(ctx, plan.worker_kills), plan.worker_kills > 0),
            ("hangs", lambda: phase_hangs(ctx, plan.hangs), plan.hangs > 0),
            ("switches", lambda: phase_switches(ctx, plan.switches), plan.switches > 0),
            ("fuzz", lambda: phase_fuzz(ctx, plan.fuzz, plan.hostile, plan.huge), plan.fuzz + plan.hostile > 0),
            ("daemon_kills", lambda: phase_daemon_kills(ctx, plan.daemon_kills), plan.daemon_kills > 0),
            ("soak", lambda: phase_soak(ctx, plan.soak_sec), plan.soak_sec > 0),
        ]
        for name, fn, wanted in steps:
            if STOP.is_set():
                break
            if not wanted or name not in phases:
                continue
            log(f"[{name}]")
            t0 = time.monotonic()
            try:
                res[name] = fn()
            except Exception as exc:  # noqa: BLE001 - one failed phase must not lose the others
                traceback.print_exc()
                res["errors"].append({"phase": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                try:  # the next phase needs a serving daemon
                    ctx.wait_ready(ctx.models, 30)
                except Exception:  # noqa: BLE001
                    try:
                        ctx.home.cli("llm", "start", "--json", "--timeout", "90", timeout=150)
                        ctx.wait_ready(ctx.models, 60)
                    except Exception as exc2:  # noqa: BLE001
                        res["errors"].append({"phase": name, "error": f"could not bring the daemon back: {exc2}"[:500]})
                        break
            res.setdefault("phase_sec", {})[name] = round(time.monotonic() - t0, 1)
        res["daemon_log_tail"] = ctx.home.log_tail(60)
    finally:
        res["leftover_pids_killed"] = ctx.close()
    res["finished_at"] = _dt.datetime.now().isoformat(timespec="seconds")
    res["totals"] = totals(res)
    return res


def totals(res: dict) -> dict:
    loads = [res[p]["load"] for p in ("worker_kills", "hangs", "switches", "daemon_kills", "soak") if p in res and "load" in res[p]]
    fz = res.get("fuzz") or {}
    t = {
        "sent": sum(x["sent"] for x in loads) + fz.get("sent", 0),
        "ok": sum(x["ok"] for x in loads) + (fz.get("classes") or {}).get("ok", 0),
        "error": sum(x["error"] for x in loads) + (fz.get("classes") or {}).get("error", 0),
        "truncated": sum(x["truncated"] for x in loads) + fz.get("truncated", 0),
        "lost": sum(x["lost"] for x in loads) + fz.get("lost", 0),
        "cut_by_daemon_kill": sum(x.get("cut_by_daemon_kill", 0) for x in loads),
        "refused_while_daemon_down": sum(x.get("refused", 0) for x in loads),
        "input_restarts": fz.get("input_restarts", 0),
        "fuzz_5xx": fz.get("5xx", 0) + (fz.get("websocket") or {}).get("server_errors", 0),
    }
    t["lost"] += (fz.get("websocket") or {}).get("lost", 0)
    t["sent"] += (fz.get("websocket") or {}).get("sent", 0)
    t["must_be_zero_failed"] = [k for k in MUST_BE_ZERO if t[k]]
    return t


# =======================================================================================
# report


def yes(ok: bool | None) -> str:
    return "—" if ok is None else ("YES" if ok else "NO")


def fmt_spread(s: dict | None, unit: str = "ms") -> str:
    if not s or not s.get("n"):
        return "-"
    return f"median {s['median']:g} {unit}, max {s['max']:g} {unit} (min {s['min']:g}, n {s['n']})"


def figure_rows(res: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    t = res["totals"]
    rows.append(["requests sent / answered correctly / explicit error", f"{t['sent']} / {t['ok']} / {t['error']}", "", ""])
    rows.append(["truncated yet presented as success", str(t["truncated"]), "0", yes(t["truncated"] == 0)])
    rows.append(["lost (no answer, dropped connection)", str(t["lost"]), "0", yes(t["lost"] == 0)])
    if t["cut_by_daemon_kill"] or t["refused_while_daemon_down"]:
        rows.append(["↳ apart: cut by a daemon kill -9 / refused while it was down", f"{t['cut_by_daemon_kill']} / {t['refused_while_daemon_down']}", "", ""])
    wk = res.get("worker_kills")
    if wk:
        tg = wk.get("targets") or {}
        rows.append([f"worker kill -9 under load ({wk['n']}): serving again", fmt_spread(wk["serve_again_ms"]),
                     f"median <= load_ms + {KILL_MEDIAN_SLACK_MS:g} ms (~{tg.get('median_budget_ms', '?')} ms)", yes(tg.get("median_met"))])
        rows.append(["↳ every kill within load_ms + 1.5 s", f"{wk['n'] - tg.get('over_max_budget', wk['n'])}/{wk['n']}",
                     f"max <= load_ms + {KILL_MAX_SLACK_MS:g} ms", yes(tg.get("max_met"))])
        rows.append(["↳ load_ms of the new workers", fmt_spread(wk["load_ms"]), "", ""])
        rows.append(["↳ model went FATAL (loaded again by hand) / not served again", f"{wk['fatal']} / {wk['not_served_again']}", "0", yes(wk["fatal"] == 0 and wk["not_served_again"] == 0)])
        rows.append(["↳ streams cut by a kill that ended with an error event", str(wk["load"]["streams_ended_by_error_event"]), "", ""])
    hg = res.get("hangs")
    if hg:
        tg = hg.get("targets") or {}
        rows.append([f"SIGSTOP hang under load ({hg['n']}): serving again", fmt_spread(hg["serve_again_ms"]),
                     f"<= hang timeout {hg['hang_timeout_ms']:g} ms + load_ms + {HANG_SLACK_MS:g} ms", yes(tg.get("met"))])
        rows.append(["↳ exactly one restart per hang", f"{tg.get('exactly_one_restart')}/{hg['n']}", "all", yes(tg.get("one_restart_met"))])
    sw = res.get("switches")
    if sw:
        rows.append([f"profile switches under load", f"{sw['succeeded']}/{sw['n']} succeeded; {fmt_spread(sw['duration_ms'])}", "all", yes(sw["succeeded"] == sw["n"])])
        rows.append(["↳ load requests answered with an error during the switches", str(sw["load"]["error"]), "", ""])
    fz = res.get("fuzz")
    if fz:
        src = Counter()
        for s, c in fz["by_source"].items():
            src[s.split("-")[0]] += sum(c.values())
        pl = res.get("plan") or {}
        rows.append(["fuzzed requests: drawn by schemathesis / hostile JSON; sent in all",
                     f"{pl.get('fuzz')} / {(pl.get('hostile') or 0) + (pl.get('huge') or 0)}; {fz['sent']} "
                     f"({src.get('schemathesis', 0)} / {src.get('hostile', 0)}: the rejected kinds twice, paced then unpaced)", "", ""])
        rows.append(["5xx from bad input", str(fz["5xx"]), "0", yes(fz["5xx"] == 0)])
        rows.append(["worker restarts caused by input", str(fz["input_restarts"]), "0", yes(fz["input_restarts"] == 0)])
        rows.append(["fuzz lost / truncated", f"{fz['lost']} / {fz['truncated']}", "0", yes(fz["lost"] == 0 and fz["truncated"] == 0)])
        rj = fz["rejection"]
        rows.append(["fuzz throughput through the rejection path", f"{rj['requests_per_sec']} requests/s ({rj['requests']} in {rj['burst_sec']} s)",
                     f">= {FUZZ_MIN_RPS:g}/s", yes(rj["met"])])
        wsr = fz.get("websocket")
        if wsr:
            rows.append(["hostile WebSocket messages: answered with an error message / lost / server errors",
                         f"{wsr['classes'].get('error', 0)} of {wsr['sent']} / {wsr['lost']} / {wsr['server_errors']}", "lost 0, server errors 0",
                         yes(wsr["lost"] == 0 and wsr["server_errors"] == 0)])
        hh = fz["health"]
        pc = rj.get("paced") or {}
        rows.append([f"/health p99 idle vs during the fuzz paced at {pc.get('requests_per_sec')} requests/s (raw socket)",
                     f"{hh['before']['p99']} / {hh['during']['p99']} ms, ratio {hh['p99_ratio']}",
                     f"ratio within the idle windows' spread ({hh['noise_ratio']}), at >= {FUZZ_MIN_RPS:g}/s", yes(hh["met"])])
        if hh.get("during_unpaced", {}).get("n"):
            rows.append(["↳ /health p99 during the unpaced bursts (the daemon saturated)", f"{hh['during_unpaced']['p99']} ms", "", ""])
    dk = res.get("daemon_kills")
    if dk:
        rows.append([f"daemon kill -9 + `msting llm start` ({dk['n']}): serving again", fmt_spread(dk["serve_again_ms"]), "", ""])
        rows.append(["↳ state restored (profile, default model, models)", f"{dk['restored_ok']}/{dk['n']}", "all", yes(dk["restored_ok"] == dk["n"])])
        rows.append(["↳ processes of the killed daemon left running", str(dk["orphans"]), "0", yes(dk["orphans"] == 0)])
    sk = res.get("soak")
    if sk and sk.get("daemon_rss_mb"):
        rows.append([f"soak {sk['seconds'] / 60:g} min, {sk['clients']} clients: requests", f"{sk['load']['sent']} ({sk['load'].get('requests_per_sec')}/s), "
                     f"{sk['load']['ok']} ok, {sk['load']['error']} errors", "", ""])
        for key in ("daemon", "workers"):
            r = sk[f"{key}_rss_mb"]
            rows.append([f"↳ {key} RSS growth over the soak", f"{r['growth_mb']:+g} MB ({r['growth_pct']:+g} %): {r['baseline']} → {r['last']} MB (max {r['max']})", "", ""])
    return rows


def print_report(res: dict) -> None:
    print()
    print(h.text_table(["figure", "this run", "target", "met"], figure_rows(res)))
    fz = res.get("fuzz") or {}
    for key, title in (("examples_5xx", "5xx from bad input"), ("examples_lost", "fuzz requests lost"),
                       ("examples_truncated", "fuzz replies truncated/malformed")):
        if fz.get(key):
            print(f"\n{title}:")
            for e in fz[key][:10]:
                print(f"  {e['op']} [{e['source']}] {e['note'] or e['body'][:100]!r} -> {e['status']} {e['code']} {e['reply'][:150]!r}")
    for p in ("worker_kills", "hangs", "switches", "daemon_kills", "soak"):
        bad = ((res.get(p) or {}).get("load") or {}).get("bad_examples")
        if bad:
            print(f"\n{p}: truncated/lost load replies, e.g.:")
            for b in bad[:5]:
                print(f"  {b}")
    if res["errors"]:
        print("\nphases that failed:", res["errors"])
    print(f"\nmust-be-zero counts not zero: {res['totals']['must_be_zero_failed'] or 'none'}")


# ---- docs/reliability.md ------------------------------------------------------------------


def markdown(res: dict, command: str) -> str:
    m = res["machine"]
    cfg = res["config"]["effective"]
    svc = cfg["llm_service"]
    plan = res["plan"]
    out = ["# Reliability", "",
           "Every number on this page comes from one command, run from the repository root:", "", "```sh", command, "```", "",
           f"`bench/chaos.py` (shared helpers: `bench/harness.py`, `bench/fuzz.py`) starts one daemon under a fresh temporary "
           "`MSTING_HOME`, with real llama.cpp workers on `../shared/models/stories260K.gguf` and the built-in `msting-tiny`, "
           "faults it and fuzzes it, then stops everything it started. Raw figures: `bench/results/chaos.json`. "
           "`--quick` runs a small plan in a few minutes and leaves this page alone; `tests/e2e/test_chaos.py` runs a CI-sized "
           "plan with the same code and asserts the must-be-zero counts.", "",
           f"**Latest run:** {res['started_at']} → {res['finished_at']} ({res['duration_sec'] / 60:.1f} min) on {h.machine_line(m)}; "
           f"code at commit `{res['source'].get('git_head')}`" + (" with uncommitted changes under `src/`" if res["source"].get("src_dirty") else "") + ".", ""]
    out += ["## What was done", "",
            f"- **Daemon config:** the shipped defaults except `llm_service.hang_timeout_sec: {svc['hang_timeout_sec']}` and "
            f"`llm_service.health_interval_sec: {svc['health_interval_sec']}` (so a hang is found in seconds); the restart policy "
            f"is the shipped one: `{json.dumps(svc['restart'])}`; `queue_size: {svc['queue_size']}`, `warm_spare: {str(svc['warm_spare']).lower()}`, "
            f"`startup_timeout_sec: {svc['startup_timeout_sec']}`, `stop_timeout_sec: {svc['stop_timeout_sec']}`. The whole effective "
            "config is in the JSON (`config.effective`).",
            f"- **Profiles:** `{PROFILE_A}` (active: `{STORIES_NAME}` the default model, n_ctx 2048, and `{TINY_NAME}`, both always "
            f"ready) and `{PROFILE_B}` (`{TINY_NAME}` the default, `{STORIES_NAME}` with n_ctx 1024). The daemon starts on the "
            f"implicit `default` profile and is switched to `{PROFILE_A}`, so coming back on `{PROFILE_A}` after a kill -9 is visible.",
            f"- **Load:** {plan['load_clients']} client threads (every fourth on TCP 127.0.0.1, the others on the Unix socket), "
            f"each with one keep-alive raw-socket connection, sending back to back, round robin, `POST /generate`, "
            f"`/v1/chat/completions`, `/v1/completions` and `/v1/execute`, each plain and streaming, over both models, "
            f"`max_tokens` {plan['max_tokens']}, temperature 0. The daemon-kill phase runs 2 such clients, the soak {plan['soak_clients']}.",
            "- **Classes of reply:** *ok* = validated against the route's response schema in the daemon's own `/openapi.json`, "
            "with non-empty text, a finish_reason and usage, and for a stream the terminal `done` event or `data: [DONE]` after a "
            "chunk with a finish_reason (and the usage chunk); *error* = an error status with the error body, or a stream that ends "
            "with an explicit error event; *truncated* = presented as a success but incomplete or malformed (a stream that ends "
            "without a terminal event, a 200 with a bad body); *lost* = no answer within 90 s, or a dropped connection. Requests "
            "cut by a daemon kill -9 or refused while the daemon was down are counted apart.",
            "- **Time to serve again:** from the fault to the first 200 of `POST /generate {\"max_tokens\": 1}` for that model, "
            "sent right after the fault from a separate connection (it waits in the queue while the worker restarts).",
            f"- **Worker kills:** {plan['worker_kills']} `kill -9` of the serving worker, alternating the two models, each "
            "after the model serves again plus a random 0.05–0.5 s, so kills land anywhere in a request.",
            f"- **Hangs:** {plan['hangs']} `SIGSTOP` of a worker caught BUSY; the daemon must kill it and restart it once.",
            f"- **Switches:** {plan['switches']} `POST /v1/profiles/switch` `{PROFILE_A}` ⇄ `{PROFILE_B}`, polling the job every 20 ms.",
            f"- **Fuzz:** {plan['fuzz']} requests drawn by schemathesis {res.get('versions', {}).get('schemathesis')} "
            "(`schemathesis.openapi.from_dict` on the daemon's `GET /openapi.json`, `APIOperation.as_strategy` with "
            "`GenerationMode.POSITIVE` and `NEGATIVE`, 90 % for the routes with a body) and "
            f"{plan['hostile']} hypothesis-drawn hostile bodies (NaN/Infinity literals, 1e400, lone surrogates and invalid UTF-8, "
            f"nesting up to 100,000 deep, integers of up to 100,000 digits, wrong types for every key, malformed JSON) plus "
            f"{plan['huge']} bodies around and over the size limit (up to 64 MiB, with Content-Length or chunked), all sent by "
            f"hand on {plan['fuzz_senders']} raw connections. Drawn with a fixed seed ({plan['seed']}). The rejected kinds "
            f"(negative and hostile) are sent twice while another process samples `GET /health` on a raw socket: paced at "
            f"{FUZZ_PACE_RPS:g} requests/s in 1 s bursts between 1 s idle windows (the /health figure: idle vs paced bursts, "
            "against the spread of the idle windows' p99), then again in bursts as fast as the senders go (the throughput "
            "figure); the valid-shaped ones (positive; `max_tokens` capped at "
            f"{fuzz.MAX_TOKENS_CAP}, a switch made a dry run) reach the models afterwards. Then the same hostile kinds as "
            f"{max(1, plan['hostile'] // 4)} WebSocket messages on `/v1/ws` (a generate message mutated; binary when not UTF-8; "
            "one at a time, each must get an `error` or `done` message and the connection must stay open). Restarts are read "
            "from `/v1/status` before and after.",
            f"- **Daemon kills:** {plan['daemon_kills']} `kill -9` of the daemon, each followed by `msting llm start --json`; then "
            "the profile, default model and models in `/v1/status` are compared with what was active, and every process of the "
            "killed daemon (workers, spare) must be gone within 5 s.",
            f"- **Soak:** {plan['soak_sec'] / 60:g} min at {plan['soak_clients']} clients; RSS from `/v1/status` "
            "(`memory.daemon_rss_bytes`, `memory.workers_rss_bytes`), growth measured from the sample a tenth into the soak.",
            "", "## Figures", ""]
    out += h.md_table(["figure", "this run", "target", "met"], figure_rows(res))
    out.append("")
    out += findings_md(res)
    for path in sorted(DEFAULT_JSON.parent.glob("chaos.fuzz-*.json")):
        out += baseline_md(json.loads(path.read_text()), path)
    return "\n".join(out) + "\n"


def baseline_md(base: dict, path: Path) -> list[str]:
    """An earlier fuzz-only run kept beside the results (bench/results/chaos.fuzz-COMMIT.json):
    what the same fuzz found against older code."""
    fz = base.get("fuzz") or {}
    commit = (base.get("source") or {}).get("git_head")
    out = [f"## The same fuzz against commit `{commit}`", "",
           f"Kept in `{path.relative_to(ROOT)}` ({base.get('started_at')}; {fz.get('sent')} requests: "
           f"{base['plan']['fuzz']} from schemathesis, {base['plan']['hostile']} hostile, {base['plan']['huge']} huge; "
           f"the daemon ran {(base.get('source') or {}).get('pythonpath') or 'that commit'}).", ""]
    rj, hh = fz.get("rejection") or {}, fz.get("health") or {}
    out += h.md_table(["figure", "that run", "target", "met"], left=2, rows=[
        ["5xx from bad input", str(fz.get("5xx")), "0", yes(fz.get("5xx") == 0)],
        ["lost (dropped connections)", str(fz.get("lost")), "0", yes(fz.get("lost") == 0)],
        ["truncated yet presented as success", str(fz.get("truncated")), "0", yes(fz.get("truncated") == 0)],
        ["worker restarts caused by input", str(fz.get("input_restarts")), "0", yes(fz.get("input_restarts") == 0)],
        ["throughput through the rejection path", f"{rj.get('requests_per_sec')} requests/s", f">= {FUZZ_MIN_RPS:g}/s", yes(rj.get("met"))],
        ["/health p99 idle vs during", f"{(hh.get('before') or {}).get('p99')} / {(hh.get('during') or {}).get('p99')} ms", "", ""],
        ["statuses", ", ".join(f"{k}: {v}" for k, v in (fz.get("status") or {}).items()), "", ""],
    ])
    out.append("")
    for note in base.get("notes") or []:
        out.append(f"- {note}")
    if base.get("notes"):
        out.append("")
    out += findings_md({"fuzz": fz, "totals": {"must_be_zero_failed": ["x"]}, "errors": []})[2:]
    return out


def findings_md(res: dict) -> list[str]:
    out = ["## What it found", ""]
    fz = res.get("fuzz") or {}
    t = res["totals"]
    if not t["must_be_zero_failed"] and not res["errors"]:
        out.append("Every must-be-zero count is zero.")
        out.append("")
    for key, title in (("examples_5xx", "5xx answers to bad input"), ("examples_lost", "Fuzz requests with no answer"),
                       ("examples_truncated", "Fuzz replies presented as success but malformed"),
                       ("examples_odd_errors", "Error replies that are not the error format"),
                       ("examples_negative_accepted", "Negative cases the daemon accepted (the schema is stricter than the route, or the case was valid after all)")):
        ex = fz.get(key) or []
        if not ex:
            continue
        out.append(f"**{title}** ({len(ex)} distinct shown):")
        out.append("")
        out += h.md_table(["route", "drawn by", "request", "reply"],
                          [[e["op"], e["source"], f"`{(e['note'] or e['body'])[:120]}`".replace("\n", " "),
                            f"{e['status']} {e['code']}: `{e['reply'][:140]}`".replace("\n", " ")] for e in ex[:12]], left=4)
        out.append("")
    for p, title in (("worker_kills", "worker kills"), ("hangs", "hangs"), ("switches", "switches"), ("daemon_kills", "daemon kills"), ("soak", "soak")):
        ld = (res.get(p) or {}).get("load") or {}
        if ld.get("bad_examples"):
            out.append(f"**Load replies truncated or lost during the {title}:** " + "; ".join(
                f"{b['kind']} [{b['model']}, {b['transport']}] {b['class']} {b['code']} {b['detail'][:100]}" for b in ld["bad_examples"][:5]))
            out.append("")
        if ld.get("errors_by_code"):
            out.append(f"Error answers during the {title}, by code: " + ", ".join(f"`{k}` {v}" for k, v in ld["errors_by_code"].items()) + ".")
            out.append("")
    for e in res["errors"]:
        out.append(f"**Phase `{e['phase']}` failed:** {e['error'][:500]}")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small plan (a few minutes); leaves docs/reliability.md alone")
    ap.add_argument("--soak", type=float, default=None, metavar="MINUTES", help="soak minutes (default 30; --quick: 1)")
    ap.add_argument("--json-out", type=Path, default=None, help=f"JSON results (default {DEFAULT_JSON.relative_to(ROOT)})")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/reliability.md")
    ap.add_argument("--keep-homes", action="store_true", help="keep the temporary MSTING_HOME (logs) for inspection")
    ap.add_argument("--only", nargs="+", choices=["worker_kills", "hangs", "switches", "fuzz", "daemon_kills", "soak"],
                    help="run only these phases (for development; never writes the docs)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only rewrite docs/reliability.md from a saved full run's JSON")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(args.render.read_text())
        DOCS.write_text(markdown(res, res["command"]))
        print(f"wrote {DOCS} from {args.render}")
        return 0
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    if args.soak is not None:
        plan.soak_sec = args.soak * 60.0
    json_out = args.json_out or (DEFAULT_JSON.with_name("chaos.quick.json") if args.quick else DEFAULT_JSON)
    command = ".venv/bin/python bench/chaos.py" + (" --quick" if args.quick else "") + (f" --soak {args.soak:g}" if args.soak is not None else "")
    t0 = time.time()
    machine, source = h.machine(), h.source_info()
    print(f"msting chaos ({mode}) on {h.machine_line(machine)}; code {source.get('git_head')}{' + uncommitted src/' if source.get('src_dirty') else ''}", flush=True)
    try:
        res = run_chaos(plan, keep=args.keep_homes, phases=args.only, log=lambda s: print(s, flush=True))
    finally:
        h.cleanup_all(args.keep_homes)
    from importlib.metadata import version

    res.update(mode=mode, command=command, machine=machine, source=source, duration_sec=round(time.time() - t0, 1),
               versions={"schemathesis": version("schemathesis"), "hypothesis": version("hypothesis")})
    print_report(res)
    h.save_results(res, json_out)
    if mode == "full" and not args.no_docs and not args.only:
        DOCS.write_text(markdown(res, command))
        print(f"wrote {DOCS}")
    print(f"\n{mode} run took {res['duration_sec'] / 60:.1f} min")
    return 1 if res["totals"]["must_be_zero_failed"] or res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
