#!/usr/bin/env python3
"""msting as a proxy in front of remote LLM services (``llm.services``): its overhead against
calling the upstream directly, aggregate tokens/s through it at 8 concurrent streams, the
daemon's RSS over many proxied requests, and what failing over from a hanging URL costs
(docs/benchmarks.md explains the method and the targets). ``bench/proxy.py [--quick]`` is
``bench/run.py --only proxy [--quick]``.

Not part of a run, to see where the time of a proxied request goes:
``bench/proxy.py --trace [--requests N]``: N non-streamed proxied requests against a daemon
with perf_counter() marks monkeypatched onto its request path from outside (uvicorn's request
cycle, the router, the upstream line stream), joined with the client's clock and the
stand-in's request log: the p50 of each step.
``bench/proxy.py --profile [--requests N]``: the daemon under cProfile, for N non-streamed
proxied requests, then for 8 concurrent streams whose tokens come one per network read;
then the upstream HTTP clients alone (httpx.AsyncClient, aiohttp, a hand-written asyncio
HTTP/1.1 client) on the same streamed request.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import harness as h
import httpx
import report as r
import suite
from upstreams.fixtures import StandIn as _StandIn  # tests/ is on sys.path (harness)

KEY = "proxy"
TITLE = "## Remote services: msting as a proxy"
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_TPS_RATIO = 0.97
TARGET_RSS_GROWTH_PCT = 5.0
FIRST_TOKEN_TIMEOUT_SEC = 1.0
SERVICE = "lan"  # the service name requests give: lan~<model>
STANDIN_MODEL = "m"
PROMPT = "Once upon a time"
N_CTX = 2048
ENGINES = {  # key: (label, the upstream); "standin" is tests/upstreams with a token delay
    "stories260K": "llama_cpp.server, stories260K.gguf",
    "large": f"llama_cpp.server, {h.LARGE_NAME} (generated, 26M params)",
    "standin": "stand-in (tests/upstreams) with a token delay",
}
PROFILES = {
    "quick": {"overhead_rounds": 300, "overhead_warmup": 50, "max_tokens": 8,
              "tps_engines": ["stories260K", "large", "standin"], "tps_rounds": 2, "tps_streams": 8,
              "tps_max_tokens": {"stories260K": 128, "large": 24, "standin": 50}, "standin_token_delay": 0.01,
              "rss_warmup": 200, "rss_requests": 1000, "rss_concurrency": 4, "rss_sample_every": 250,
              "failover_trials": 2, "failover_normal": 5},
    "full": {"overhead_rounds": 3000, "overhead_warmup": 200, "max_tokens": 8,
             "tps_engines": ["stories260K", "large", "standin"], "tps_rounds": 8, "tps_streams": 8,
             "tps_max_tokens": {"stories260K": 256, "large": 64, "standin": 200}, "standin_token_delay": 0.01,
             "rss_warmup": 1000, "rss_requests": 10000, "rss_concurrency": 4, "rss_sample_every": 1000,
             "failover_trials": 10, "failover_normal": 10},
}


def parts(p: dict, res: dict) -> list:
    res["stories_present"] = h.STORIES.exists()
    return [("overhead", lambda: bench_overhead(p)), ("throughput", lambda: bench_throughput(p)),
            ("memory", lambda: bench_memory(p)), ("failover", lambda: bench_failover(p))]


# ---- the processes --------------------------------------------------------------------------


class StandIn:
    """A tests/upstreams OpenAI stand-in (``python -m upstreams``), stopped by h.cleanup_all()."""

    name = "stand-in"

    def __init__(self, token_delay: float = 0.0, reply_words: int | None = None):
        self.si = _StandIn.start("openai", models=[STANDIN_MODEL], token_delay=token_delay, reply_words=reply_words)
        self.url, self.pid, self.model = self.si.url, self.si.pid, STANDIN_MODEL
        h.SERVERS.append(self)  # type: ignore[arg-type]

    def fault(self, mode: str, **fields: Any) -> dict:
        return self.si.fault(mode, **fields)

    def clear(self) -> None:
        self.si.clear()

    def stop(self, keep: bool = False) -> None:
        self.si.stop()
        if not keep:
            self.si.close()


class Engine(h.LlamaServer):
    """``python -m llama_cpp.server`` that serves concurrent requests in turn (by default a new
    request interrupts the one streaming), its model under a short alias."""

    ALIAS = "engine"

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        return [*super().command(model, n_ctx, n_threads), "--interrupt_requests", "False", "--model_alias", self.ALIAS]


class FloorProxy(h.LlamaServer):
    """bench/floor_proxy.py in front of `upstream`: the least a proxy built on msting's own
    stack (uvicorn, Starlette, aiohttp) adds, measured in the same rounds as msting."""

    name = "floor proxy"

    def __init__(self, upstream: str):
        super().__init__(upstream)

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("floor_proxy.py")), model, str(self.port)]


def service(urls: list[str], model: str, **upstream: Any) -> dict:
    return {SERVICE: {"api_format": "openai", "urls": urls, "models": [model], "default_model": model, "upstream": upstream}}


def proxy_daemon(label: str, services: dict) -> tuple[h.DaemonHome, int]:
    """A daemon under a fresh MSTING_HOME that loads no local model (no warm spare either):
    only the remote `services`. (home, daemon pid)."""
    dh = h.home(f"proxy-{label}", {"llm_service": {"always_ready": False, "warm_spare": False}, "llm": {"services": services}})
    health = suite.spawn_idle(dh)
    return dh, health["pid"]


def chat_body(model: str, max_tokens: int, stream: bool = False, content: str = PROMPT) -> dict:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                            "temperature": 0.0}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def sse_content(line: str) -> str | None:
    """The content of one chat-completion SSE line (None: not a content chunk); raises on an error event."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    obj = json.loads(line[6:])
    if "error" in obj:
        raise RuntimeError(f"stream error: {obj['error']}")
    choices = obj.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or None


def cpu_of(pid: int) -> float:
    return h.cpu_seconds(pid) or 0.0


# ---- 1. overhead ----------------------------------------------------------------------------


def bench_overhead(p: dict) -> dict:
    """Non-streamed chat completions to a stand-in with no token delay, directly and through
    msting (TCP), interleaved round by round with the same keep-alive httpx client. A third
    request per round, the streamed request msting itself sends upstream (msting always streams
    from the upstream), read to its end directly: the upstream's own cost of streaming. And the
    floor: the same request through bench/floor_proxy.py (the least a proxy on msting's stack
    does), once streamed from the upstream and collected as msting does, once passed through."""
    up = StandIn()
    dh, pid = proxy_daemon("overhead", service([up.url], STANDIN_MODEL))
    floor = FloorProxy(up.url)
    n = p["max_tokens"]
    proxied = chat_body(f"{SERVICE}~{STANDIN_MODEL}", n)
    variants: dict[str, tuple[str, dict, bool]] = {
        "direct": (up.url, chat_body(STANDIN_MODEL, n), False),
        "proxied": (dh.url, proxied, False),
        "direct_stream": (up.url, chat_body(STANDIN_MODEL, n, stream=True), True),
        "floor_stream": (floor.url, proxied, False),
        "floor_pass": (floor.url + "/pass", proxied, False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    texts: dict[str, set[str]] = {k: set() for k in variants}
    sent: list[tuple[str, float, float]] = []  # (variant, perf_counter before the request, after its reply)
    with httpx.Client(timeout=30, trust_env=False) as c:
        def one(key: str) -> float:
            base, body, stream = variants[key]
            if stream:
                t0 = time.perf_counter()
                with c.stream("POST", base + "/v1/chat/completions", json=body) as resp:
                    parts = [x for x in (sse_content(line) for line in resp.iter_lines()) if x]
                dt = time.perf_counter() - t0
                text = "".join(parts)
            else:
                t0 = time.perf_counter()
                resp = c.post(base + "/v1/chat/completions", json=body)
                dt = time.perf_counter() - t0
                text = resp.json()["choices"][0]["message"]["content"] if resp.status_code == 200 else ""
            if resp.status_code != 200:
                raise h.BenchError(f"overhead: {key}: HTTP {resp.status_code}: {resp.text[:300]}")
            if key == "proxied" and resp.headers.get("x-msting-provider") != SERVICE:
                raise h.BenchError(f"overhead: proxied reply not from {SERVICE}: {dict(resp.headers)}")
            texts[key].add(text)
            sent.append((key, t0, t0 + dt))
            return dt * 1000.0

        for _ in range(p["overhead_warmup"]):  # connections open, code paths warm; not counted
            for key in variants:
                one(key)
        up.si.clear_requests()
        sent.clear()
        cpu0, t0 = cpu_of(pid), time.perf_counter()
        order = list(variants)
        for i in range(p["overhead_rounds"]):
            for key in order[i % len(order):] + order[:i % len(order)]:  # each variant first in turn
                times[key].append(one(key))
        cpu1, wall = cpu_of(pid), time.perf_counter() - t0
    out: dict[str, Any] = {"max_tokens": n, "rounds": p["overhead_rounds"], "warmup_rounds": p["overhead_warmup"],
                           "latency_ms": {k: h.latency(v) for k, v in times.items()},
                           "same_text": len(texts["direct"] | texts["proxied"]) == 1, "reply": sorted(texts["proxied"])[0],
                           "daemon_cpu_ms_per_request": round((cpu1 - cpu0) * 1000.0 / p["overhead_rounds"], 3),
                           "wall_sec": round(wall, 1)}
    lat = out["latency_ms"]
    for q in ("p50", "p99"):
        out[f"added_{q}_ms"] = round(lat["proxied"][q] - lat["direct"][q], 3)
        out[f"added_over_stream_{q}_ms"] = round(lat["proxied"][q] - lat["direct_stream"][q], 3)
        for f in ("floor_stream", "floor_pass"):
            out[f"{f}_added_{q}_ms"] = round(lat[f][q] - lat["direct"][q], 3)
    paired = [b - a for a, b in zip(times["direct"], times["proxied"])]
    out["paired_added_ms"] = {"p50": round(h.percentile(paired, 50), 3), "p99": round(h.percentile(paired, 99), 3)}
    out["legs"] = legs(sent, [x for x in up.si.requests("/v1/chat/completions") if x["method"] == "POST"])
    out["met_p50"] = out["added_p50_ms"] <= TARGET_ADDED_P50_MS
    out["met_p99"] = out["added_p99_ms"] <= TARGET_ADDED_P99_MS
    print(f"  overhead: direct p50 {lat['direct']['p50']:.2f} / p99 {lat['direct']['p99']:.2f} ms, proxied p50 "
          f"{lat['proxied']['p50']:.2f} / p99 {lat['proxied']['p99']:.2f} ms: added {out['added_p50_ms']:+.2f} / "
          f"{out['added_p99_ms']:+.2f} ms; daemon CPU {out['daemon_cpu_ms_per_request']:.2f} ms per request; the floor proxy adds "
          f"{out['floor_stream_added_p50_ms']:+.2f} streaming from the upstream, {out['floor_pass_added_p50_ms']:+.2f} passing "
          "through (p50)", flush=True)
    dh.cleanup(h.KEEP)
    floor.stop(h.KEEP)
    up.stop(h.KEEP)
    return out


def legs(sent: list[tuple[str, float, float]], log: list[dict]) -> dict | None:
    """Each timed request split where the stand-in logged it (its body read, before its
    handler; time.monotonic() there is perf_counter() here: both CLOCK_MONOTONIC): `in` = the
    client's send to that moment (through the daemon when proxied), `out` = from there to the
    whole reply at the client. p50s in ms, by variant."""
    if len(log) != len(sent):
        return None
    split: dict[str, dict[str, list[float]]] = {}
    for (key, t0, t1), entry in zip(sent, log):
        d = split.setdefault(key, {"in": [], "out": []})
        d["in"].append((entry["monotonic"] - t0) * 1000.0)
        d["out"].append((t1 - entry["monotonic"]) * 1000.0)
    out: dict[str, Any] = {k: {leg: round(h.percentile(v, 50), 3) for leg, v in d.items()} for k, d in split.items()}
    if {"direct", "proxied", "direct_stream"} <= set(out):
        out["msting_inbound_ms"] = round(out["proxied"]["in"] - out["direct"]["in"], 3)  # client -> daemon -> upstream
        out["msting_outbound_ms"] = round(out["proxied"]["out"] - out["direct_stream"]["out"], 3)  # the streamed reply -> one JSON reply
        out["upstream_streaming_ms"] = round(out["direct_stream"]["out"] - out["direct"]["out"], 3)  # streamed vs not, at the upstream
    return out


# ---- 2. throughput --------------------------------------------------------------------------


async def _stream(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first, chunks, text, usage = None, 0, [], 0
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            raise h.BenchError(f"stream to {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        async for line in resp.aiter_lines():
            piece = sse_content(line)
            if piece:
                first = first or time.perf_counter()
                chunks += 1
                text.append(piece)
            elif line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                usage = (json.loads(line[6:]).get("usage") or {}).get("completion_tokens") or usage
    end = time.perf_counter()
    return {"start": t0, "end": end, "ttft": None if first is None else first - t0, "chunks": chunks, "usage": usage,
            "text": "".join(text)}


async def _cell(client: httpx.AsyncClient, url: str, body: dict, streams: int) -> dict:
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(_stream(client, url, body) for _ in range(streams)))
    wall = max(x["end"] for x in runs) - t0
    return {"wall_sec": wall, "streams": [{k: x[k] for k in ("chunks", "usage", "text")} for x in runs],
            "ttft_ms": sorted(round(x["ttft"] * 1000.0, 1) for x in runs if x["ttft"] is not None)}


def count_tokens(cells: dict[str, list[dict]]) -> str:
    """Each cell's `tokens` and `agg_tps`: a stream's completion tokens are its usage when the
    reply gave one (msting always does; llama_cpp.server does not), else what the direct
    path's stream with the same text counted: one content chunk per token straight from the
    engine (msting writes the tokens of one network read as one chunk). How they were counted."""
    direct = {x["text"]: x["usage"] or x["chunks"] for cell in cells["direct"] for x in cell["streams"]}
    how = set()
    for cell in (c for runs in cells.values() for c in runs):
        tokens = 0
        for x in cell["streams"]:
            n = x["usage"] or direct.get(x["text"])
            how.add("usage" if x["usage"] else "direct chunks" if n is not None else "own chunks")
            tokens += n if n is not None else x["chunks"]
        cell["tokens"], cell["agg_tps"] = tokens, tokens / cell["wall_sec"]
    return ", ".join(sorted(how))


def bench_throughput(p: dict) -> dict:
    out: dict[str, Any] = {"streams": p["tps_streams"], "rounds": p["tps_rounds"], "engines": {}}
    for key in p["tps_engines"]:
        if key == "stories260K" and not h.STORIES.exists():
            out["engines"][key] = {"missing": str(h.STORIES)}
            continue
        out["engines"][key] = throughput_of(key, p)
    return out


def throughput_of(key: str, p: dict) -> dict:
    n, streams = p["tps_max_tokens"][key], p["tps_streams"]
    if key == "standin":  # replies as long as max_tokens asks (its natural length is 12 words)
        up: Any = StandIn(token_delay=p["standin_token_delay"], reply_words=n)
        model = up.model
    else:
        up = Engine(str(h.STORIES if key == "stories260K" else h.large_model()), n_ctx=N_CTX, n_threads=1)
        model = Engine.ALIAS
    # 8 streams queue at a one-slot engine: the last one's first token comes after 7 whole replies
    dh, pid = proxy_daemon(f"tps-{key}", service([up.url], model, first_token_timeout_sec=120, long_timeout_sec=600))
    floor = FloorProxy(up.url)
    paths = {"direct": (up.url + "/v1/chat/completions", chat_body(model, n, stream=True)),
             "proxied": (dh.url + "/v1/chat/completions", chat_body(f"{SERVICE}~{model}", n, stream=True)),
             "floor": (floor.url + "/v1/chat/completions", chat_body(f"{SERVICE}~{model}", n, stream=True))}
    middle = {"direct": None, "proxied": pid, "floor": floor.pid}  # the process between client and upstream
    cells: dict[str, list[dict]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    up_pid = up.pid

    async def run() -> None:
        limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits, trust_env=False) as client:
            for name, (url, body) in paths.items():  # warm-up: connections, the engine's first run; not counted
                await _cell(client, url, body, 2)
            order = list(paths)
            for i in range(p["tps_rounds"]):
                for name in order[i % len(order):] + order[:i % len(order)]:  # each path first in turn
                    url, body = paths[name]
                    mid = middle[name]
                    c0 = (cpu_of(mid) if mid else 0.0, cpu_of(up_pid), time.process_time())
                    cells[name].append(await _cell(client, url, body, streams))
                    c1 = (cpu_of(mid) if mid else 0.0, cpu_of(up_pid), time.process_time())
                    cpu[name].append([b - a for a, b in zip(c0, c1)])
                count_tokens(cells)
                print(f"  [{key}] round {i + 1}/{p['tps_rounds']}: direct {cells['direct'][-1]['agg_tps']:.1f}, proxied "
                      f"{cells['proxied'][-1]['agg_tps']:.1f}, floor proxy {cells['floor'][-1]['agg_tps']:.1f} tok/s", flush=True)

    try:
        asyncio.run(run())
    finally:
        dh.cleanup(h.KEEP)
        floor.stop(h.KEEP)
        up.stop(h.KEEP)
    res: dict[str, Any] = {"label": ENGINES[key], "max_tokens": n, "model": model, "tokens_from": count_tokens(cells)}
    if key == "standin":
        res["token_delay_sec"] = p["standin_token_delay"]
    for name, runs in cells.items():
        tok = runs[0]["tokens"] if runs else 0
        res[name] = {"agg_tps": h.spread([x["agg_tps"] for x in runs], 1), "wall_sec": h.spread([x["wall_sec"] for x in runs], 3),
                     "tokens_per_cell": sorted({x["tokens"] for x in runs}), "all_tokens_equal": all(x["tokens"] == tok for x in runs),
                     "ttft_ms_last_stream": h.spread([x["ttft_ms"][-1] for x in runs if x["ttft_ms"]], 1),
                     "cpu_sec_per_cell": {w: round(sum(c[j] for c in cpu[name]) / len(cpu[name]), 3)
                                          for j, w in enumerate(("daemon", "upstream", "client"))}}
    for name, field in (("proxied", "daemon_cpu_us_per_token"), ("floor", "floor_cpu_us_per_token")):
        tokens = sum(x["tokens"] for x in cells[name])
        if tokens:
            res[field] = round(sum(c[0] for c in cpu[name]) * 1e6 / tokens, 1)
    d, px = res["direct"]["agg_tps"]["median"], res["proxied"]["agg_tps"]["median"]
    res["ratio"] = round(px / d, 4) if d else None
    res["floor_ratio"] = round(res["floor"]["agg_tps"]["median"] / d, 4) if d else None
    paired = [b["agg_tps"] / a["agg_tps"] for a, b in zip(cells["direct"], cells["proxied"])]
    res["paired_ratio"] = h.spread(paired, 3)
    texts = {x["text"] for runs in cells.values() for cell in runs for x in cell["streams"]}
    res["same_text"] = len(texts) == 1
    res["met"] = res["ratio"] is not None and res["ratio"] >= TARGET_TPS_RATIO
    print(f"  [{key}] aggregate tok/s at {streams} streams: direct {d:.1f}, proxied {px:.1f}: ratio {res['ratio']:.3f} (the floor "
          f"proxy's: {res['floor_ratio']:.3f})", flush=True)
    return res


# ---- 3. memory ------------------------------------------------------------------------------


def bench_memory(p: dict) -> dict:
    """The proxying daemon's RSS after a warm-up, then after many more proxied requests: half
    streamed, half not, max_tokens varying, `rss_concurrency` clients at once."""
    up = StandIn()
    dh, pid = proxy_daemon("memory", service([up.url], STANDIN_MODEL))
    model = f"{SERVICE}~{STANDIN_MODEL}"
    counts = {"ok": 0, "failed": 0, "stream": 0, "plain": 0}
    failures: list[str] = []
    samples: list[dict] = []

    async def batch(client: httpx.AsyncClient, start: int, total: int) -> None:
        nxt = [start]

        async def worker() -> None:
            while nxt[0] < start + total:
                i = nxt[0]
                nxt[0] += 1
                stream = i % 2 == 1
                body = chat_body(model, 4 + i % 13, stream=stream, content=f"{PROMPT} {i}")
                try:
                    if stream:
                        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                            lines = [line async for line in resp.aiter_lines()]
                        ok = resp.status_code == 200 and "data: [DONE]" in lines and any(sse_content(x) for x in lines)
                    else:
                        resp = await client.post("/v1/chat/completions", json=body)
                        ok = resp.status_code == 200 and bool(resp.json()["choices"][0]["message"]["content"])
                except (httpx.HTTPError, ValueError, RuntimeError) as exc:
                    ok = False
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])
                counts["ok" if ok else "failed"] += 1
                counts["stream" if stream else "plain"] += 1

        await asyncio.gather(*(worker() for _ in range(p["rss_concurrency"])))

    def rss_now(done: int) -> dict:
        m = h.memory_of(pid) or {}
        s = {"requests": done, "rss": m.get("rss"), "uss": m.get("uss")}
        samples.append(s)
        return s

    async def run() -> dict:
        async with httpx.AsyncClient(base_url=dh.url, timeout=30, trust_env=False) as client:
            rss_now(0)
            await batch(client, 0, p["rss_warmup"])
            up.si.clear_requests()  # the stand-in's request log: its memory, not the daemon's
            time.sleep(1.0)
            warm = rss_now(p["rss_warmup"])
            t0, done = time.perf_counter(), 0
            while done < p["rss_requests"]:
                k = min(p["rss_sample_every"], p["rss_requests"] - done)
                await batch(client, p["rss_warmup"] + done, k)
                done += k
                up.si.clear_requests()
                if done < p["rss_requests"]:
                    rss_now(p["rss_warmup"] + done)
            wall = time.perf_counter() - t0
            time.sleep(1.0)
            return {"warm": warm, "after": rss_now(p["rss_warmup"] + done), "wall_sec": round(wall, 1)}

    try:
        got = asyncio.run(run())
    finally:
        dh.cleanup(h.KEEP)
        up.stop(h.KEEP)
    warm, after = got["warm"]["rss"], got["after"]["rss"]
    out = {"warmup_requests": p["rss_warmup"], "requests": p["rss_requests"], "concurrency": p["rss_concurrency"], "counts": counts,
           "failures": failures[:5], "samples": samples, "rss_after_warmup": warm, "rss_after": after,
           "growth_pct": round((after - warm) * 100.0 / warm, 2), "uss_growth_pct": round((got["after"]["uss"] - got["warm"]["uss"]) * 100.0
                                                                                         / got["warm"]["uss"], 2),
           "requests_per_sec": round(p["rss_requests"] / got["wall_sec"], 1)}
    out["met"] = out["growth_pct"] < TARGET_RSS_GROWTH_PCT and counts["failed"] == 0
    print(f"  memory: RSS {warm / 2**20:.1f} MB after {p['rss_warmup']} requests, {after / 2**20:.1f} MB after {p['rss_requests']} more "
          f"({out['growth_pct']:+.2f} %), {counts['failed']} failed, {out['requests_per_sec']:.0f} req/s", flush=True)
    return out


# ---- 4. failover ----------------------------------------------------------------------------


def bench_failover(p: dict) -> dict:
    """A service with two URLs, A and B (two stand-ins), first_token_timeout_sec = 1. Per
    trial: normal requests (no fault), then A is told to fail its next request (`hang`: never
    answer; `slow_first`: headers at once, the first token after 5 s), and requests are sent
    until one shows it hit A (X-Msting-Attempts: 2); the ones that went to B are normal too."""
    a, b = StandIn(), StandIn()
    timeout = FIRST_TOKEN_TIMEOUT_SEC
    # the breaker is kept from opening A's circuit (3 failures in 30 s would): then no request
    # would hit A any more, and the trials after the third would measure nothing
    dh, pid = proxy_daemon("failover", service([a.url, b.url], STANDIN_MODEL, first_token_timeout_sec=timeout, breaker_failures=1000))
    model = f"{SERVICE}~{STANDIN_MODEL}"
    out: dict[str, Any] = {"first_token_timeout_sec": timeout, "trials": p["failover_trials"], "modes": {}}

    def request(c: httpx.Client, stream: bool) -> dict:
        body = chat_body(model, 8, stream=stream)
        t0 = time.perf_counter()
        if stream:
            first = None
            with c.stream("POST", "/v1/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if first is None and sse_content(line):
                        first = time.perf_counter()
            end = time.perf_counter()
        else:
            resp = c.post("/v1/chat/completions", json=body)
            end = time.perf_counter()
            first = end
        if resp.status_code != 200:
            raise h.BenchError(f"failover: HTTP {resp.status_code}: {resp.text[:300]}")
        return {"t0": t0, "end": end, "ms": (end - t0) * 1000.0, "first_ms": None if first is None else (first - t0) * 1000.0,
                "attempts": int(resp.headers.get("x-msting-attempts", "0")), "upstream": resp.headers.get("x-msting-upstream")}

    def arrival(standin: StandIn) -> float | None:
        """time.monotonic() at which `standin` had read its last generation request (its request log)."""
        got = [x for x in standin.si.requests("/v1/chat/completions") if x["method"] == "POST"]
        return got[-1]["monotonic"] if got else None

    try:
        with httpx.Client(base_url=dh.url, timeout=30, trust_env=False) as c:
            for _ in range(10):  # warm-up: both URLs' connections open
                request(c, False)
            for mode in ("hang", "slow_first"):
                for stream in (False, True):
                    normal, hits, misses = [], [], 0
                    for _ in range(p["failover_trials"]):
                        normal += [request(c, stream) for _ in range(p["failover_normal"])]
                        a.si.clear_requests()
                        b.si.clear_requests()
                        a.fault(mode, count=1, delay=5.0)
                        for _ in range(20):
                            x = request(c, stream)
                            if x["attempts"] >= 2:
                                at_a, at_b = arrival(a), arrival(b)
                                if at_a is not None and at_b is not None and x["t0"] < at_a < at_b < x["end"]:
                                    # client -> A; A read -> B read (the timeout and the switch); B read -> the reply
                                    x["split_ms"] = [(at_a - x["t0"]) * 1000.0, (at_b - at_a) * 1000.0, (x["end"] - at_b) * 1000.0]
                                hits.append(x)
                                break
                            normal.append(x)
                        else:
                            misses += 1
                        a.clear()
                    out["modes"][f"{mode}{'_stream' if stream else ''}"] = failover_summary(mode, stream, normal, hits, misses, timeout)
    finally:
        dh.cleanup(h.KEEP)
        a.stop(h.KEEP)
        b.stop(h.KEEP)
    out["met"] = all(m["met"] for m in out["modes"].values())
    return out


def failover_summary(mode: str, stream: bool, normal: list[dict], hits: list[dict], misses: int, timeout: float) -> dict:
    key = "first_ms" if stream else "ms"  # a stream: its time to the first token
    base = h.percentile([x[key] for x in normal], 50)
    extra = [x[key] - base for x in hits]
    s = {"mode": mode, "stream": stream, "measure": "time to first token" if stream else "whole request",
         "normal_ms": h.latency([x[key] for x in normal]), "failover_ms": h.latency([x[key] for x in hits]),
         "extra_ms": h.spread(extra, 1), "hits": len(hits), "misses": misses,
         "hit_attempts": sorted({x["attempts"] for x in hits})}
    worst = max(extra) if extra else None
    s["extra_over_timeout_ms"] = None if worst is None else round(worst - timeout * 1000.0, 1)
    splits = [x["split_ms"] for x in hits if "split_ms" in x]
    if splits:  # A's request read -> B's request read, beyond the timeout: how late msting moved on
        s["a_to_b_over_timeout_ms"] = h.spread([v[1] - timeout * 1000.0 for v in splits], 1)
        s["split_p50_ms"] = [round(h.percentile([v[i] for v in splits], 50), 2) for i in range(3)]
    s["met"] = worst is not None and worst <= timeout * 1000.0 and misses == 0
    print(f"  failover [{mode}{', stream' if stream else ''}]: normal {base:.1f} ms, the request that hit A: extra "
          f"{s['extra_ms']['median']} ms median, {worst} ms max ({len(hits)} hits, {misses} misses)", flush=True)
    return s


# ---- report ---------------------------------------------------------------------------------


def num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary_rows(res: dict) -> list[list[str]]:
    """The target rows, for the page's summary (bench/run.py) and this section."""
    rows = []
    ov = res.get("overhead")
    if ov:
        lat = ov["latency_ms"]
        for q, target, met in (("p50", TARGET_ADDED_P50_MS, ov["met_p50"]), ("p99", TARGET_ADDED_P99_MS, ov["met_p99"])):
            floor = (f"; the floor proxy streaming from the upstream: {ov['floor_stream_added_' + q + '_ms']:+.2f}, passing through: "
                     f"{ov['floor_pass_added_' + q + '_ms']:+.2f}" if "floor_stream_added_" + q + "_ms" in ov else "")
            rows.append([f"proxy overhead, non-streamed chat, added {q}" + (" (proxied − direct)" if q == "p50" else ""),
                         f"{ov['added_' + q + '_ms']:+.2f} ms ({lat['proxied'][q]:.2f} vs {lat['direct'][q]:.2f} ms{floor})",
                         f"<= +{target:g} ms", r.yes(met)])
    for key, e in ((res.get("throughput") or {}).get("engines") or {}).items():
        if e.get("missing"):
            continue
        rows.append([f"aggregate tok/s at {res['throughput']['streams']} streams, proxied ÷ direct [{e['label']}]",
                     f"{e['ratio']:.3f} (paired min {e['paired_ratio']['min']:.3f}, max {e['paired_ratio']['max']:.3f})",
                     f">= {TARGET_TPS_RATIO}", r.yes(e["met"])])
    mem = res.get("memory")
    if mem:
        rows.append([f"daemon RSS growth over {mem['requests']:,} proxied requests (after {mem['warmup_requests']:,} warm-up)",
                     f"{mem['growth_pct']:+.2f} % ({mem['rss_after_warmup'] / 2**20:.1f} → {mem['rss_after'] / 2**20:.1f} MB)",
                     f"< {TARGET_RSS_GROWTH_PCT:g} %", r.yes(mem["met"])])
    fo = res.get("failover")
    if fo:
        for m in fo["modes"].values():
            e = m["extra_ms"]
            rows.append([f"failover from a URL that {'hangs' if m['mode'] == 'hang' else 'is slow to its first token'}: extra "
                         f"{m['measure']}, median / max", f"{num(e['median'], 0)} / {num(e['max'] if e['n'] else None, 0)} ms "
                         f"({m['extra_over_timeout_ms']:+.1f} ms over the timeout)" if e["n"] else "no request hit it",
                         f"<= 1 first-token timeout ({fo['first_token_timeout_sec'] * 1000:g} ms), strictly, every trial", r.yes(m["met"])])
    return rows


def blocks(res: dict) -> list:
    out: list[Any] = [r.run_line(res, "bench/run.py --only proxy")]
    out += [r.Table(["measurement", "this run", "target", "met"], summary_rows(res), "l")]
    ov = res.get("overhead")
    if ov:
        lat = ov["latency_ms"]
        names = {"direct": "direct to the stand-in, not streamed", "proxied": f"through msting (`{SERVICE}~{STANDIN_MODEL}`), not streamed",
                 "direct_stream": "direct, streamed (the request msting sends upstream), read to the end",
                 "floor_stream": "through the floor proxy, streamed from the upstream and collected (as msting does)",
                 "floor_pass": "through the floor proxy, passed through (not streamed)"}
        out += [f"**Overhead** ({ov['rounds']} interleaved rounds after {ov['warmup_rounds']} uncounted, max_tokens {ov['max_tokens']}; ms):",
                r.Table(["path", "n", "p50", "p99", "mean", "max"],
                        [[names[k], x["n"], num(x["p50"]), num(x["p99"]), num(x["mean"]), num(x["max"])] for k, x in lat.items()]),
                r.bullets([f"Added by msting, proxied − direct: p50 {ov['added_p50_ms']:+.2f} ms, p99 {ov['added_p99_ms']:+.2f} ms (per "
                           f"round, proxied − direct of the same round: p50 {ov['paired_added_ms']['p50']:+.2f}, p99 "
                           f"{ov['paired_added_ms']['p99']:+.2f} ms). Against the direct streamed request (what the upstream itself "
                           f"spends streaming the reply taken out): p50 {ov['added_over_stream_p50_ms']:+.2f}, p99 "
                           f"{ov['added_over_stream_p99_ms']:+.2f} ms.",
                           floor_line(ov),
                           f"The daemon's CPU time per proxied request (its CPU over the timed rounds ÷ the proxied requests): "
                           f"{ov['daemon_cpu_ms_per_request']:.2f} ms.",
                           legs_line(ov.get("legs")),
                           "The proxied and the direct replies were the same text." if ov["same_text"] else
                           "**The proxied and the direct replies differed.**"])]
    tp = res.get("throughput")
    if tp:
        rows = []
        for key, e in tp["engines"].items():
            if e.get("missing"):
                rows.append([ENGINES[key], "(model file not found)", *[""] * 7])
                continue
            for name in ("direct", "proxied", "floor"):
                if name not in e:
                    continue
                x = e[name]
                a = x["agg_tps"]
                cpu = x["cpu_sec_per_cell"]
                rows.append([f"{e['label']} ({e['max_tokens']} tok)", name, num(a["median"], 1), num(a["min"], 1), num(a["max"], 1),
                             num(x["ttft_ms_last_stream"]["median"], 0), f"{cpu['upstream']:.2f}", f"{cpu['daemon']:.2f}" if name != "direct" else "",
                             f"{cpu['client']:.2f}"])
        out += [f"**Throughput** ({tp['streams']} concurrent streamed chat requests per cell, {tp['rounds']} interleaved rounds, "
                "aggregate tokens/s = the completion tokens of all streams ÷ the cell's wall time; CPU seconds per cell):",
                r.Table(["upstream", "path", "agg tok/s median", "min", "max", "last stream's TTFT ms", "upstream CPU s/cell",
                         "proxy CPU s/cell (msting or the floor)", "client CPU s/cell"], rows, "llr"),
                r.bullets([f"{e['label']}" + (f" ({e['token_delay_sec'] * 1000:g} ms per token)" if "token_delay_sec" in e else "")
                           + f": ratio of medians {e['ratio']:.3f}; the daemon's CPU per token {e.get('daemon_cpu_us_per_token', 0):.0f} µs"
                           + (f" (the floor proxy: ratio {e['floor_ratio']:.3f}, {e.get('floor_cpu_us_per_token', 0):.0f} µs per token); "
                              if e.get("floor_ratio") is not None else "; ")
                           + ("every stream of both paths gave the same text" if e["same_text"] else "**the texts differed between streams or paths**")
                           + f"; tokens per cell {e['direct']['tokens_per_cell']} direct, {e['proxied']['tokens_per_cell']} proxied "
                           f"(counted from: {e['tokens_from']})."
                           for e in tp["engines"].values() if not e.get("missing")])]
    mem = res.get("memory")
    if mem:
        out += [f"**Memory**: the daemon process's RSS (psutil; USS in brackets) as the requests went by ({mem['concurrency']} clients at "
                f"once, {mem['requests_per_sec']:.0f} requests/s, {mem['counts']['stream']} streamed and {mem['counts']['plain']} not, "
                f"{mem['counts']['failed']} failed): "
                + ", ".join(f"{s['requests']:,}: {s['rss'] / 2**20:.1f} ({s['uss'] / 2**20:.1f})" for s in mem["samples"] if s.get("rss"))
                + f" MB. Growth after the warm-up: RSS {mem['growth_pct']:+.2f} %, USS {mem['uss_growth_pct']:+.2f} %."]
    fo = res.get("failover")
    if fo:
        rows = [[m["mode"], m["measure"], m["hits"], num(m["normal_ms"]["p50"], 1), num(m["failover_ms"]["p50"], 1),
                 num(m["failover_ms"]["max"], 1), num(m["extra_ms"]["median"], 1), num(m["extra_ms"]["max"], 1),
                 num(m["extra_over_timeout_ms"], 1),
                 f"{m['a_to_b_over_timeout_ms']['median']:+.1f} / {m['a_to_b_over_timeout_ms']['max']:+.1f}" if m.get("a_to_b_over_timeout_ms") else "-",
                 m["misses"]] for m in fo["modes"].values()]
        out += [f"**Failover** (first_token_timeout_sec {fo['first_token_timeout_sec']:g}, {fo['trials']} trials per row; ms):",
                r.Table(["A's fault", "measured", "hits", "normal p50", "hit A p50", "hit A max", "extra median", "extra max",
                         "extra max − timeout", "A read → B read, − timeout (median / max)", "trials where no request hit A"], rows, "llr")]
    return out + [r.notes(notes(res) + r.common_notes(res))]


def floor_line(ov: dict) -> str:
    if "floor_stream_added_p50_ms" not in ov:
        return ""
    return (f"The floor (`bench/floor_proxy.py`: uvicorn, Starlette and one aiohttp session, as msting, and nothing else: no "
            f"validation, routing, retries or accounting), in the same rounds: streaming from the upstream and collecting the reply "
            f"as msting does, it adds p50 {ov['floor_stream_added_p50_ms']:+.2f} ms, p99 {ov['floor_stream_added_p99_ms']:+.2f} ms; "
            f"passing the request through unstreamed, p50 {ov['floor_pass_added_p50_ms']:+.2f} ms, p99 "
            f"{ov['floor_pass_added_p99_ms']:+.2f} ms. msting over the streaming floor: p50 "
            f"{ov['added_p50_ms'] - ov['floor_stream_added_p50_ms']:+.2f} ms.")


def legs_line(lg: dict | None) -> str:
    if not lg or "msting_inbound_ms" not in lg:
        return ""
    return (f"Where the added time is, split at the moment the stand-in has read the request (its request log; p50s): client → "
            f"upstream {lg['direct']['in']:.2f} ms direct, {lg['proxied']['in']:.2f} ms through msting (msting's inbound leg "
            f"{lg['msting_inbound_ms']:+.2f} ms: parse, route, send upstream); upstream → whole reply at the client "
            f"{lg['direct']['out']:.2f} ms direct, {lg['direct_stream']['out']:.2f} ms direct streamed, {lg['proxied']['out']:.2f} ms "
            f"through msting (msting's outbound leg over the streamed reply {lg['msting_outbound_ms']:+.2f} ms: read the stream, "
            f"answer in one JSON reply; the upstream's own cost of streaming instead of one reply {lg['upstream_streaming_ms']:+.2f} ms).")


def notes(res: dict) -> list[str]:
    out = []
    if not res.get("stories_present", True):
        out.append(f"{h.STORIES} was not found: no stories260K upstream in this run.")
    mem = res.get("memory") or {}
    if mem.get("failures"):
        out.append(f"Failed requests in the memory run, e.g. {mem['failures'][:2]}.")
    return out


# ---- --profile -------------------------------------------------------------------------------


PROFILE_TOP = 30


def profiled_daemon(label: str, up: StandIn, stats_file: Path, work: Callable[[h.DaemonHome], str]) -> None:
    """`work(home)` against a daemon run under cProfile (its main thread: the event loop), then
    the daemon stopped (SIGTERM: cProfile writes `stats_file` on the way out) and its top
    functions printed."""
    import pstats

    dh = h.home(f"proxy-profile-{label}", {"llm_service": {"always_ready": False, "warm_spare": False},
                                           "llm": {"services": service([up.url], STANDIN_MODEL)}})
    (dh.home / "logs").mkdir(parents=True, exist_ok=True)
    with open(dh.home / "logs" / "daemon.out", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "msting.daemon"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dh.env)
    try:
        with dh.client(timeout=5) as c:
            dh.wait_for(lambda: dh.socket.exists() and c.get("/health").json(), 60, 0.05, "the profiled daemon")
        print(f"\n==== {label}: {work(dh)}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        dh.cleanup(h.KEEP)
    st = pstats.Stats(str(stats_file))
    st.sort_stats("tottime").print_stats(PROFILE_TOP)
    st.sort_stats("cumulative").print_stats(PROFILE_TOP * 2)
    print(f"the profile: {stats_file} (python -m pstats {stats_file})")


def profile(n: int, folder: Path) -> None:
    """Two daemons under cProfile: `n` non-streamed proxied requests (the per-request cost),
    then 8 concurrent streams of 200 tokens from a stand-in pacing them 2 ms apart, so that
    each token comes in its own network read, as from an engine (the per-token cost); then
    the upstream client alone, in this process: httpx.AsyncClient, aiohttp and a hand-written
    asyncio HTTP/1.1 client on the same streamed request."""
    folder.mkdir(parents=True, exist_ok=True)
    model = f"{SERVICE}~{STANDIN_MODEL}"

    def plain(dh: h.DaemonHome) -> str:
        body = chat_body(model, 8)
        with httpx.Client(base_url=dh.url, timeout=30, trust_env=False) as c:
            for _ in range(100):
                c.post("/v1/chat/completions", json=body)
            t0 = time.perf_counter()
            for _ in range(n):
                c.post("/v1/chat/completions", json=body)
            return f"{n} non-streamed proxied requests, {(time.perf_counter() - t0) * 1000 / n:.2f} ms each under cProfile"

    def streamed(dh: h.DaemonHome) -> str:
        async def go() -> int:
            async with httpx.AsyncClient(base_url=dh.url, timeout=60, trust_env=False) as c:
                total = 0
                for _ in range(max(1, n // 200)):
                    cell = await _cell(c, dh.url + "/v1/chat/completions", chat_body(model, 200, stream=True), 8)
                    total += sum(x["chunks"] for x in cell["streams"])
                return total
        t0 = time.perf_counter()
        chunks = asyncio.run(go())
        return f"8 concurrent streams of 200 tokens, {max(1, n // 200)} rounds: {chunks} chunks to the client in {time.perf_counter() - t0:.1f} s"

    up = StandIn()
    try:
        profiled_daemon("plain", up, folder / "daemon-plain.prof", plain)
    finally:
        up.stop()
    up = StandIn(token_delay=0.002, reply_words=200)
    try:
        profiled_daemon("stream", up, folder / "daemon-stream.prof", streamed)
    finally:
        up.stop()
    up = StandIn()
    try:
        print(json.dumps(asyncio.run(client_compare(up.url, n)), indent=1))
    finally:
        h.cleanup_all()
        up.stop()


async def client_compare(url: str, n: int) -> dict:
    """Per streamed request to the stand-in, in one event loop (ms): httpx.AsyncClient as
    msting's upstream.py drives it (build_request, send(stream=True), aiter_lines, aclose)
    and a minimal asyncio HTTP/1.1 client on one keep-alive connection."""
    body = chat_body(STANDIN_MODEL, 8, stream=True)
    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")

    async def with_httpx(client: httpx.AsyncClient) -> int:
        req = client.build_request("POST", url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30))
        resp = await client.send(req, stream=True)
        lines = 0
        async for _ in resp.aiter_lines():
            lines += 1
        await resp.aclose()
        return lines

    reader, writer = await asyncio.open_connection(host, int(port))

    async def raw() -> int:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (f"{host}:{port}".encode(), len(data), data))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"chunked" in head.lower(), head
        lines = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return lines
            lines += chunk.count(b"\n")

    async def with_aiohttp(session: Any) -> int:
        import aiohttp

        async with session.post(url + "/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(sock_read=30)) as resp:
            lines = 0
            while True:
                data = await resp.content.readany()
                if not data:
                    return lines
                lines += data.count(b"\n")

    out: dict[str, Any] = {}
    try:
        import aiohttp
    except ImportError:
        aiohttp = None  # type: ignore[assignment]
    session = aiohttp.ClientSession(trust_env=False) if aiohttp is not None else None
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        clients: list[tuple[str, Callable]] = [("httpx_async_stream", lambda: with_httpx(client)), ("raw_asyncio", raw)]
        if session is not None:
            clients.append(("aiohttp_readany", lambda: with_aiohttp(session)))
        for name, fn in clients * 2:
            for _ in range(50):
                await fn()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await fn()
                times.append((time.perf_counter() - t0) * 1000.0)
            out[name] = h.latency(times)  # the second pass of each wins (all warm)
    writer.close()
    if session is not None:
        await session.close()
    return out


# ---- --trace ---------------------------------------------------------------------------------

# Runs the daemon with perf_counter() marks on its request path (monkeypatched from outside:
# nothing in src/ changes): uvicorn's request cycle, the router, the upstream line stream. The
# marks of each request go to argv[1] as JSON when the daemon exits.
TRACE_CODE = r"""
import atexit, contextvars, json, runpy, sys, time
out_path = sys.argv[1]
pc = time.perf_counter
REC = contextvars.ContextVar("msting_bench_trace", default=None)
records = []

def mark(name):
    r = REC.get()
    if r is not None:
        r.append((name, pc()))

from uvicorn.protocols.http import httptools_impl as hi
run_asgi, send = hi.RequestResponseCycle.run_asgi, hi.RequestResponseCycle.send
async def traced_run_asgi(self, app):
    r = [("asgi", pc())]
    REC.set(r)
    records.append(r)
    await run_asgi(self, app)
async def traced_send(self, message):
    if message["type"] == "http.response.start":
        mark("response")
    await send(self, message)
    if message["type"] == "http.response.body" and not message.get("more_body"):
        mark("sent")
hi.RequestResponseCycle.run_asgi, hi.RequestResponseCycle.send = traced_run_asgi, traced_send

from msting.providers.router import Router
generate = Router.generate
async def traced_generate(self, request):
    mark("route")
    try:
        return await generate(self, request)
    finally:
        mark("generated")
Router.generate = traced_generate

from msting.providers.remote.upstream import LineStream
open_, next_lines, drain = LineStream.open, LineStream.next_lines, LineStream.drain
async def traced_open(self, timeouts):
    mark("open")
    await open_(self, timeouts)
    mark("headers")
async def traced_next_lines(self):
    lines = await next_lines(self)
    if not getattr(self, "_bench_first", False):
        self._bench_first = True
        mark("first_line")
    return lines
async def traced_drain(self):
    mark("done")
    await drain(self)
    mark("drained")
LineStream.open, LineStream.next_lines, LineStream.drain = traced_open, traced_next_lines, traced_drain

atexit.register(lambda: json.dump(records, open(out_path, "w")))
sys.argv = ["msting.daemon"]
runpy.run_module("msting.daemon", run_name="__main__", alter_sys=True)
"""
TRACE_STEPS = [  # (from, to, what happens in between)
    ("client", "asgi", "client sends; the daemon's uvicorn wakes up, parses the request line and headers"),
    ("asgi", "route", "body read, middleware (error guard, security), routing, JSON parse and validation, the typed request"),
    ("route", "open", "router: name resolution; provider: defaults, the retry loop picks a URL; the wire's upstream body"),
    ("open", "upstream", "aiohttp builds and writes the upstream request; the upstream (uvicorn) reads it"),
    ("upstream", "headers", "the upstream's handler starts the streamed reply; its headers reach aiohttp"),
    ("headers", "first_line", "the first SSE line arrives and is read"),
    ("first_line", "done", "the rest of the stream read, decoded, collected up to [DONE]"),
    ("done", "drained", "drain: waiting for the chunked terminator after [DONE] (keeps the connection reusable)"),
    ("drained", "generated", "release, the attempts list, back through the router"),
    ("generated", "response", "the OpenAI JSON reply built (Starlette JSONResponse)"),
    ("response", "sent", "uvicorn writes the headers and the body (one write: msting.http.transport)"),
    ("sent", "client_end", "the client reads and parses the reply"),
]


def trace(n: int, folder: Path) -> dict:
    """`n` non-streamed proxied requests (after 200 uncounted) against a daemon with the marks
    of TRACE_CODE; each request's steps from the client's clock, the daemon's marks and the
    stand-in's request log (all CLOCK_MONOTONIC). p50 / p90 per step, ms."""
    folder.mkdir(parents=True, exist_ok=True)
    up = StandIn()
    dh = h.home("proxy-trace", {"llm_service": {"always_ready": False, "warm_spare": False},
                                "llm": {"services": service([up.url], STANDIN_MODEL)}})
    marks_file = folder / "marks.json"
    (dh.home / "logs").mkdir(parents=True, exist_ok=True)
    with open(dh.home / "logs" / "daemon.out", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", TRACE_CODE, str(marks_file)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=dh.env)
    warm, sent = 200, []
    try:
        with dh.client(timeout=5) as c:
            dh.wait_for(lambda: dh.socket.exists() and c.get("/health").json(), 60, 0.05, "the traced daemon")
        body = chat_body(f"{SERVICE}~{STANDIN_MODEL}", 8)
        with httpx.Client(base_url=dh.url, timeout=30, trust_env=False) as c:
            for i in range(warm + n):
                t0 = time.perf_counter()
                resp = c.post("/v1/chat/completions", json=body)
                resp.json()
                sent.append((t0, time.perf_counter()))
        log_ = [x for x in up.si.requests("/v1/chat/completions") if x["method"] == "POST"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        dh.cleanup(h.KEEP)
        up.stop(h.KEEP)
    records = [dict(r) for r in json.loads(marks_file.read_text()) if any(k == "route" for k, _ in r)]
    if not (len(records) == len(sent) == len(log_)):
        raise h.BenchError(f"trace: {len(records)} traced requests, {len(sent)} sent, {len(log_)} at the upstream")
    steps: dict[str, list[float]] = {f"{a}→{b}": [] for a, b, _ in TRACE_STEPS}
    total = []
    for (t0, t1), rec, entry in list(zip(sent, records, log_))[warm:]:
        rec.update(client=t0, client_end=t1, upstream=entry["monotonic"])
        for a, b, _ in TRACE_STEPS:
            if a in rec and b in rec:
                steps[f"{a}→{b}"].append((rec[b] - rec[a]) * 1000.0)
        total.append((t1 - t0) * 1000.0)
    out = {"requests": n, "total_ms": h.latency(total), "steps": {}}
    for (a, b, what), (k, v) in zip(TRACE_STEPS, steps.items()):
        out["steps"][k] = {"what": what, "p50": round(h.percentile(v, 50), 3), "p90": round(h.percentile(v, 90), 3), "n": len(v)}
    return out


def print_trace(t: dict) -> None:
    print(f"{t['requests']} non-streamed proxied requests, whole request p50 {t['total_ms']['p50']:.3f} ms "
          f"(the marks themselves add a little); per step, ms:")
    print(r.text([r.Table(["step", "p50", "p90", "what happens"],
                          [[k, f"{x['p50']:.3f}", f"{x['p90']:.3f}", x["what"]] for k, x in t["steps"].items()], "lrrl")]))
    print(f"sum of the step p50s: {sum(x['p50'] for x in t['steps'].values()):.3f} ms")


def main(argv: list[str]) -> int:
    n = int(argv[argv.index("--requests") + 1]) if "--requests" in argv else 1000
    if "--profile" in argv:
        profile(n, Path(tempfile.mkdtemp(prefix="msprof")))
        return 0
    if "--trace" in argv:
        try:
            print_trace(trace(n, Path(tempfile.mkdtemp(prefix="mstrace"))))
        finally:
            h.cleanup_all()
        return 0
    import run

    return run.main(["--only", KEY, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
