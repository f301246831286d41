#!/usr/bin/env python3
"""Operations: what `/metrics` and the debug page cost (``bench/run.py --only ops [--quick]``,
or ``bench/ops.py [--quick]``, which writes only this section's block of docs/benchmarks.md):

- scrape: GET /metrics of a daemon with 3 remote services of 100 models each, every one of
  the 300 (service, model) pairs (and the local model) having served a request and a stream,
  so every series exists: the scrape's wall time at the client (httpx on the Unix socket),
  p50 / p99, against 10 ms p99. For reference, prometheus_client's own writer
  (`generate_latest`) on a registry of the same 300 pairs' request metrics, in process.
- scraped: the same daemon serving stories260K (else msting-tiny): /health latency (sampled
  from another process) and decode tokens/s of back-to-back generations, in interleaved
  rounds without and with a scrape every second; the ratios, and the spread of the rounds
  without a scrape (the run's noise).
- page: the debug page's first contentful paint over loopback in headless Chromium
  (Debian's `chromium` through Playwright; the browser's performance timing), and the time
  until the first live state is on the page, over fresh pages after a warm-up.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import harness as h
import httpx
import report as r
from proxy import num
from upstreams.fixtures import StandIn  # tests/ is on sys.path (harness)

KEY = "ops"
TITLE = "## Operations: /metrics and the debug page"
TARGET_SCRAPE_P99_MS = 10.0
TARGET_FIRST_PAINT_MS = 200.0
SERVICES = ("lan1", "lan2", "lan3")
MODELS_PER_SERVICE = 100
CHAT = [{"role": "user", "content": "Once upon a time"}]
UPSTREAM = {"short_timeout_sec": 2, "long_timeout_sec": 30, "first_token_timeout_sec": 5, "health_interval_sec": 5}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROFILES = {
    "quick": {"scrapes": 200, "rounds": 2, "round_sec": 4, "decode_tokens": 64, "page_loads": 10, "page_warmup": 2},
    "full": {"scrapes": 2000, "rounds": 6, "round_sec": 10, "decode_tokens": 128, "page_loads": 50, "page_warmup": 5},
}


def parts(p: dict, res: dict) -> list:
    res["stories_present"] = h.STORIES.exists()
    return [("scrape", lambda: bench_scrape(p)), ("scraped", lambda: bench_scraped(p)), ("page", lambda: bench_page(p))]


# ---- a daemon with 3 services x 100 models, every series present ------------------------------


def model_names() -> list[str]:
    return [f"model-{i:03d}" for i in range(MODELS_PER_SERVICE)]


class Fleet:
    """Three stand-in upstreams listing 100 models each, and a daemon in front of them (its local
    model: `model`, else the built-in one)."""

    def __init__(self, label: str, model: str | None = None):
        self.standins: list[StandIn] = []
        try:
            with ThreadPoolExecutor(len(SERVICES)) as pool:
                self.standins = list(pool.map(lambda _: StandIn.start("openai", models=model_names()), SERVICES))
            services = {name: {"api_format": "openai", "urls": [s.url], "models": model_names(), "default_model": model_names()[0],
                               "upstream": UPSTREAM} for name, s in zip(SERVICES, self.standins)}
            llm: dict[str, Any] = {"services": services}
            if model is not None:
                llm.update(model=model, n_ctx=512)
            self.home = h.home(label, {"llm": llm})
            h.start(self.home)
        except BaseException:
            self.close()
            raise

    def fill(self) -> int:
        """One request and one stream to every (service, model) pair, and to the local model:
        every series exists. The requests sent."""
        names = [f"{s}~{m}" for s in SERVICES for m in model_names()]
        with self.home.client() as c:
            c.post("/generate", json={"prompt": "Once", "max_tokens": 4}).raise_for_status()
            with c.stream("POST", "/generate", json={"prompt": "Once", "max_tokens": 4, "stream": True}) as resp:
                resp.read()

        def both(name: str) -> None:
            with self.home.client() as c:
                c.post("/v1/chat/completions", json={"model": name, "messages": CHAT, "max_tokens": 4}).raise_for_status()
                with c.stream("POST", "/v1/chat/completions", json={"model": name, "messages": CHAT, "max_tokens": 4,
                                                                     "stream": True}) as resp:
                    resp.raise_for_status()
                    resp.read()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(both, names))
        return 2 * len(names) + 2

    def close(self) -> None:
        for s in self.standins:
            s.close()


def scrape_once(c: httpx.Client) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    resp = c.get("/metrics")
    ms = (time.perf_counter() - t0) * 1000
    resp.raise_for_status()
    return ms, resp.content


def raw_scrape(raw: h.RawConn) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    reply = raw.request("GET", "/metrics", timeout=30)
    ms = (time.perf_counter() - t0) * 1000
    if reply.status != 200 or not reply.complete:
        raise h.BenchError(f"GET /metrics: {reply.status} {reply.error}")
    return ms, reply.body


def bench_scrape(p: dict) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    fleet = Fleet("ops-scrape")
    try:
        sent = fleet.fill()
        raw = h.RawConn(("unix", str(fleet.home.socket)), 30)
        with fleet.home.client(timeout=30) as c:
            for _ in range(20):  # warm-up, not counted
                scrape_once(c)
                raw_scrape(raw)
            times: dict[str, list[float]] = {"httpx": [], "raw": []}
            body = b""
            for _ in range(p["scrapes"]):  # interleaved: both clients see the same moments of the machine
                ms, body = scrape_once(c)
                times["httpx"].append(ms)
                times["raw"].append(raw_scrape(raw)[0])
        raw.close()
        text = body.decode()
        families = list(text_string_to_metric_families(text))
        pairs = {(s.labels["service"], s.labels["model"]) for f in families if f.name == "msting_requests"
                 for s in f.samples}
        samples = sum(len(f.samples) for f in families)
    finally:
        fleet.close()
    lat = {k: h.latency(v) for k, v in times.items()}
    return {"requests_sent": sent, "scrapes": p["scrapes"], "latency_ms": lat["httpx"], "raw_latency_ms": lat["raw"],
            "bytes": len(body), "lines": text.count("\n"), "samples": samples, "series_pairs": len(pairs),
            "met": lat["raw"]["p99"] <= TARGET_SCRAPE_P99_MS, "generate_latest_ms": generate_latest_reference(len(pairs))}


def generate_latest_reference(pairs: int, runs: int = 20) -> dict:
    """prometheus_client's writer on a registry of `pairs` (service, model) pairs of the same
    request metrics (a counter by outcome, two token counters, two histograms), in process."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from msting.daemon.metrics.requests import DURATION_BUCKETS, TTFT_BUCKETS

    reg = CollectorRegistry(auto_describe=False)
    labels = ["service", "model"]
    requests = Counter("msting_requests", "", [*labels, "kind", "outcome"], registry=reg)
    prompt = Counter("msting_prompt_tokens", "", labels, registry=reg)
    completion = Counter("msting_completion_tokens", "", labels, registry=reg)
    ttft = Histogram("msting_time_to_first_token_seconds", "", labels, buckets=TTFT_BUCKETS, registry=reg)
    duration = Histogram("msting_request_duration_seconds", "", labels, buckets=DURATION_BUCKETS, registry=reg)
    for i in range(pairs):
        key = (SERVICES[i % len(SERVICES)], f"model-{i:03d}")
        for kind in ("generate", "stream"):
            requests.labels(*key, kind, "ok").inc()
        prompt.labels(*key).inc(10)
        completion.labels(*key).inc(8)
        ttft.labels(*key).observe(0.01)
        duration.labels(*key).observe(0.02)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = generate_latest(reg)
        times.append((time.perf_counter() - t0) * 1000)
    return {**h.latency(times), "lines": out.count(b"\n")}


# ---- serving while scraped ----------------------------------------------------------------


def decode_for(dh: h.DaemonHome, seconds: float, max_tokens: int) -> dict:
    """Back-to-back non-streamed generations for `seconds`: completion tokens / wall time."""
    tokens, n = 0, 0
    with dh.client(timeout=60) as c:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            body = c.post("/generate", json={"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0}).json()
            tokens += body["usage"]["completion_tokens"]
            n += 1
        wall = time.perf_counter() - t0
    return {"tok_s": tokens / wall, "requests": n}


class Scraper(threading.Thread):
    """GET /metrics once a second until stopped."""

    def __init__(self, dh: h.DaemonHome):
        super().__init__(daemon=True)
        self.dh = dh
        self.stop_event = threading.Event()
        self.times: list[float] = []

    def run(self) -> None:
        with self.dh.client(timeout=30) as c:
            while not self.stop_event.is_set():
                self.times.append(scrape_once(c)[0])
                self.stop_event.wait(1.0)

    def stop(self) -> list[float]:
        self.stop_event.set()
        self.join(30)
        return self.times


def bench_scraped(p: dict) -> dict:
    model = str(h.STORIES) if h.STORIES.exists() else None
    fleet = Fleet("ops-scraped", model)
    rounds: list[dict] = []
    try:
        fleet.fill()
        dh = fleet.home
        sampler = h.HealthSampler(dh)
        try:
            decode_for(dh, 1.0, p["decode_tokens"])  # warm-up
            for i in range(p["rounds"]):
                for scraped in ((False, True) if i % 2 == 0 else (True, False)):  # ABBA: neither always goes first
                    scraper = Scraper(dh) if scraped else None
                    if scraper:
                        scraper.start()
                    sampler.start()
                    decode = decode_for(dh, p["round_sec"], p["decode_tokens"])
                    health = [ms for ms, readiness, _ in sampler.stop() if readiness == "ready"]
                    scrapes = scraper.stop() if scraper else []
                    rounds.append({"round": i, "scraped": scraped, "tok_s": round(decode["tok_s"], 1), "requests": decode["requests"],
                                   "health": h.latency(health), "health_ms": health, "scrape_ms": [round(x, 2) for x in scrapes]})
        finally:
            sampler.close()
    finally:
        fleet.close()

    def pooled(scraped: bool) -> dict:
        own = [x for x in rounds if x["scraped"] is scraped]
        return {"health": h.latency([ms for x in own for ms in x["health_ms"]]), "tok_s": h.spread([x["tok_s"] for x in own]),
                "health_p99_rounds": h.spread([x["health"]["p99"] for x in own], 3)}

    quiet, scraped = pooled(False), pooled(True)
    for x in rounds:
        del x["health_ms"]
    decode_ratio = scraped["tok_s"]["median"] / quiet["tok_s"]["median"]
    noise_low = quiet["tok_s"]["min"] / quiet["tok_s"]["median"]
    p99_ratio = scraped["health"]["p99"] / quiet["health"]["p99"]
    return {"model": "stories260K" if model else "msting-tiny", "rounds": rounds, "without": quiet, "with": scraped,
            "decode_ratio": round(decode_ratio, 3), "decode_noise_low": round(noise_low, 3), "health_p99_ratio": round(p99_ratio, 3),
            "decode_met": decode_ratio >= noise_low,
            "health_met": scraped["health"]["p99"] <= quiet["health_p99_rounds"]["max"],
            "scrape_ms": h.latency([s for x in rounds for s in x["scrape_ms"]])}


# ---- the debug page's first paint ---------------------------------------------------------------


FIRST_STATE_JS = """() => new Promise((resolve) => {
  const done = () => document.getElementById('readiness').textContent === 'ready';
  if (done()) return resolve(performance.now());
  new MutationObserver(() => { if (done()) resolve(performance.now()); })
    .observe(document.getElementById('readiness'), {childList: true, characterData: true, subtree: true});
})"""


PAINT_JS = """() => new Promise((resolve) => {
  const paint = {};
  const done = () => {
    const nav = performance.getEntriesByType('navigation')[0];
    resolve({fcp: paint['first-contentful-paint'], fp: paint['first-paint'], response_end: nav.responseEnd,
             dom_content_loaded: nav.domContentLoadedEventEnd, bytes: nav.transferSize});
  };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) paint[e.name] = e.startTime;
    if ('first-contentful-paint' in paint) done();
  }).observe({type: 'paint', buffered: true});
})"""


def bench_page(p: dict) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise h.BenchError("no chromium binary (Debian's chromium package: scripts/test-deps.sh)")
    dh = h.home("ops-page")
    h.start(dh)
    profile = tempfile.mkdtemp(prefix="chromium-")
    loads: list[dict] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            for i in range(p["page_warmup"] + p["page_loads"]):
                page = browser.new_page()
                page.goto(f"{dh.url}/debug")
                live = page.evaluate(FIRST_STATE_JS)
                timing = page.evaluate(PAINT_JS)
                page.close()
                if i >= p["page_warmup"]:
                    loads.append({**timing, "live": live})
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    fcp = h.latency([x["fcp"] for x in loads])
    return {"loads": len(loads), "warmup": p["page_warmup"], "fcp_ms": fcp, "fp_ms": h.latency([x["fp"] for x in loads]),
            "response_end_ms": h.latency([x["response_end"] for x in loads]), "live_ms": h.latency([x["live"] for x in loads]),
            "bytes": loads[-1]["bytes"] if loads else None, "met": fcp["max"] <= TARGET_FIRST_PAINT_MS}


# ---- the report ---------------------------------------------------------------------------------


def summary_rows(res: dict) -> list[list[str]]:
    rows = []
    sc = res.get("scrape")
    if sc:
        lat, raw = sc["latency_ms"], sc["raw_latency_ms"]
        rows.append([f"GET /metrics, {len(SERVICES)} services x {MODELS_PER_SERVICE} models, every series present "
                     f"({sc['lines']:,} lines), p50 / p99, hand-written HTTP on the Unix socket", f"{raw['p50']:.2f} / {raw['p99']:.2f} ms",
                     f"p99 <= {TARGET_SCRAPE_P99_MS:g} ms", r.yes(sc["met"])])
        rows.append(["↳ the same scrapes with httpx (its own parsing of the reply included)", f"{lat['p50']:.2f} / {lat['p99']:.2f} ms", "", ""])
    sd = res.get("scraped")
    if sd:
        w, wo = sd["with"], sd["without"]
        rows.append(["/health p99 while scraped every second ÷ without", f"{sd['health_p99_ratio']:.3f} ({w['health']['p99']:.2f} vs "
                     f"{wo['health']['p99']:.2f} ms; rounds without: {wo['health_p99_rounds']['min']:.2f}-"
                     f"{wo['health_p99_rounds']['max']:.2f} ms)", "within the rounds without", r.yes(sd["health_met"])])
        rows.append([f"decode tok/s while scraped every second ÷ without [{sd['model']}]",
                     f"{sd['decode_ratio']:.3f} ({w['tok_s']['median']:.0f} vs {wo['tok_s']['median']:.0f} tok/s)",
                     f">= {sd['decode_noise_low']:.3f} (the slowest round without ÷ their median)", r.yes(sd["decode_met"])])
    pg = res.get("page")
    if pg:
        rows.append(["debug page first contentful paint over loopback, p50 / max", f"{pg['fcp_ms']['p50']:.0f} / {pg['fcp_ms']['max']:.0f} ms",
                     f"<= {TARGET_FIRST_PAINT_MS:g} ms", r.yes(pg["met"])])
    return rows


def blocks(res: dict) -> list:
    out: list[Any] = [r.run_line(res, "bench/run.py --only ops"), r.Table(["measurement", "this run", "target", "met"], summary_rows(res), "l")]
    sc = res.get("scrape")
    if sc:
        lat, ref = sc["latency_ms"], sc["generate_latest_ms"]
        out.append(r.bullets([
            f"**Scrape**: {sc['scrapes']} scrapes one after another over the Unix socket (20 uncounted first), after "
            f"{sc['requests_sent']} requests made every series: {sc['series_pairs']} (service, model) pairs, {sc['samples']:,} samples, "
            f"{sc['bytes'] / 1024:.0f} KiB. Interleaved with as many through a hand-written HTTP/1.1 client on its own "
            f"connection (the daemon's answer, no client library's cost): p50 {num(sc['raw_latency_ms']['p50'])}, p99 "
            f"{num(sc['raw_latency_ms']['p99'])}, max {num(sc['raw_latency_ms']['max'])} ms; httpx: p50 {num(lat['p50'])}, p99 "
            f"{num(lat['p99'])}, max {num(lat['max'])} ms.",
            f"prometheus_client's `generate_latest` on a registry of the same {sc['series_pairs']} pairs' request metrics alone "
            f"({ref['lines']:,} lines), in process: p50 {num(ref['p50'], 1)} ms, max {num(ref['max'], 1)} ms; why msting writes "
            "its own series' text (built once per series, kept until the series changes).",
        ]))
    sd = res.get("scraped")
    if sd:
        rows = [[x["round"], "yes" if x["scraped"] else "no", num(x["tok_s"], 1), x["requests"], x["health"]["n"], num(x["health"]["p50"]),
                 num(x["health"]["p99"]), num(x["health"]["max"]), len(x["scrape_ms"])] for x in sd["rounds"]]
        out += [f"**Serving while scraped** ({sd['model']}, back-to-back /generate of {res['params']['decode_tokens']} tokens on the "
                f"Unix socket, /health sampled from another process; rounds of {res['params']['round_sec']} s in ABBA order; the "
                f"scrapes during the run: p50 {num(sd['scrape_ms']['p50'])}, p99 {num(sd['scrape_ms']['p99'])} ms):",
                r.Table(["round", "scraped", "decode tok/s", "requests", "/health n", "p50 ms", "p99 ms", "max ms", "scrapes"], rows, "r")]
    pg = res.get("page")
    if pg:
        out.append(r.bullets([
            f"**Debug page** ({pg['loads']} fresh pages after {pg['warmup']} uncounted, headless Chromium over 127.0.0.1, "
            f"{pg['bytes']} bytes): first contentful paint p50 {num(pg['fcp_ms']['p50'], 0)}, max {num(pg['fcp_ms']['max'], 0)} ms; "
            f"response end p50 {num(pg['response_end_ms']['p50'], 1)} ms; the first live state on the page (\"ready\", from the "
            f"feed) p50 {num(pg['live_ms']['p50'], 0)}, max {num(pg['live_ms']['max'], 0)} ms."]))
    notes = [] if res.get("stories_present", True) else [f"{h.STORIES} was not found: the serving rounds used msting-tiny."]
    return out + [r.notes(notes + r.common_notes(res))]


def main(argv: list[str]) -> int:
    """`bench/run.py --only ops ARGS`, whose page writing is left to this section's own block
    (run.py would rewrite the page's summary too)."""
    return r.run_own_section(KEY, TITLE, blocks, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
