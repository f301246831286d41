#!/usr/bin/env python3
"""Traffic policies: what they cost a request (``bench/run.py --only policy [--quick]``, or
``bench/policy.py [--quick]``, which writes only this section's block of
docs/benchmarks.md).

Rate limits and usage, when nothing limits: the providers' Router in this process, in
front of the offline stub provider (so that the provider costs next to nothing and the
policies' own cost shows), each request timed from the call to its answer
(``time.perf_counter_ns``), in interleaved rounds of three set-ups:

- ``bare``: the Router as it was before the policies: no limits, the metrics observer only;
- ``usage``: no limit configured, the usage log observing too (one row per request,
  written by its batch writer to a real SQLite file in WAL mode, off the request path);
- ``limits``: limits configured on the service, its model and the client, all with room
  (each request is checked, charged, and settled with its real usage), and the usage log.

The figure is the difference of the p50s to ``bare``; the target is 0.3 ms.

The response cache (``cache``): a real daemon (stories260K, the profile's cache on), one
keep-alive connection over its Unix socket with HTTP/1.1 written by hand (harness.RawConn),
the same reproducible chat completion again and again: each answer a hit, timed from the
request's first byte to the reply's last (target: p99 <= 2 ms). Beside it the same
connection's round trip for a POST the daemon answers 400 at once (no policy, no model):
the floor of any answer over that socket.

The router model (``router_model``): a real daemon, two local models (stories260K,
msting-tiny) and stories260K as the router model; one dry run (POST /v1/route/explain)
per request text, each a real decision: the time is the daemon's own, from the call to
the router model's worker to its constrained answer (target: p50 <= 50 ms).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import harness as h
import report as r

from msting.api.requests import CompletionRequest, RequestMeta, SamplingParams
from msting.config.policy import RateLimits
from msting.daemon.metrics.requests import RequestMetrics
from msting.daemon.store import Store
from msting.policy.limits import Limiter
from msting.policy.usage import Prices, UsageDB, UsageLog
from msting.providers.router import Observers, Router
from msting.providers.stub import StubProvider

KEY = "policy"
TITLE = "## Traffic policies: rate limits, usage, the response cache, the router model"
TARGET_POLICY_P50_MS = 0.3
TARGET_HIT_P99_MS = 2.0
TARGET_DECISION_P50_MS = 50.0
PROFILES = {
    "quick": {"rounds": 3, "requests": 2000, "hits": 2000, "decisions": 40},
    "full": {"rounds": 6, "requests": 5000, "hits": 20000, "decisions": 200},
}
SETUPS = ("bare", "usage", "limits")
ROOMY = RateLimits(requests_per_minute=10**9, tokens_per_minute=10**12)


def _router(setup: str, folder: Path) -> tuple[Router, UsageLog | None]:
    stub = StubProvider()
    observers: list[Any] = [RequestMetrics()]
    limiter = None
    log = None
    if setup == "limits":
        limiter = Limiter({stub.name: (ROOMY, {"stub": ROOMY})}, {"*": ROOMY}, 30.0)
    if setup in ("usage", "limits"):
        db = folder / f"{setup}.db"
        Store(db).close()  # the migrations
        log = UsageLog(UsageDB(db), Prices({}), 90, limiter)
        observers.append(log)
    return Router([stub], default=stub.name, observer=Observers(*observers), limits=limiter), log


async def _time_requests(router: Router, n: int) -> list[float]:
    request = CompletionRequest("Once upon a time", None, SamplingParams(max_tokens=8, temperature=0.0),
                                RequestMeta(client="key:LLM_API_KEY/bench"))
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await router.generate(request)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def bench_overhead(p: dict) -> dict:
    """The three set-ups in interleaved rounds (the order turned each round)."""
    samples: dict[str, list[float]] = {s: [] for s in SETUPS}
    logging.getLogger("msting.providers.stub").setLevel(logging.ERROR)  # its per-request warning is not the policies' cost

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="msting-policy-") as tmp:
            built = {s: _router(s, Path(tmp)) for s in SETUPS}
            for _, log in built.values():
                if log is not None:
                    log.start()
            for router, _ in built.values():  # warm up
                await _time_requests(router, 200)
            for i in range(p["rounds"]):
                order = SETUPS[i % 3:] + SETUPS[:i % 3]
                for setup in order:
                    samples[setup] += await _time_requests(built[setup][0], p["requests"])
                    await asyncio.sleep(0.6)  # the usage writer's batch lands between rounds
            for _, log in built.values():
                if log is not None:
                    await log.close()

    asyncio.run(run())
    stats = {s: h.latency(v) for s, v in samples.items()}
    base = stats["bare"]["p50"]
    added = {s: round(stats[s]["p50"] - base, 4) for s in SETUPS if s != "bare"}
    return {"latency_ms": stats, "added_p50_ms": added, "requests": len(samples["bare"]),
            "met": all(v <= TARGET_POLICY_P50_MS for v in added.values())}


def _daemon(label: str, profile: dict):
    """A started daemon whose default profile is `profile`."""
    if not h.STORIES.exists():
        raise h.BenchError(f"{h.STORIES} is missing")
    dh = h.home(label)
    h.write_profiles(dh, {"default": profile})
    h.start(dh)
    return dh


CHAT_HIT = {"model": "story", "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 32, "temperature": 0}


def bench_cache(p: dict) -> dict:
    """Cache hits over the Unix socket, against the socket's 400 floor, interleaved in blocks."""
    dh = _daemon("policy-cache", {"default_model": "story", "models": {"story": {"source": str(h.STORIES), "n_ctx": 512}},
                                  "cache": {"enabled": True}})
    try:
        return _cache_hits(p, dh)
    finally:
        dh.cleanup(h.KEEP)


def _cache_hits(p: dict, dh: Any) -> dict:
    conn = h.RawConn(("unix", str(dh.socket)))
    hit, reject = json.dumps(CHAT_HIT).encode(), json.dumps({"model": "story", "prompt": 1}).encode()
    first = conn.request("POST", "/v1/chat/completions", hit)
    if first.status != 200 or first.headers.get("x-msting-cache") != "miss":
        raise h.BenchError(f"the first request: {first.status} {first.headers} {first.body[:300]!r}")
    times: dict[str, list[float]] = {"hit": [], "reject": []}
    block = 500
    for i in range(0, p["hits"], block):
        for name, body, status in (("hit", hit, 200), ("reject", reject, 400)):
            for _ in range(min(block, p["hits"] - i)):
                t0 = time.perf_counter()
                reply = conn.request("POST", "/v1/chat/completions" if name == "hit" else "/v1/completions", body)
                times[name].append((time.perf_counter() - t0) * 1000)
                if reply.status != status or (name == "hit" and reply.headers.get("x-msting-cache") != "hit"):
                    raise h.BenchError(f"{name}: {reply.status} {reply.headers} {reply.body[:300]!r}")
    conn.close()
    stats = {k: h.latency(v) for k, v in times.items()}
    return {"latency_ms": stats, "hits": len(times["hit"]), "met": stats["hit"]["p99"] <= TARGET_HIT_P99_MS}


def bench_router_model(p: dict) -> dict:
    """The router model's decisions, one per distinct request text (the daemon's own time)."""
    stories = str(h.STORIES)
    dh = _daemon("policy-router", {
        "default_model": "story",
        "models": {"story": {"source": stories, "n_ctx": 512}, "tiny": {"source": "builtin:tiny", "n_ctx": 512},
                   "router": {"source": stories, "n_ctx": 512, "parallel": 1}},
        "routes": {"stories": {"to": "story", "description": "a story for children"},
                   "words": {"to": "tiny", "description": "anything else"}},
        "router_model": {"model": "router", "budget_ms": 2000}})
    try:
        return _decisions(p, dh)
    finally:
        dh.cleanup(h.KEEP)


def _decisions(p: dict, dh: Any) -> dict:
    texts = [f"request {i}: " + " ".join(["tell me about the little dog", "what is the time", "sum these numbers"][i % 3]
                                         for _ in range(1 + i % 4)) for i in range(p["decisions"] + 5)]
    ms, tokens, chosen = [], [], {}
    with dh.client() as c:
        for i, text in enumerate(texts):
            out = c.post("/v1/route/explain", json={"messages": [{"role": "user", "content": text}]}).json()
            decision = out.get("router_model") or {}
            if decision.get("route") is None:
                raise h.BenchError(f"no decision for {text!r}: {out}")
            if i >= 5:  # the first few warm the worker up
                ms.append(decision["ms"])
                tokens.append(decision["prompt_tokens"])
                chosen[decision["route"]] = chosen.get(decision["route"], 0) + 1
    stats = h.latency(ms)
    return {"decision_ms": stats, "decisions": len(ms), "prompt_tokens": h.spread(tokens, 0), "chosen": chosen,
            "met": stats["p50"] <= TARGET_DECISION_P50_MS}


# The parts of this section, in order: (name, function of the profile).
PARTS: list[tuple[str, Callable[[dict], dict]]] = [("overhead", bench_overhead), ("cache", bench_cache),
                                                   ("router_model", bench_router_model)]


def parts(p: dict, res: dict) -> list:
    return [(name, (lambda fn=fn: fn(p))) for name, fn in PARTS]


# ---- the report ---------------------------------------------------------------------------------


def summary_rows(res: dict) -> list[list[str]]:
    rows = []
    ov = res.get("overhead")
    if ov:
        worst = max(ov["added_p50_ms"].values())
        rows.append([f"rate limits and usage, nothing limiting: p50 added to a request (in process, {ov['requests']} per set-up)",
                     f"{worst:.3f} ms", f"<= {TARGET_POLICY_P50_MS:g} ms", r.yes(ov["met"])])
    ca = res.get("cache")
    if ca:
        rows.append([f"response cache hit over the Unix socket: p99 ({ca['hits']} hits, hand-written HTTP/1.1, keep-alive)",
                     f"{ca['latency_ms']['hit']['p99']:.3f} ms", f"<= {TARGET_HIT_P99_MS:g} ms", r.yes(ca["met"])])
    rm = res.get("router_model")
    if rm:
        rows.append([f"router model decision (stories260K, two routes): p50 of {rm['decisions']}",
                     f"{rm['decision_ms']['p50']:.1f} ms", f"<= {TARGET_DECISION_P50_MS:g} ms", r.yes(rm["met"])])
    return rows


def blocks(res: dict) -> list:
    out: list[Any] = [r.run_line(res, "bench/run.py --only policy"),
                      r.Table(["measurement", "this run", "target", "met"], summary_rows(res), "l")]
    ov = res.get("overhead")
    if ov:
        names = {"bare": "no policy (the Router and its metrics)", "usage": "+ the usage log (no limit configured)",
                 "limits": "+ limits on service, model and client, all with room"}
        rows = [[names[s], f"{ov['latency_ms'][s]['p50']:.4f}", f"{ov['latency_ms'][s]['p99']:.4f}",
                 f"{ov['added_p50_ms'].get(s, 0.0):+.4f}"] for s in SETUPS]
        out += ["**Per request** (Router.generate on the offline stub, interleaved rounds; milliseconds):",
                r.Table(["set-up", "p50", "p99", "p50 added"], rows, "l")]
    ca = res.get("cache")
    if ca:
        rows = [[name, f"{ca['latency_ms'][key]['p50']:.3f}", f"{ca['latency_ms'][key]['p99']:.3f}", f"{ca['latency_ms'][key]['max']:.3f}"]
                for key, name in (("hit", "a cache hit (/v1/chat/completions)"), ("reject", "a POST answered 400 at once (the floor)"))]
        out += ["**The response cache over the Unix socket** (one keep-alive connection, request to the reply's last byte; milliseconds):",
                r.Table(["answer", "p50", "p99", "max"], rows, "l")]
    rm = res.get("router_model")
    if rm:
        d = rm["decision_ms"]
        out += ["**The router model's decision** (the daemon's time from the call to the constrained answer; milliseconds):",
                r.Table(["decisions", "p50", "p99", "max", "prompt tokens (median)", "routes chosen"],
                        [[str(rm["decisions"]), f"{d['p50']:.1f}", f"{d['p99']:.1f}", f"{d['max']:.1f}",
                          f"{rm['prompt_tokens']['median']:g}", ", ".join(f"{k} {v}" for k, v in sorted(rm["chosen"].items()))]], "l")]
    return out + [r.notes(r.common_notes(res))]


def main(argv: list[str]) -> int:
    """`bench/run.py --only policy ARGS`, writing only this section's block of the page."""
    return r.run_own_section(KEY, TITLE, blocks, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
