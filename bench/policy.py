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

Measurements of the response cache and of the router model go in their own functions
below (see PARTS) and add their own rows to the summary.
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
PROFILES = {
    "quick": {"rounds": 3, "requests": 2000},
    "full": {"rounds": 6, "requests": 5000},
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


# The parts of this section, in order: (name, function of the profile). The response
# cache's hit latency over the socket and the router model's decision time are added here.
PARTS: list[tuple[str, Callable[[dict], dict]]] = [("overhead", bench_overhead)]


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
    return out + [r.notes(r.common_notes(res))]


def main(argv: list[str]) -> int:
    """`bench/run.py --only policy ARGS`, writing only this section's block of the page."""
    import run

    code = run.main(["--only", KEY, "--no-docs", *argv])
    saved = h.RESULTS / f"run{'.quick' if '--quick' in argv else ''}.json"
    if "--no-docs" not in argv and saved.exists():
        res = json.loads(saved.read_text())
        if res.get(KEY) and not res[KEY].get("errors"):
            page = r.page(r.DOCS, "benchmarks.md")
            r.write_block(page, KEY, r.md(blocks(res[KEY])), TITLE)
            print(f"updated {page}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
