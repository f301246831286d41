#!/usr/bin/env python3
"""Chaos: faults and hostile input against one real daemon and real llama.cpp workers
(docs/reliability.md explains the method and shows the figures).

    .venv/bin/python bench/chaos.py [--quick] [--soak MINUTES] [--only PHASE ...] [--json-out PATH] [--docs DIR | --no-docs] [--keep-homes]
    .venv/bin/python bench/chaos.py --render bench/results/chaos.json   # rewrite the page from a saved full run

Every reply is classified (``classify``): *ok*, *error*, *truncated* (presented as a success
but incomplete: must be 0) or *lost* (must be 0). Results: bench/results/chaos.json
(``chaos.quick.json``) and, for a full run, the generated blocks of docs/reliability.md.
Exit code 1 when a must-be-zero count is not zero or a phase failed.
tests/e2e/test_chaos.py runs the "ci" plan with this same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import fuzz
import harness as h
import report as r
import yaml
from harness import RawConn, Reply

DEFAULT_JSON = h.RESULTS / "chaos.json"
SEED = 20261201
# The chaos daemon's config: the shipped defaults except these (recorded in the results).
CHAOS_CONFIG: dict = {"llm_service": {"hang_timeout_sec": 3, "health_interval_sec": 1}, "logging": {"file_level": "INFO"}}
STORIES_NAME, TINY_NAME = "stories260K", "msting-tiny"
PROFILE_A, PROFILE_B = "chaos", "chaos-b"
KILL_MEDIAN_SLACK_MS = 600.0  # worker kill -9 -> serving again: median <= load_ms + 0.6 s
KILL_MAX_SLACK_MS = 1500.0  # ... and max <= load_ms + 1.5 s
HANG_SLACK_MS = 1000.0  # SIGSTOP -> serving again <= hang_timeout + load_ms + 1 s
FUZZ_MIN_RPS = 500.0
FUZZ_PACE_RPS = 600.0  # /health is compared idle vs during a fuzz paced at this rate (the target's 500/s, and some)
PHASES = ["worker_kills", "hangs", "switches", "fuzz", "daemon_kills", "soak"]
LOAD_PHASES = (("worker_kills", "worker kills"), ("hangs", "hangs"), ("switches", "switches"), ("daemon_kills", "daemon kills"), ("soak", "soak"))
MUST_BE_ZERO = ("truncated", "lost", "input_restarts", "fuzz_5xx")


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
    "ci": Plan(worker_kills=20, hangs=2, switches=2, fuzz=1_000, hostile=150, huge=3, daemon_kills=1, soak_sec=0),  # tests/e2e/test_chaos.py
}


# ---- what a reply must look like -----------------------------------------------------------


def parse_sse(body: bytes) -> tuple[list[tuple[str | None, str]], bool]:
    """Events (name, data) of an SSE body, and whether the body ended on an event boundary."""
    text = body.decode("utf-8", "replace")
    events = []
    for block in (b for b in text.split("\n\n") if b.strip()):
        lines = block.split("\n")
        name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), None)
        events.append((name, "\n".join(ln[5:].lstrip(" ") for ln in lines if ln.startswith("data:"))))
    return events, text.endswith("\n\n") or not text


class Contract:
    """Response validators built from the daemon's own OpenAPI document."""

    def __init__(self, doc: dict):
        import jsonschema_rs

        def make(schema: dict) -> Any:
            return jsonschema_rs.validator_for({"components": doc["components"], **schema})

        self.error = make({"$ref": "#/components/schemas/Error"})
        self.responses = {(method.upper(), path, status): make(schema) for path, ops in doc["paths"].items() for method, op in ops.items()
                          for status, resp in op.get("responses", {}).items() if "$ref" not in resp
                          for schema in [(resp.get("content") or {}).get("application/json", {}).get("schema")] if schema is not None}
        # the documented media types of each answer: text (/metrics, /debug) is not parsed as JSON
        self.media = {(method.upper(), path, status): set(resp.get("content") or {}) for path, ops in doc["paths"].items()
                      for method, op in ops.items() for status, resp in op.get("responses", {}).items() if "$ref" not in resp}


NATIVE_STREAM_ROUTES = {"/generate", "/v1/execute"}
TEXT_FIELD = {"/generate": ("text",), "/v1/execute": ("output",), "/v1/chat/completions": ("choices", 0, "message", "content"),
              "/v1/completions": ("choices", 0, "text")}


def route_of(path: str) -> str:
    p = path.split("?", 1)[0]
    return "/v1/models/{model_id}" if p.startswith("/v1/models/") else "/v1/jobs/{job_id}" if p.startswith("/v1/jobs/") else p


def excerpt(data: bytes, n: int = 160) -> str:
    return data[:n].decode("utf-8", "replace")


def classify(contract: Contract, method: str, path: str, reply: Reply, *, stream: bool, strict_text: bool) -> tuple[str, str, str]:
    """(class, code, detail); class: ok | error | truncated | lost. `strict_text`: a generation
    that must come back with non-empty text (the load's own requests)."""
    route = route_of(path)
    if reply.status is None:
        return "lost", reply.error or "no answer", ""
    if not reply.complete:
        return "lost", reply.error or "dropped", f"status {reply.status}, {len(reply.body)} bytes before the connection ended"
    if reply.status >= 400:
        try:
            body = reply.json()
        except ValueError:
            return "error", f"http {reply.status}", "error body is not JSON: " + excerpt(reply.body, 120)
        if not contract.error.is_valid(body):
            return "error", f"http {reply.status}", "error body does not match the Error schema: " + excerpt(reply.body)
        return "error", str(body["error"].get("code")), ""
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        return classify_stream(contract, route, reply, strict_text)
    media = reply.headers.get("content-type", "").split(";")[0].strip()
    if media.startswith("text/") and media in contract.media.get((method, route, str(reply.status)), ()):
        return ("ok", str(reply.status), "") if reply.body else ("truncated", "empty", f"an empty {media} answer")
    try:
        body = reply.json()
    except ValueError:
        return "truncated", "bad json", excerpt(reply.body)
    v = contract.responses.get((method, route, str(reply.status)))
    if v is not None and not v.is_valid(body):
        return "truncated", "schema", "; ".join(e.message[:100] for e in list(v.iter_errors(body))[:2]) + " | " + excerpt(reply.body)
    if stream and route in TEXT_FIELD:
        return "truncated", "not a stream", "asked for a stream, got JSON"
    if strict_text and route in TEXT_FIELD:
        try:
            text = body
            for k in TEXT_FIELD[route]:
                text = text[k]
        except (KeyError, IndexError, TypeError):
            text = None
        if not text or not (body.get("usage") or {}).get("completion_tokens"):
            return "truncated", "empty", excerpt(reply.body)
    return "ok", str(reply.status), ""


def classify_stream(contract: Contract, route: str, reply: Reply, strict_text: bool) -> tuple[str, str, str]:
    events, whole = parse_sse(reply.body)
    if not whole:
        return "truncated", "partial event", reply.body[-120:].decode("utf-8", "replace")

    def error_event(payload: dict) -> tuple[str, str, str]:
        return ("error", str(payload["error"].get("code")), "") if contract.error.is_valid(payload) else \
            ("error", "error event", "error event does not match the Error schema")

    if route in NATIVE_STREAM_ROUTES:  # token events, then one terminal done or error event
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
            return error_event({"error": {}, **payload})
        text = "".join(json.loads(d).get("text", "") for n, d in events[:-1] if n == "token")
        if payload.get("finish_reason") not in ("stop", "length", "cancelled") or not isinstance(payload.get("usage"), dict):
            return "truncated", "bad done event", data[:160]
        if strict_text and (not text or not payload["usage"].get("completion_tokens")):
            return "truncated", "empty", data[:160]
        return "ok", "stream", ""
    datas = [d for _, d in events]  # OpenAI: chunks, then data: [DONE]
    if not datas:
        return "truncated", "empty stream", ""
    if datas[-1] != "[DONE]":
        try:
            last = json.loads(datas[-1])
        except ValueError:
            return "truncated", "bad chunk json", datas[-1][:120]
        return error_event(last) if isinstance(last, dict) and "error" in last else ("truncated", "no [DONE]", datas[-1][:160])
    try:
        chunks = [json.loads(d) for d in datas[:-1]]
    except ValueError:
        return "truncated", "bad chunk json", ""
    if any("error" in c for c in chunks):
        return "truncated", "error then [DONE]", ""
    choices = [ch for c in chunks for ch in c.get("choices") or []]
    if not any(ch.get("finish_reason") in ("stop", "length") for ch in choices):
        return "truncated", "no finish_reason", ""
    if strict_text and not "".join((ch.get("delta") or {}).get("content") or ch.get("text") or "" for ch in choices):
        return "truncated", "empty", ""
    if strict_text and not any(c.get("usage") for c in chunks):
        return "truncated", "no usage chunk", ""
    return "ok", "stream", ""


# ---- the load ------------------------------------------------------------------------------

PROMPT = "Once upon a time"
LOAD_KINDS = ["generate", "generate-stream", "chat", "chat-stream", "completions", "completions-stream", "execute", "execute-stream"]


def load_request(kind: str, model: str | None, max_tokens: int) -> tuple[str, dict, bool]:
    """(route, body, stream) of one load request; greedy, so every reply is the same text."""
    stream, base = kind.endswith("-stream"), kind.removesuffix("-stream")
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, **({"model": model} if model else {}), **({"stream": True} if stream else {})}
    if base in ("generate", "execute"):
        return ("/generate" if base == "generate" else "/v1/execute"), {"prompt": PROMPT, **body}, stream
    body.update({"prompt": PROMPT} if base == "completions" else {"messages": [{"role": "user", "content": "Tell me a story."}]})
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


def start_load(ctx: Ctx, clients: int, max_sec: float, timeout: float = 90.0) -> h.Load:
    """`clients` threads sending LOAD_KINDS round robin over the models, each on its own raw
    connection (every fourth on TCP, the others on the Unix socket)."""
    def loop(i: int, load: h.Load) -> None:
        tcp = i % 4 == 3
        conn = RawConn(("tcp", "127.0.0.1", ctx.home.port) if tcp else ("unix", str(ctx.home.socket)), timeout)
        n = i
        try:
            while load.running():
                kind, model = LOAD_KINDS[n % len(LOAD_KINDS)], ctx.models[(n // len(LOAD_KINDS)) % len(ctx.models)]
                n += 1
                route, body, stream = load_request(kind, model, ctx.plan.max_tokens)
                t0 = time.monotonic()
                reply = conn.post(route, body)
                if reply.status is None and (reply.error or "").startswith("connect"):
                    cls, code, detail = "refused", reply.error or "", ""
                    time.sleep(0.05)
                else:
                    cls, code, detail = classify(ctx.contract, "POST", route, reply, stream=stream, strict_text=True)
                load.add(Rec(t0, time.monotonic(), kind, model, "tcp" if tcp else "unix", cls, code, detail))
        finally:
            conn.close()

    return h.Load(clients, loop, max_sec).start()


def summarize(records: list[Rec]) -> dict:
    by_cls = Counter(x.cls for x in records)
    out: dict[str, Any] = {"sent": sum(1 for x in records if x.cls != "refused"),
                           **{k: by_cls.get(k, 0) for k in ("ok", "error", "truncated", "lost", "cut_by_daemon_kill", "refused")},
                           "errors_by_code": dict(Counter(x.code for x in records if x.cls == "error").most_common()),
                           "streams_ended_by_error_event": sum(1 for x in records if x.cls == "error" and x.kind.endswith("-stream")),
                           "bad_examples": [{"kind": x.kind, "model": x.model, "transport": x.transport, "class": x.cls, "code": x.code,
                                             "detail": x.detail[:300]} for x in records if x.cls in ("truncated", "lost")][:10]}
    if records:
        span = max(x.t1 for x in records) - min(x.t0 for x in records)
        out["requests_per_sec"] = round(out["sent"] / span, 1) if span > 0 else None
    return out


def under_load(ctx: Ctx, clients: int, max_sec: float, body: Callable[[], dict]) -> dict:
    """`body()` while `clients` load clients run (started 0.5 s before it); with the load's summary."""
    load = start_load(ctx, clients, max_sec)
    try:
        time.sleep(0.5)
        out = body()
    finally:
        records = load.stop()
    return {**out, "load": summarize(records)}


# ---- the daemon under test -----------------------------------------------------------------


def profiles(stories: Path) -> dict[str, dict]:
    return {PROFILE_A: {"description": "chaos: stories260K and msting-tiny", "default_model": STORIES_NAME,
                        "models": {STORIES_NAME: {"source": str(stories), "n_ctx": 2048, "always_ready": True},
                                   TINY_NAME: {"source": "builtin:tiny", "always_ready": True}}},
            PROFILE_B: {"description": "chaos-b: msting-tiny the default, stories260K with a smaller n_ctx", "default_model": TINY_NAME,
                        "models": {TINY_NAME: {"source": "builtin:tiny", "always_ready": True},
                                   STORIES_NAME: {"source": str(stories), "n_ctx": 1024, "always_ready": True}}}}


def effective_config(home_config: dict) -> dict:
    """The shipped default config with the home's overrides: every value the daemon ran with."""
    from importlib import resources

    return h.merge(yaml.safe_load(resources.files("msting.config").joinpath("default.yaml").read_text()), home_config)


class Ctx:
    """The chaos daemon and what every phase shares."""

    def __init__(self, plan: Plan, log: Callable[[str], None] = print):
        self.plan, self.log = plan, log
        self.rng = random.Random(plan.seed)
        self.home = h.home("chaos", CHAOS_CONFIG)
        self.profiles = h.write_profiles(self.home, profiles(h.STORIES))
        self.models = [STORIES_NAME, TINY_NAME]
        self.conn = RawConn(("unix", str(self.home.socket)), 90)
        self.contract: Contract = None  # type: ignore[assignment]
        self.doc: dict = {}

    def get(self, path: str, timeout: float = 30) -> Any:
        reply = self.conn.request("GET", path, timeout=timeout)
        if reply.status != 200:
            raise h.BenchError(f"GET {path}: {reply.status} {reply.error} {reply.body[:300]!r}")
        return reply.json()

    def status(self) -> dict:
        return self.get("/v1/status")

    def model(self, st: dict, name: str) -> dict:
        return next(m for m in st["models"] if m["name"] == name and m["type"] == "llm")

    def restarts(self, st: dict) -> dict[str, int]:
        return {f"{m['name']}:{m['type']}": m["restarts"] for m in st["models"]}

    def start(self) -> dict:
        t0 = time.monotonic()
        started = h.start(self.home)
        job = self.switch(PROFILE_A)
        if job["state"] != "succeeded":
            raise h.BenchError(f"switch to {PROFILE_A} failed: {job.get('error')}")
        self.wait_ready(self.models, 90)
        self.doc = self.get("/openapi.json")
        self.contract = Contract(self.doc)
        return {"start": started, "switch_ms": job.get("duration_ms"), "wall_sec": round(time.monotonic() - t0, 2)}

    def switch(self, profile: str, timeout: float = 120) -> dict:
        reply = self.conn.post("/v1/profiles/switch", {"profile": profile})
        if reply.status != 202:
            raise h.BenchError(f"POST /v1/profiles/switch {profile}: {reply.status} {reply.body[:300]!r}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/v1/jobs/{reply.json()['id']}")
            if job["state"] != "running":
                return job
            time.sleep(0.02)
        raise h.BenchError(f"switch to {profile} did not finish within {timeout:g} s")

    def wait_ready(self, models: list[str], timeout: float) -> dict:
        """Every model in `models` ready with a verified, serving worker."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                st = self.status()
                ws = {n: (self.model(st, n), self.model(st, n)["workers"][0]) for n in models}
                if all(m["state"] == "ready" and w["verified"] and w["pid"] and w["state"] in ("READY", "BUSY") for m, w in ws.values()):
                    return st
                last = {n: m["state"] for n, (m, _) in ws.items()}
            except (h.BenchError, StopIteration, KeyError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.02)
        raise h.BenchError(f"models {models} not ready within {timeout:g} s (last: {last})\n{self.home.log_tail()}")

    def serve_again(self, model: str, t_fault: float, timeout: float = 120) -> dict:
        """fault -> the first 200 of POST /generate {"max_tokens": 1} for `model`; stops early
        when the model is FATAL (503 model_failed)."""
        conn = RawConn(("unix", str(self.home.socket)), 60)
        deadline, attempts, codes = t_fault + timeout, 0, Counter()
        try:
            while time.monotonic() < deadline:
                attempts += 1
                reply = conn.post("/generate", {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0.0},
                                  timeout=max(1.0, deadline - time.monotonic()))
                if reply.status == 200:
                    return {"ms": round((time.monotonic() - t_fault) * 1000.0, 1), "attempts": attempts, "codes": dict(codes)}
                try:
                    code = reply.json()["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = reply.error or str(reply.status)
                codes[code] += 1
                if code == "model_failed":
                    return {"ms": None, "attempts": attempts, "codes": dict(codes), "fatal": True}
                time.sleep(0.02)
        finally:
            conn.close()
        return {"ms": None, "attempts": attempts, "codes": dict(codes), "timed_out": True}

    def after_fault(self, fault: dict, model: str, before: int, served: dict) -> None:
        """Load a FATAL model by hand (what an operator would do), wait until `model` serves
        again, record what came back."""
        if served.get("fatal") or served.get("timed_out"):
            t0 = time.monotonic()
            reply = self.conn.post("/models/load", {"model": model, "timeout": 60})
            fault["recovered_by_load"] = {"status": reply.status, "ms": round((time.monotonic() - t0) * 1000.0, 1)}
        m = self.model(self.wait_ready([model], 90), model)
        fault.update(load_ms=m["load_ms"], restarts_delta=m["restarts"] - before, new_pid=m["workers"][0]["pid"], last_error=m["last_error"])


# ---- phases ------------------------------------------------------------------------------


def phase_faults(ctx: Ctx, n: int, hang: bool) -> dict:
    """n kill -9 (or, `hang`, SIGSTOP) of a serving worker under load, alternating the models.
    A kill lands anywhere in a request; a hang on a worker caught BUSY, which the daemon must
    kill and restart once."""
    hang_ms = CHAOS_CONFIG["llm_service"]["hang_timeout_sec"] * 1000.0
    faults: list[dict] = []

    def run() -> dict:
        for i in range(n):
            model = ctx.models[i % len(ctx.models)]
            ctx.wait_ready([model], 90)
            deadline = time.monotonic() + 5
            if not hang:
                time.sleep(ctx.rng.uniform(0.05, 0.5))
            while True:  # a hang: when it works on a request
                m = ctx.model(ctx.status(), model)
                w = m["workers"][0]
                if not hang or (w["state"] == "BUSY" and w["pid"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            if not hang and (not w["pid"] or m["state"] != "ready"):
                m = ctx.model(ctx.wait_ready([model], 90), model)
            pid, before = m["workers"][0]["pid"], m["restarts"]
            t = time.monotonic()
            os.kill(pid, signal.SIGSTOP if hang else signal.SIGKILL)
            served = ctx.serve_again(model, t, timeout=hang_ms / 1000.0 + 90 if hang else 120)
            fault: dict[str, Any] = {"i": i + 1, "model": model, "pid": pid, "state_before": w["state"], **served}
            gone_by = time.monotonic() + 10
            while hang and time.monotonic() < gone_by and h.alive(pid):
                time.sleep(0.02)
            if hang and h.alive(pid):  # the daemon never noticed: clean up ourselves
                fault["not_killed_by_daemon"] = True
                h.kill(pid)
            ctx.after_fault(fault, model, before, served)
            faults.append(fault)
            if hang or (i + 1) % 10 == 0 or fault["ms"] is None:
                ctx.log(f"  {'hang' if hang else 'worker kill'} {i + 1}/{n} [{model}, {w['state']}]: serving again in {fault['ms']} ms, "
                        f"restarts +{fault['restarts_delta']}" + (" NOT KILLED BY THE DAEMON" if fault.get("not_killed_by_daemon") else ""))
        return {}

    out = under_load(ctx, ctx.plan.load_clients, n * (60 if hang else 30) + 120, run)
    times = [f["ms"] for f in faults if f["ms"] is not None]
    loads = [f["load_ms"] for f in faults if f.get("load_ms") is not None]
    out.update(faults=faults, n=len(faults), not_served_again=len(faults) - len(times), fatal=sum(1 for f in faults if f.get("fatal")),
               serve_again_ms=h.spread(times, 1), load_ms=h.spread(loads, 2))
    if hang:
        over = [f for f in faults if f["ms"] is None or f["ms"] > hang_ms + (f.get("load_ms") or 0.0) + HANG_SLACK_MS]
        one = sum(1 for f in faults if f.get("restarts_delta") == 1)
        out.update(hang_timeout_ms=hang_ms, targets={"met": not over and bool(faults), "over_budget": len(over), "exactly_one_restart": one,
                                                     "one_restart_met": one == len(faults)})
    elif times:
        budget = (h.percentile(loads, 50) or 0.0) + KILL_MEDIAN_SLACK_MS
        over = [f for f in faults if f["ms"] is None or f["ms"] > (f.get("load_ms") or 0.0) + KILL_MAX_SLACK_MS]
        out["targets"] = {"median_budget_ms": round(budget, 1), "median_met": out["serve_again_ms"]["median"] <= budget and not out["not_served_again"],
                          "max_met": not over, "over_max_budget": len(over)}
    return out


def phase_switches(ctx: Ctx, n: int) -> dict:
    """n profile switches chaos <-> chaos-b under load (n made even: it ends on chaos)."""
    n += n % 2
    switches: list[dict] = []

    def run() -> dict:
        current = PROFILE_A
        for i in range(n):
            target = PROFILE_B if current == PROFILE_A else PROFILE_A
            t0 = time.monotonic()
            job = ctx.switch(target)
            switches.append({"i": i + 1, "to": target, "state": job["state"], "duration_ms": job.get("duration_ms"),
                             "wall_ms": round((time.monotonic() - t0) * 1000.0, 1), "mode": (job.get("result") or {}).get("mode"),
                             "error": job.get("error")})
            current = target if job["state"] == "succeeded" else current
            if (i + 1) % 10 == 0 or job["state"] != "succeeded":
                ctx.log(f"  switch {i + 1}/{n} -> {target}: {job['state']} in {job.get('duration_ms')} ms")
            ctx.wait_ready(ctx.models, 90)
            time.sleep(0.3)
        if current != PROFILE_A:
            ctx.switch(PROFILE_A)
        return {}

    out = under_load(ctx, ctx.plan.load_clients, n * 60 + 120, run)
    ok = [s for s in switches if s["state"] == "succeeded"]
    return {**out, "switches": switches, "n": len(switches), "succeeded": len(ok),
            "duration_ms": h.spread([s["duration_ms"] for s in ok if s["duration_ms"] is not None], 1)}


# ---- the fuzz ------------------------------------------------------------------------------


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
    pass_: str = ""  # fuzz (paced), max (as fast as the senders go) or positive


def send_all(ctx: Ctx, conns: list[RawConn], reqs: list[fuzz.FuzzRequest], pass_: str, until: float | None = None,
             rate: float | None = None) -> tuple[list[FuzzResult], int]:
    """Send reqs[...] from one thread per connection until all are sent or perf_counter()
    passes `until`, at most `rate` requests/s in all; the results and how many were taken."""
    idx, start, lock, results = [0], time.perf_counter(), threading.Lock(), []

    def worker(conn: RawConn) -> None:
        while until is None or time.perf_counter() < until:
            with lock:
                if idx[0] >= len(reqs):
                    return
                k = idx[0]
                idx[0] += 1
            if rate and start + k / rate > time.perf_counter():
                time.sleep(start + k / rate - time.perf_counter())
            req = reqs[k]
            t0 = time.perf_counter()
            reply = conn.request(req.method, req.path, req.body, chunked=req.chunked)
            t1 = time.perf_counter()
            cls, code, detail = classify(ctx.contract, req.method, req.path, reply, stream=req.stream, strict_text=False)
            with lock:
                results.append(FuzzResult(req, reply.status, cls, code, detail, t0, t1, reply.body[:400], pass_))

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, idx[0]


def ws_fuzz(ctx: Ctx, msgs: list[fuzz.FuzzRequest], timeout: float = 30.0) -> dict:
    """Hostile messages on /v1/ws, one at a time on one connection: each must be answered by
    an `error` (or, valid after all, `done`) message, and the connection must stay open."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import unix_connect

    results: list[tuple[fuzz.FuzzRequest, str, str, str]] = []  # req, class, code, detail
    conn, stack = None, contextlib.ExitStack()
    try:
        for req in msgs:
            if conn is None:
                stack = contextlib.ExitStack()
                conn = stack.enter_context(unix_connect(str(ctx.home.socket), uri="ws://msting/v1/ws", max_size=None, open_timeout=10))
            body = req.body or b""
            try:
                silent = json.loads(body).get("type") == "cancel"  # a cancel is never answered
            except (ValueError, AttributeError, RecursionError):
                silent = False
            try:
                try:
                    conn.send(body.decode("utf-8"))
                except UnicodeDecodeError:
                    conn.send(body)  # not UTF-8: a binary message
                if silent:
                    results.append((req, "ok", "cancel", ""))
                    continue
                end = time.monotonic() + timeout
                while (msg := json.loads(conn.recv(timeout=max(0.01, end - time.monotonic())))).get("type") not in ("error", "done"):
                    pass
                err = msg.get("error") or {}
                if msg["type"] == "done":
                    results.append((req, "ok", str(msg.get("finish_reason")), ""))
                elif not ctx.contract.error.is_valid({"error": msg.get("error")}):
                    results.append((req, "error", str(err.get("code")), "error message off the Error schema"))
                else:
                    results.append((req, "server_error" if err.get("type") == "server_error" else "error", str(err.get("code")),
                                    json.dumps(msg)[:200] if err.get("type") == "server_error" else ""))
            except (TimeoutError, ConnectionClosed) as exc:
                code = "timeout" if isinstance(exc, TimeoutError) else f"closed {exc.rcvd.code if exc.rcvd is not None else None}"
                results.append((req, "lost", code, "no error or done message" if isinstance(exc, TimeoutError) else str(exc)[:200]))
                stack.close()
                conn = None
    finally:
        stack.close()
    bad = [x for x in results if x[1] in ("lost", "server_error")]
    return {"sent": len(results), "classes": dict(Counter(x[1] for x in results)), "lost": sum(1 for x in results if x[1] == "lost"),
            "server_errors": sum(1 for x in results if x[1] == "server_error"),
            "examples_bad": [{"source": x[0].source, "note": x[0].note, "body": x[0].excerpt(160), "class": x[1], "code": x[2], "detail": x[3]}
                             for x in bad[:15]]}


def body_limit() -> int:
    try:
        from msting.api.limits import MAX_BODY_BYTES

        return MAX_BODY_BYTES
    except ImportError:  # a daemon without a body limit
        return 4 * 1024 * 1024


def phase_fuzz(ctx: Ctx, n_schema: int, n_hostile: int, n_huge: int) -> dict:
    """The rejected kinds (schemathesis negative, hostile) twice while /health is sampled: paced
    at FUZZ_PACE_RPS in 1 s bursts between 1 s idle windows (/health idle vs during), then as
    fast as the senders go (the throughput); then the valid-shaped ones; then the WebSocket."""
    t0 = time.monotonic()
    schema_reqs = fuzz.schemathesis_requests(ctx.doc, n_schema, ctx.plan.seed)
    t1 = time.monotonic()
    hostile = fuzz.hostile_requests(ctx.doc, n_hostile, ctx.plan.seed + 1, huge=n_huge, limit=body_limit())
    ctx.log(f"  drew {len(schema_reqs)} schemathesis requests in {t1 - t0:.1f} s and {len(hostile)} hostile ones in {time.monotonic() - t1:.1f} s")
    positive = [x for x in schema_reqs if x.source == "schemathesis-positive"]
    rejecting = fuzz.shuffled([x for x in schema_reqs if x.source != "schemathesis-positive"] + hostile, ctx.plan.seed)
    restarts0 = ctx.restarts(ctx.wait_ready(ctx.models, 60))
    conns = [RawConn(("unix", str(ctx.home.socket)), 60) for _ in range(ctx.plan.fuzz_senders)]
    sampler = h.HealthSampler(ctx.home)
    windows: list[tuple[str, float, float]] = []
    results: list[FuzzResult] = []

    def idle() -> None:
        a = time.perf_counter()
        time.sleep(1.0)
        windows.append(("idle", a, time.perf_counter()))

    try:
        sampler.run(0.3, "raw")  # warm up the sampler's connection
        sampler.start("raw")
        bound = time.monotonic() + 1800
        for kind, rate in (("fuzz", FUZZ_PACE_RPS), ("max", None)):
            pos = 0
            while pos < len(rejecting) and time.monotonic() < bound:
                idle()
                a = time.perf_counter()
                res, taken = send_all(ctx, conns, rejecting[pos:], kind, until=a + 1.0, rate=rate)
                pos += taken
                windows.append((kind, a, time.perf_counter()))
                results += res
        idle()
        samples = sampler.stop()
        results += send_all(ctx, conns, positive, "positive")[0]  # the valid-shaped ones reach the models
    finally:
        for c in conns:
            c.close()
        sampler.close()
    ws = ws_fuzz(ctx, fuzz.hostile_ws_messages(max(1, n_hostile // 4), ctx.plan.seed + 2, huge=min(2, n_huge), limit=body_limit()))
    restarts1 = ctx.restarts(ctx.wait_ready(ctx.models, 120))
    return {**fuzz_report(results, samples, windows, restarts0, restarts1), "websocket": ws}


def fuzz_report(results: list[FuzzResult], samples: list, windows: list, restarts0: dict, restarts1: dict) -> dict:
    rejected = [x for x in results if x.req.source != "schemathesis-positive"]
    five = [x for x in results if x.status is not None and x.status >= 500]

    def distinct(rs: list[FuzzResult], limit: int = 25) -> list[dict]:
        seen, out = set(), []
        for x in rs:
            if (x.req.op, x.status, x.code, x.req.source) not in seen and len(out) < limit:
                seen.add((x.req.op, x.status, x.code, x.req.source))
                out.append({"op": x.req.op, "source": x.req.source, "note": x.req.note, "body": x.req.excerpt(200), "status": x.status,
                            "class": x.cls, "code": x.code, "detail": x.detail[:200], "reply": x.reply[:300].decode("utf-8", "replace")})
        return out

    def ms(rs: list[FuzzResult]) -> dict:
        return h.latency([(x.t1 - x.t0) * 1000.0 for x in rs])

    def of(cls: str) -> list[FuzzResult]:
        return [x for x in results if x.cls == cls]

    sources = sorted({x.req.source for x in results})
    out: dict[str, Any] = {
        "sent": len(results), "by_source": {s: dict(Counter(x.cls for x in results if x.req.source == s)) for s in sources},
        "classes": dict(Counter(x.cls for x in results)), "5xx": len(five), "lost": len(of("lost")), "truncated": len(of("truncated")),
        "status": {str(k): v for k, v in sorted(Counter(x.status for x in results).items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "restarts_before": restarts0, "restarts_after": restarts1,
        "input_restarts": sum(max(0, restarts1.get(k, 0) - restarts0.get(k, 0)) for k in restarts1),
        "examples_5xx": distinct(five), "examples_lost": distinct(of("lost")), "examples_truncated": distinct(of("truncated")),
        "examples_odd_errors": distinct([x for x in of("error") if x.detail]),  # non-JSON / off-schema error bodies
        "examples_negative_accepted": distinct([x for x in rejected if x.status is not None and x.status < 400], 15),
        "latency_ms_by_source": {s: ms([x for x in results if x.req.source == s]) for s in sources},
        "slowest_rejections": [{"op": x.req.op, "source": x.req.source, "note": x.req.note or x.req.excerpt(80), "ms": round((x.t1 - x.t0) * 1000.0, 1),
                                "status": x.status} for x in sorted(rejected, key=lambda x: x.t0 - x.t1)[:8]]}
    win = {k: [(a, b) for kind, a, b in windows if kind == k] for k in ("idle", "fuzz", "max")}
    secs = {k: sum(b - a for a, b in w) for k, w in win.items()}
    paced, unpaced = [x for x in rejected if x.pass_ == "fuzz"], [x for x in rejected if x.pass_ == "max"]
    rps = {k: round(len(rs) / secs[k], 1) if secs[k] else None for k, rs in (("fuzz", paced), ("max", unpaced))}
    out["rejection"] = {"requests": len(unpaced), "burst_sec": round(secs["max"], 2), "requests_per_sec": rps["max"], "latency_ms": ms(unpaced),
                        "met": bool(rps["max"] and rps["max"] >= FUZZ_MIN_RPS),
                        "paced": {"requests": len(paced), "sec": round(secs["fuzz"], 2), "requests_per_sec": rps["fuzz"], "latency_ms": ms(paced)}}

    def during(spans: list) -> list[float]:
        return [s[0] for s in samples if s[1] != "error" and any(a <= s[2] < b for a, b in spans)]

    per_window = [h.percentile(v, 99) for v in (during([w]) for w in win["idle"]) if len(v) >= 20]
    hb, hd = h.latency(during(win["idle"])), h.latency(during(win["fuzz"]))
    mid = h.percentile(per_window, 50) if len(per_window) >= 2 else None
    noise = max(per_window) / mid if mid else None
    ratio = hd["p99"] / hb["p99"] if hb["p99"] and hd["p99"] else None
    out["health"] = {"before": hb, "during": hd, "during_unpaced": h.latency(during(win["max"])), "p99_ratio": round(ratio, 2) if ratio else None,
                     "noise_ratio": round(noise, 2) if noise else None,
                     "met": bool(ratio and noise and ratio <= noise and rps["fuzz"] and rps["fuzz"] >= FUZZ_MIN_RPS)}
    return out


# ---- daemon kills and the soak -------------------------------------------------------------------


def phase_daemon_kills(ctx: Ctx, n: int) -> dict:
    """n kill -9 of the daemon, each followed by `msting llm start`: what came back, what was left."""
    kills, outages = [], []
    expected = {"profile": PROFILE_A, "default_model": STORIES_NAME, "models": sorted(ctx.models)}
    load = start_load(ctx, 2, n * 60 + 120)
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
            while h.alive(pid) and time.monotonic() < t + 5:
                time.sleep(0.005)
            proc = ctx.home.cli("llm", "start", "--json", "--timeout", "90", timeout=150)
            served = ctx.serve_again(STORIES_NAME, t)
            outages[-1][1] = time.monotonic()
            k: dict[str, Any] = {"i": i + 1, "pid": pid, "start_exit": proc.returncode, "start_sec": round(proc.wall_sec, 3), **served}
            if proc.returncode != 0:
                k["start_output"] = (proc.stdout + proc.stderr)[-500:]
            try:
                st2 = ctx.wait_ready(ctx.models, 60)
                k["restored"] = {"profile": st2["profile"], "default_model": st2["default_model"],
                                 "models": sorted(m["name"] for m in st2["models"] if m["type"] == "llm")}
                k.update(restored_ok=k["restored"] == expected, new_pid=st2["pid"])
            except h.BenchError as exc:
                k.update(restored_ok=False, restored=str(exc)[:300])
            left = time.monotonic() + 5
            while time.monotonic() < left and any(h.alive(p) for p in old):
                time.sleep(0.05)
            k["orphans"] = [p for p in old if h.alive(p)]
            for p in k["orphans"]:
                h.kill(p)
            kills.append(k)
            if (i + 1) % 10 == 0 or not k["restored_ok"] or k["orphans"] or k["ms"] is None:
                ctx.log(f"  daemon kill {i + 1}/{n}: serving again in {k['ms']} ms, restored {k['restored_ok']}, orphans {k['orphans']}")
    finally:
        records = load.stop()
    for x in records:  # a request cut by the kill itself, or refused while the daemon was down, is not lost
        if x.cls == "lost" and any(a <= x.t1 and x.t0 <= b for a, b in outages):
            x.cls = "cut_by_daemon_kill"
    return {"kills": kills, "n": len(kills), "restored_ok": sum(1 for k in kills if k.get("restored_ok")), "load": summarize(records),
            "serve_again_ms": h.spread([k["ms"] for k in kills if k["ms"] is not None], 1), "orphans": sum(len(k["orphans"]) for k in kills)}


def phase_soak(ctx: Ctx, seconds: float) -> dict:
    """soak_clients clients for `seconds`, sampling the RSS of the daemon and of its workers."""
    ctx.wait_ready(ctx.models, 60)
    rss: list[dict] = []
    load = start_load(ctx, ctx.plan.soak_clients, seconds + 5)
    t0 = time.monotonic()
    interval = 10.0 if seconds >= 300 else max(1.0, seconds / 20)
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(min(interval, max(0.0, seconds - (time.monotonic() - t0))))
            try:
                mem = ctx.status()["memory"]
            except (h.BenchError, OSError) as exc:
                rss.append({"t": round(time.monotonic() - t0, 1), "error": str(exc)[:200]})
                continue
            rss.append({"t": round(time.monotonic() - t0, 1), "daemon": mem["daemon_rss_bytes"], "workers": mem["workers_rss_bytes"]})
    finally:
        records = load.stop()
    good = [s for s in rss if "error" not in s]
    out: dict[str, Any] = {"seconds": seconds, "clients": ctx.plan.soak_clients, "samples": rss, "load": summarize(records)}
    if len(good) >= 2:
        base, last = good[len(good) // 10], good[-1]  # after a tenth of the soak: caches and arenas warmed up
        for key in ("daemon", "workers"):
            out[f"{key}_rss_mb"] = {"baseline": round(base[key] / 2**20, 1), "last": round(last[key] / 2**20, 1),
                                    "max": round(max(s[key] for s in good) / 2**20, 1), "growth_mb": round((last[key] - base[key]) / 2**20, 1),
                                    "growth_pct": round(100.0 * (last[key] - base[key]) / base[key], 1) if base[key] else None}
    return out


# ---- the run ----------------------------------------------------------------------------------

STOP = threading.Event()  # SIGTERM/SIGHUP: stop after the current phase's cleanup


def on_signal(signum: int, frame: Any) -> None:
    """KeyboardInterrupt, not SystemExit: hypothesis would take a SystemExit raised while it
    draws for a failure of its own and go on."""
    STOP.set()
    raise KeyboardInterrupt(f"signal {signum}")


def run_chaos(plan: Plan, *, log: Callable[[str], None] = print, phases: list[str] | None = None) -> dict:
    """Run `plan` against a fresh daemon: the results (``totals`` has the must-be-zero counts).
    Always stops what it started."""
    res: dict[str, Any] = {"plan": asdict(plan), "errors": [], "started_at": h.now()}
    if not h.STORIES.is_file():
        raise h.BenchError(f"{h.STORIES} is missing")
    ctx = Ctx(plan, log)
    steps = {"worker_kills": (lambda: phase_faults(ctx, plan.worker_kills, False), plan.worker_kills),
             "hangs": (lambda: phase_faults(ctx, plan.hangs, True), plan.hangs), "switches": (lambda: phase_switches(ctx, plan.switches), plan.switches),
             "fuzz": (lambda: phase_fuzz(ctx, plan.fuzz, plan.hostile, plan.huge), plan.fuzz + plan.hostile),
             "daemon_kills": (lambda: phase_daemon_kills(ctx, plan.daemon_kills), plan.daemon_kills), "soak": (lambda: phase_soak(ctx, plan.soak_sec), plan.soak_sec)}
    try:
        res["config"] = {"home_config": ctx.home.config, "effective": effective_config(ctx.home.config), "profiles": ctx.profiles}
        res["startup"] = ctx.start()
        st = ctx.status()
        log(f"daemon up on profile {st['profile']}: {', '.join(m['name'] for m in st['models'])}")
        for name, (fn, wanted) in steps.items():
            if STOP.is_set():
                break
            if not wanted or name not in (phases or PHASES):
                continue
            log(f"[{name}]")
            t0 = time.monotonic()
            ok, res[name] = h.attempt(fn, res["errors"], phase=name)
            if not ok:
                del res[name]
                log(f"  FAILED: {res['errors'][-1]['error']}")
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
        ctx.conn.close()
        res["leftover_pids_killed"] = ctx.home.cleanup(h.KEEP)
    res["finished_at"] = h.now()
    res["totals"] = totals(res)
    return res


def totals(res: dict) -> dict:
    loads = [res[p]["load"] for p, _ in LOAD_PHASES if "load" in (res.get(p) or {})]
    fz = res.get("fuzz") or {}
    ws = fz.get("websocket") or {}
    t = {**{k: sum(x[k] for x in loads) + (fz.get("classes") or {}).get(k, 0) for k in ("ok", "error")},
         **{k: sum(x[k] for x in loads) + fz.get(k, 0) + ws.get(k, 0) for k in ("sent", "truncated", "lost")},
         "cut_by_daemon_kill": sum(x.get("cut_by_daemon_kill", 0) for x in loads), "refused_while_daemon_down": sum(x.get("refused", 0) for x in loads),
         "input_restarts": fz.get("input_restarts", 0), "fuzz_5xx": fz.get("5xx", 0) + ws.get("server_errors", 0)}
    t["must_be_zero_failed"] = [k for k in MUST_BE_ZERO if t[k]]
    return t


# ---- report ---------------------------------------------------------------------------------


def spread_text(s: dict | None, unit: str = "ms") -> str:
    if not s or not s.get("n"):
        return "-"
    return f"median {s['median']:g} {unit}, max {s['max']:g} {unit} (min {s['min']:g}, n {s['n']})"


def figure_rows(res: dict) -> list[list[str]]:
    t, yes = res["totals"], r.yes
    rows = [["requests sent / answered correctly / explicit error", f"{t['sent']} / {t['ok']} / {t['error']}", "", ""],
            ["truncated yet presented as success", t["truncated"], "0", yes(t["truncated"] == 0)],
            ["lost (no answer, dropped connection)", t["lost"], "0", yes(t["lost"] == 0)]]
    if t["cut_by_daemon_kill"] or t["refused_while_daemon_down"]:
        rows.append(["↳ apart: cut by a daemon kill -9 / refused while it was down", f"{t['cut_by_daemon_kill']} / {t['refused_while_daemon_down']}", "", ""])
    wk = res.get("worker_kills")
    if wk:
        tg = wk.get("targets") or {}
        rows += [[f"worker kill -9 under load ({wk['n']}): serving again", spread_text(wk["serve_again_ms"]),
                  f"median <= load_ms + {KILL_MEDIAN_SLACK_MS:g} ms (~{tg.get('median_budget_ms', '?')} ms)", yes(tg.get("median_met"))],
                 ["↳ every kill within load_ms + 1.5 s", f"{wk['n'] - tg.get('over_max_budget', wk['n'])}/{wk['n']}",
                  f"max <= load_ms + {KILL_MAX_SLACK_MS:g} ms", yes(tg.get("max_met"))],
                 ["↳ load_ms of the new workers", spread_text(wk["load_ms"]), "", ""],
                 ["↳ model went FATAL (loaded again by hand) / not served again", f"{wk['fatal']} / {wk['not_served_again']}", "0",
                  yes(wk["fatal"] == 0 and wk["not_served_again"] == 0)],
                 ["↳ streams cut by a kill that ended with an error event", wk["load"]["streams_ended_by_error_event"], "", ""]]
    hg = res.get("hangs")
    if hg:
        tg = hg.get("targets") or {}
        rows += [[f"SIGSTOP hang under load ({hg['n']}): serving again", spread_text(hg["serve_again_ms"]),
                  f"<= hang timeout {hg['hang_timeout_ms']:g} ms + load_ms + {HANG_SLACK_MS:g} ms", yes(tg.get("met"))],
                 ["↳ exactly one restart per hang", f"{tg.get('exactly_one_restart')}/{hg['n']}", "all", yes(tg.get("one_restart_met"))]]
    sw = res.get("switches")
    if sw:
        rows += [["profile switches under load", f"{sw['succeeded']}/{sw['n']} succeeded; {spread_text(sw['duration_ms'])}", "all",
                  yes(sw["succeeded"] == sw["n"])],
                 ["↳ load requests answered with an error during the switches", sw["load"]["error"], "", ""]]
    fz = res.get("fuzz")
    if fz:
        src, pl, rj, hh, wsr = Counter(), res.get("plan") or {}, fz["rejection"], fz["health"], fz.get("websocket")
        for s, c in fz["by_source"].items():
            src[s.split("-")[0]] += sum(c.values())
        rows += [["fuzzed requests: drawn by schemathesis / hostile JSON; sent in all", f"{pl.get('fuzz')} / {(pl.get('hostile') or 0) + (pl.get('huge') or 0)}; "
                  f"{fz['sent']} ({src.get('schemathesis', 0)} / {src.get('hostile', 0)}: the rejected kinds twice, paced then unpaced)", "", ""],
                 ["5xx from bad input", fz["5xx"], "0", yes(fz["5xx"] == 0)],
                 ["worker restarts caused by input", fz["input_restarts"], "0", yes(fz["input_restarts"] == 0)],
                 ["fuzz lost / truncated", f"{fz['lost']} / {fz['truncated']}", "0", yes(fz["lost"] == 0 and fz["truncated"] == 0)],
                 ["fuzz throughput through the rejection path", f"{rj['requests_per_sec']} requests/s ({rj['requests']} in {rj['burst_sec']} s)",
                  f">= {FUZZ_MIN_RPS:g}/s", yes(rj["met"])]]
        if wsr:
            rows.append(["hostile WebSocket messages: answered with an error message / lost / server errors",
                         f"{wsr['classes'].get('error', 0)} of {wsr['sent']} / {wsr['lost']} / {wsr['server_errors']}", "lost 0, server errors 0",
                         yes(wsr["lost"] == 0 and wsr["server_errors"] == 0)])
        rows.append([f"/health p99 idle vs during the fuzz paced at {(rj.get('paced') or {}).get('requests_per_sec')} requests/s (raw socket)",
                     f"{hh['before']['p99']} / {hh['during']['p99']} ms, ratio {hh['p99_ratio']}",
                     f"ratio within the idle windows' spread ({hh['noise_ratio']}), at >= {FUZZ_MIN_RPS:g}/s", yes(hh["met"])])
        if (hh.get("during_unpaced") or {}).get("n"):
            rows.append(["↳ /health p99 during the unpaced bursts (the daemon saturated)", f"{hh['during_unpaced']['p99']} ms", "", ""])
    dk = res.get("daemon_kills")
    if dk:
        rows += [[f"daemon kill -9 + `msting llm start` ({dk['n']}): serving again", spread_text(dk["serve_again_ms"]), "", ""],
                 ["↳ state restored (profile, default model, models)", f"{dk['restored_ok']}/{dk['n']}", "all", yes(dk["restored_ok"] == dk["n"])],
                 ["↳ processes of the killed daemon left running", dk["orphans"], "0", yes(dk["orphans"] == 0)]]
    sk = res.get("soak")
    if sk and sk.get("daemon_rss_mb"):
        ld = sk["load"]
        rows.append([f"soak {sk['seconds'] / 60:g} min, {sk['clients']} clients: requests",
                     f"{ld['sent']} ({ld.get('requests_per_sec')}/s), {ld['ok']} ok, {ld['error']} errors", "", ""])
        rows += [[f"↳ {key} RSS growth over the soak", f"{x['growth_mb']:+g} MB ({x['growth_pct']:+g} %): {x['baseline']} → {x['last']} MB (max {x['max']})", "", ""]
                 for key in ("daemon", "workers") for x in [sk[f"{key}_rss_mb"]]]
    return rows


def findings(res: dict) -> list:
    fz, out = res.get("fuzz") or {}, []
    if not res["totals"]["must_be_zero_failed"] and not res["errors"]:
        out.append("Every must-be-zero count is zero.")
    for key, title in (("examples_5xx", "5xx answers to bad input"), ("examples_lost", "Fuzz requests with no answer"),
                       ("examples_truncated", "Fuzz replies presented as success but malformed"),
                       ("examples_odd_errors", "Error replies that are not the error format"),
                       ("examples_negative_accepted", "Negative cases the daemon accepted (the schema is stricter than the route, or the case was valid after all)")):
        ex = fz.get(key) or []
        if ex:
            out += [f"**{title}** ({len(ex)} distinct shown):", r.Table(["route", "drawn by", "request", "reply"], [
                [e["op"], e["source"], f"`{(e['note'] or e['body'])[:120]}`".replace("\n", " "),
                 f"{e['status']} {e['code']}: `{e['reply'][:140]}`".replace("\n", " ")] for e in ex[:12]], "l")]
    for p, title in LOAD_PHASES:
        ld = (res.get(p) or {}).get("load") or {}
        if ld.get("bad_examples"):
            out.append(f"**Load replies truncated or lost during the {title}:** " + "; ".join(
                f"{b['kind']} [{b['model']}, {b['transport']}] {b['class']} {b['code']} {b['detail'][:100]}" for b in ld["bad_examples"][:5]))
        if ld.get("errors_by_code"):
            out.append(f"Error answers during the {title}, by code: " + ", ".join(f"`{k}` {v}" for k, v in ld["errors_by_code"].items()) + ".")
    return out + [f"**Phase `{e['phase']}` failed:** {e['error'][:500]}" for e in res["errors"]]


def run_blocks(res: dict) -> list:
    svc, plan = res["config"]["effective"]["llm_service"], res["plan"]
    return [f"**Latest run:** `{res['command']}`, {res['started_at']} → {res['finished_at']} ({res['duration_sec'] / 60:.1f} min) on "
            f"{r.machine_line(res['machine'])}; code at {r.code_line(res)}.",
            f"**Plan:** {plan['worker_kills']} worker kills, {plan['hangs']} hangs and {plan['switches']} switches under {plan['load_clients']} "
            f"load clients; {plan['fuzz']} schemathesis, {plan['hostile']} hostile and {plan['huge']} oversized fuzz requests and "
            f"{max(1, plan['hostile'] // 4)} hostile WebSocket messages, seed {plan['seed']} (schemathesis "
            f"{(res.get('versions') or {}).get('schemathesis')}); {plan['daemon_kills']} daemon kills; a {plan['soak_sec'] / 60:g}-minute "
            f"soak at {plan['soak_clients']} clients; `max_tokens` {plan['max_tokens']}.",
            f"**Daemon config:** the shipped defaults except `llm_service.hang_timeout_sec: {svc['hang_timeout_sec']}` and "
            f"`llm_service.health_interval_sec: {svc['health_interval_sec']}` (so a hang is found in seconds); the restart policy is the "
            f"shipped one: `{json.dumps(svc['restart'])}`; `queue_size: {svc['queue_size']}`, `warm_spare: {str(svc['warm_spare']).lower()}`, "
            f"`startup_timeout_sec: {svc['startup_timeout_sec']}`, `stop_timeout_sec: {svc['stop_timeout_sec']}`. The whole effective "
            "config is in the JSON (`config.effective`)."]


def write_page(res: dict, folder: Path = r.DOCS) -> None:
    page = r.page(folder, "reliability.md")
    r.write_block(page, "chaos-run", r.md(run_blocks(res)))
    r.write_block(page, "chaos-figures", r.md([r.Table(["figure", "this run", "target", "met"], figure_rows(res), "lr")]), "## Figures")
    r.write_block(page, "chaos-findings", r.md(findings(res)), "## What it found")
    print(f"wrote {page}")


def print_report(res: dict) -> None:
    print("\n" + r.text([r.Table(["figure", "this run", "target", "met"], figure_rows(res), "lr"), *findings(res)]))
    print(f"\nmust-be-zero counts not zero: {res['totals']['must_be_zero_failed'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = r.parser(__doc__, PHASES, "run only these phases (for development; never writes the docs)",
                  "a small plan (a few minutes); leaves docs/reliability.md alone", "reliability.md")
    ap.add_argument("--soak", type=float, default=None, metavar="MINUTES", help="soak minutes (default 30; --quick: 1)")
    ap.add_argument("--json-out", type=Path, default=None, help="JSON results (default bench/results/chaos.json)")
    args = ap.parse_args(argv)
    docs = args.docs.resolve() if args.docs else r.DOCS
    if args.render:
        write_page(json.loads(args.render.read_text()), docs)
        return 0
    h.install_signal_handlers(on_signal)
    h.KEEP = args.keep_homes
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    if args.soak is not None:
        plan.soak_sec = args.soak * 60.0
    command = ".venv/bin/python bench/chaos.py" + (" --quick" if args.quick else "") + (f" --soak {args.soak:g}" if args.soak is not None else "")
    t0 = time.time()
    machine = h.machine()
    print(f"msting chaos ({mode}) on {r.machine_line(machine)}; code {machine['git_head']}", flush=True)
    try:
        res = run_chaos(plan, phases=args.only, log=lambda s: print(s, flush=True))
    finally:
        h.cleanup_all()
    from importlib.metadata import version

    res.update(mode=mode, command=command, machine=machine, duration_sec=round(time.time() - t0, 1),
               versions={"schemathesis": version("schemathesis"), "hypothesis": version("hypothesis")})
    print_report(res)
    r.save(res, args.json_out or (DEFAULT_JSON.with_name("chaos.quick.json") if args.quick else DEFAULT_JSON))
    if mode == "full" and not args.no_docs and not args.only:
        write_page(res, docs)
    print(f"\n{mode} run took {res['duration_sec'] / 60:.1f} min")
    return 1 if res["totals"]["must_be_zero_failed"] or res["errors"] else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
