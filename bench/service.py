#!/usr/bin/env python3
"""The always-ready service: install and cold start to ready, GET /health idle, under load
and while a model re-loads, and kill -9 of the worker until it serves again, on msting-tiny
and stories260K (docs/benchmarks.md explains the method). ``bench/service.py`` is
``bench/run.py --only service``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from typing import Any

import harness as h
import httpx
import report as r

KEY = "service"
TITLE = "## Always-ready service: install, /health, recovery after a crash"
INSTALL_TARGET_S = 10.0
HEALTH_TARGET_MS = 5.0  # "a few ms": held to p99 <= 5 ms
RECOVERY_SLACK_MS = 1500.0  # recovery must be under load_ms + 1.5 s
# Recovery and /health: the shipped restart policy, except that the backoff resets after 1 s
# READY instead of 30 s, and a crash budget that a dozen deliberate kills never exhaust.
RECOVERY_CONFIG: dict = {"llm_service": {"restart": {"stable_after_sec": 1, "max_crashes": 1000}}}
RECOVERY_GAP_S = 1.5  # READY for this long before the next kill, so the backoff has reset
# /health while loading: restart as fast as possible, so the daemon spends its time re-loading.
CHURN_CONFIG: dict = {"llm_service": {"restart": {"backoff_initial_sec": 0.05, "backoff_max_sec": 0.2, "jitter": 0.0,
                                                  "stable_after_sec": 1, "max_crashes": 1000, "crash_window_sec": 1}}}
HEALTH_KEYS = ("health_idle", "health_idle_raw_socket", "health_under_load", "health_under_load_raw_socket", "health_under_load_httpx_reference")
LOAD = {"prompt": "Once upon a time", "max_tokens": 512, "temperature": 0.8}
PROFILES = {
    "quick": {"install_runs": 2, "health_rounds": 1, "idle_sec": 1.0, "raw_sec": 0.5, "load_sec": 2.0, "churn_kills": 3,
              "recovery_runs": 2},
    "full": {"install_runs": 9, "health_rounds": 6, "idle_sec": 2.5, "raw_sec": 1.0, "load_sec": 5.0, "churn_kills": 20,
             "recovery_runs": 10},
}


def parts(p: dict, res: dict) -> list:
    models: list[tuple[str, str | None]] = [("builtin", None)]
    if h.STORIES.exists():
        res["stories_sha256_ok"] = hashlib.sha256(h.STORIES.read_bytes()).hexdigest() == h.STORIES_SHA256
        models.append(("stories260K", str(h.STORIES)))
    else:
        res["stories_missing"] = True
    return [("install", lambda: bench_install(p)), ("service", lambda: bench_service(p, models)),
            ("health_churn", lambda: bench_health_churn(p))]


def bench_install(p: dict) -> dict:
    """`msting llm install --no-deps` on a fresh home, then `msting llm start` after a stop."""
    runs = []
    for i in range(p["install_runs"]):
        dh = h.home(f"install-{i}")
        try:
            report, install_s = dh.cli_json("llm", "install", "--no-deps", "--json", timeout=180)
            if not report.get("ok"):
                raise h.BenchError(f"install reported not ok: {report}")
            _, stop_s = dh.cli_json("llm", "stop", "--json", timeout=60)
            started = h.start(dh)
            with dh.client() as c:
                load_ms = h.status(c)["models"][0]["load_ms"]
            runs.append({"install_sec": install_s, "install_load_ms": report.get("load_ms"), "stop_sec": stop_s,
                         "start_sec": started["wall_sec"], "start_reported_sec": started.get("startup_sec"), "start_load_ms": load_ms})
            print(f"  install {i + 1}/{p['install_runs']}: {install_s:.2f} s, start {started['wall_sec']:.2f} s", flush=True)
        finally:
            dh.cleanup(h.KEEP)
    digits = {"install_sec": 3, "install_load_ms": 2, "start_sec": 3, "start_load_ms": 2, "stop_sec": 3}
    return {"runs": runs, **{k: h.spread([run[k] for run in runs], d) for k, d in digits.items()}}


def summarize_health(samples: list[tuple[float, str, float]]) -> dict:
    lat = h.latency([s[0] for s in samples])
    lat["readiness_counts"] = {st: sum(1 for s in samples if s[1] == st) for st in sorted({s[1] for s in samples})}
    return lat


def health_under_load(dh: h.DaemonHome, sampler: h.HealthSampler, p: dict) -> tuple[list, dict, list, list]:
    """/health with httpx for load_sec, then raw_sec each of hand-written HTTP on a raw socket
    (the daemon's own share) and of httpx against the do-nothing server (the client's floor),
    while 2 threads keep the model generating."""
    def send(c: httpx.Client) -> int | None:
        try:
            resp = c.post("/generate", json=LOAD)
            return resp.json()["usage"]["completion_tokens"] if resp.status_code == 200 else None
        except httpx.HTTPError:
            return None

    load = h.Load.of(dh, 2, send, p["load_sec"] + 2 * p["raw_sec"] + 30, max_requests=1000).start()
    try:
        with dh.client() as c:  # wait until the worker is actually generating
            dh.wait_for(lambda: h.status(c)["models"][0]["workers"][0]["state"] == "BUSY", 5, 0.01, "the worker to be BUSY")
        t0 = time.perf_counter()
        samples = sampler.run(p["load_sec"])
        elapsed = time.perf_counter() - t0
        raw, floor = sampler.run(p["raw_sec"], "raw"), sampler.run(p["raw_sec"], "httpx_reference")
    finally:
        done = load.stop(120)
    ok = [n for n in done if n is not None]
    return samples, {"requests": len(ok), "tokens": sum(ok), "errors": len(done) - len(ok), "sample_sec": elapsed}, raw, floor


def recovery_run(dh: h.DaemonHome, c: httpx.Client, gen: httpx.Client) -> dict:
    """kill -9 of the ready worker -> the first 200 of a 1-token /generate; the new worker's
    pid and READY seen by polling /v1/status every ~5 ms."""
    old_pid = dh.wait_for(lambda: h.ready_worker(c), 30, 0.01, "a READY worker")["pid"]
    seen: dict[str, Any] = {}
    stop = threading.Event()

    def monitor() -> None:
        with dh.client(timeout=5) as mc:
            while not stop.is_set():
                try:
                    model = h.status(mc)["models"][0]
                except httpx.HTTPError:
                    time.sleep(0.01)
                    continue
                now, w = time.perf_counter(), model["workers"][0]
                if w["state"] == "BACKOFF" and w.get("backoff_sec"):
                    seen.setdefault("backoff_sec", w["backoff_sec"])
                if w["pid"] and w["pid"] != old_pid:
                    seen.setdefault("pid_at", now)
                    if model["state"] == "ready" and w["verified"]:
                        seen.update(ready_at=now, load_ms=model["load_ms"])
                        return
                time.sleep(0.005)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    time.sleep(0.02)  # let the monitor take its first look
    t0 = time.perf_counter()
    os.kill(old_pid, signal.SIGKILL)
    ok_at, attempts, codes = None, 0, []
    while ok_at is None and time.perf_counter() < t0 + 30:
        attempts += 1
        try:
            resp = gen.post("/generate", json={"prompt": "Hi", "max_tokens": 1}, timeout=10)
            codes.append(resp.status_code)
            ok_at = time.perf_counter() if resp.status_code == 200 else None
        except httpx.HTTPError as exc:
            codes.append(type(exc).__name__)
        if ok_at is None:
            time.sleep(0.01)
    mon.join(15)
    stop.set()
    if ok_at is None:
        raise h.BenchError(f"[{dh.label}] no 200 from /generate within 30 s of the kill (answers: {codes})\n{dh.log_tail()}")
    ms = {k: (t - t0) * 1000.0 if t is not None else None for k, t in (("recovery_ms", ok_at), ("new_pid_ms", seen.get("pid_at")),
                                                                       ("ready_ms", seen.get("ready_at")))}
    run = {**ms, "backoff_sec": seen.get("backoff_sec"), "generate_attempts": attempts,
           "load_ms": seen.get("load_ms") or h.status(c)["models"][0]["load_ms"]}
    run["target_ms"] = (run["load_ms"] or 0.0) + RECOVERY_SLACK_MS
    run["met"] = run["recovery_ms"] < run["target_ms"]
    return run


def bench_service(p: dict, models: list[tuple[str, str | None]]) -> dict:
    """/health idle and under load, then the recovery runs: models alternating, interleaved."""
    daemons = []
    try:
        for key, model in models:
            dh = h.home(key, RECOVERY_CONFIG if model is None else h.merge(RECOVERY_CONFIG, {"llm": {"model": model}}))
            started = h.start(dh)
            c, gen = dh.client(), dh.client(timeout=10)
            daemons.append({"key": key, "dh": dh, "c": c, "gen": gen, "sampler": h.HealthSampler(dh), "recovery": [], "loads": [],
                            **{k: [] for k in HEALTH_KEYS},
                            "info": h.model_info(c, ("name", "source", "path", "load_ms", "n_threads", "n_ctx", "backend"),
                                                 ("arch", "n_params", "n_vocab", "size_bytes"), start_sec=round(started["wall_sec"], 3))})
        for rnd in range(p["health_rounds"]):
            for d in daemons:
                d["health_idle"] += d["sampler"].run(p["idle_sec"])
                d["health_idle_raw_socket"] += d["sampler"].run(p["raw_sec"], "raw")
                samples, load, raw, floor = health_under_load(d["dh"], d["sampler"], p)
                for k, v in zip(HEALTH_KEYS[2:], (samples, raw, floor)):
                    d[k] += v
                d["loads"].append(load)
                print(f"  /health round {rnd + 1}/{p['health_rounds']} {d['key']}: under load p99 "
                      f"{h.latency([s[0] for s in samples])['p99']} ms ({load['requests']} generates)", flush=True)
        for i in range(p["recovery_runs"]):
            for d in daemons:
                ready = d["dh"].wait_for(lambda d=d: h.ready_worker(d["c"]), 30, 0.01, "a READY worker")
                time.sleep(max(0.0, RECOVERY_GAP_S - (time.time() - ready["since"])))  # the backoff has reset
                d["recovery"].append(recovery_run(d["dh"], d["c"], d["gen"]))
                print(f"  recovery {i + 1}/{p['recovery_runs']} {d['key']}: {d['recovery'][-1]['recovery_ms']:.0f} ms", flush=True)
        out = {}
        for d in daemons:
            total = {k: sum(s[k] for s in d["loads"]) for k in ("requests", "tokens", "errors")}
            total["sample_sec"] = round(sum(s["sample_sec"] for s in d["loads"]), 2)
            runs = d["recovery"]
            rec = {k: h.spread([run[k] for run in runs], 2 if k == "load_ms" else 1)
                   for k in ("recovery_ms", "new_pid_ms", "ready_ms", "load_ms")}
            rec.update(backoff_sec=h.spread([run["backoff_sec"] for run in runs], 3), runs=len(runs),
                       runs_met=sum(1 for run in runs if run["met"]), target_ms=round((rec["load_ms"]["median"] or 0.0) + RECOVERY_SLACK_MS, 1))
            out[d["key"]] = {"model": d["info"], "config": d["dh"].config, "load": total, "recovery": rec,
                             **{k: summarize_health(d[k]) for k in HEALTH_KEYS},
                             "recovery_runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in run.items()} for run in runs]}
        return out
    finally:
        for d in daemons:
            for close in (d["sampler"].close, d["c"].close, d["gen"].close):
                with contextlib.suppress(httpx.HTTPError, OSError):
                    close()
            d["dh"].cleanup(h.KEEP)


def churn_samples(dh: h.DaemonHome, p: dict, kind: str) -> tuple[list, list[dict]]:
    """Kill the worker each time it is READY again, churn_kills times, while /health is
    sampled with `kind` throughout."""
    sampler = h.HealthSampler(dh)
    samples, cycles = [], []
    sampler.start(kind)
    try:
        with dh.client() as c:
            time.sleep(0.3)  # some ready samples first
            last_pid = None
            deadline = time.monotonic() + 30 + 5 * p["churn_kills"]
            while len(cycles) < p["churn_kills"] and time.monotonic() < deadline:
                w = dh.wait_for(lambda pid=last_pid: h.ready_worker(c, pid), 20, 0.02, "a new READY worker")
                t0 = time.perf_counter()
                os.kill(w["pid"], signal.SIGKILL)
                last_pid = w["pid"]
                nxt = dh.wait_for(lambda pid=last_pid: h.ready_worker(c, pid), 20, 0.02, "a new READY worker")
                cycles.append({"kill_to_ready_ms": (time.perf_counter() - t0) * 1000.0, "load_ms": nxt["load_ms"]})
            time.sleep(0.3)  # and some after
    finally:
        try:
            samples = sampler.stop()
        finally:
            sampler.close()
    return samples, cycles


def bench_health_churn(p: dict) -> dict:
    dh = h.home("churn", CHURN_CONFIG)
    try:
        h.start(dh)
        samples, cycles = churn_samples(dh, p, "httpx")
        raw, raw_cycles = churn_samples(dh, p, "raw")  # the daemon's share, same churn
        floor, floor_cycles = churn_samples(dh, p, "httpx_reference")  # httpx's floor, same churn
        cycles += raw_cycles + floor_cycles
        return {"config": CHURN_CONFIG, "kills": len(cycles), "kill_to_ready_ms": h.spread([c["kill_to_ready_ms"] for c in cycles]),
                "load_ms": h.spread([c["load_ms"] for c in cycles], 2), "all": summarize_health(samples),
                "not_ready": summarize_health([s for s in samples if s[1] != "ready"]),
                "not_ready_raw_socket": summarize_health([s for s in raw if s[1] != "ready"]),
                # the reference server always answers "ready": all its samples over the same churn
                "httpx_reference_all": summarize_health(floor),
                "by_readiness": {st: h.latency([s[0] for s in samples if s[1] == st]) for st in sorted({s[1] for s in samples})}}
    finally:
        dh.cleanup(h.KEEP)


# ---- report -------------------------------------------------------------------------------


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.2f} s" if unit == "s" else (f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms")


def verdict(ok_all: bool, ok_median: bool) -> str:
    return "yes" if ok_all else ("median only" if ok_median else "**NO**")


def health_target(x: dict) -> list[str]:
    le = [x.get(k) is not None and x[k] <= HEALTH_TARGET_MS for k in ("p99", "p50")]
    return [f"p99 <= {HEALTH_TARGET_MS:g} ms", verdict(*le)]


def rows(res: dict) -> list[list[str]]:
    out: list[list[str]] = []

    def spread_row(metric: str, s: dict, unit: str = "ms", target: tuple | list = ("", "")) -> None:
        out.append([metric, str(s["n"]), fmt(s["median"], unit), fmt(s["min"], unit), fmt(s["max"], unit), *target])

    def latency_row(metric: str, x: dict, target: tuple | list = ("", "")) -> None:
        out.append([metric, str(x["n"]), f"p50 {fmt(x['p50'], 'ms')}", f"p99 {fmt(x['p99'], 'ms')}", f"max {fmt(x['max'], 'ms')}", *target])

    inst = res.get("install")
    if inst:
        s = inst["install_sec"]
        ok = [v is not None and v < INSTALL_TARGET_S for v in (s["max"], s["median"])]
        spread_row("install to ready (`msting llm install --no-deps`)", s, "s", [f"< {INSTALL_TARGET_S:g} s", verdict(*ok)])
        spread_row("↳ load_ms reported by install", inst["install_load_ms"])
        spread_row("cold start to ready (`msting llm start`)", inst["start_sec"], "s")
        spread_row("↳ load_ms reported by status", inst["start_load_ms"])
    for svc in (res.get("service") or {}).values():
        name = svc["model"]["name"]
        latency_row(f"/health idle [{name}]", svc["health_idle"], health_target(svc["health_idle"]))
        latency_row("↳ idle, hand-written HTTP on a raw socket (the daemon's share)", svc["health_idle_raw_socket"])
        latency_row(f"/health under load (2 x /generate {LOAD['max_tokens']} tokens) [{name}]", svc["health_under_load"],
                    health_target(svc["health_under_load"]))
        latency_row("↳ under load, hand-written HTTP on a raw socket (the daemon's share)", svc["health_under_load_raw_socket"])
        latency_row("↳ under load, httpx against a do-nothing server (the client's floor)", svc["health_under_load_httpx_reference"])
        rec = svc["recovery"]
        spread_row(f"recovery kill -9 -> first 200 [{name}]", rec["recovery_ms"], "ms",
                   [f"< load_ms + {RECOVERY_SLACK_MS:g} (~{rec['target_ms']:.0f} ms)",
                    "yes" if rec["runs_met"] == rec["runs"] else f"{rec['runs_met']}/{rec['runs']} runs"])
        spread_row("↳ kill -> new worker pid", rec["new_pid_ms"])
        spread_row("↳ kill -> worker READY (verified)", rec["ready_ms"])
        spread_row("↳ backoff chosen by the daemon", {k: (v * 1000 if k != "n" and v is not None else v)
                                                      for k, v in rec["backoff_sec"].items() if k != "values"})
        spread_row("↳ load_ms of the new worker", rec["load_ms"])
    churn = res.get("health_churn")
    if churn:
        latency_row("/health while re-loading, all samples [msting-tiny]", churn["all"], health_target(churn["all"]))
        latency_row("/health while re-loading, non-ready samples [msting-tiny]", churn["not_ready"], health_target(churn["not_ready"]))
        latency_row("↳ non-ready samples, hand-written HTTP on a raw socket (the daemon's share)", churn["not_ready_raw_socket"])
        latency_row("↳ all samples, httpx against a do-nothing server (the client's floor)", churn["httpx_reference_all"])
        meaning = {"ready": "READY", "degraded": "BACKOFF", "loading": "spawn, import, load, verify"}
        for st, x in churn["by_readiness"].items():
            latency_row(f"↳ readiness {st} ({meaning.get(st, '?')})", x)
        spread_row("↳ kill -> READY again (fast-restart config)", churn["kill_to_ready_ms"])
    return out


def notes(res: dict) -> list[str]:
    out = []
    for svc in (res.get("service") or {}).values():
        ld = svc["load"]
        if ld["requests"]:
            out.append(f"{svc['model']['name']} under load: {ld['requests']} generates, {ld['tokens']} tokens in {ld['sample_sec']:.0f} s "
                       f"of sampling (~{ld['tokens'] / max(ld['sample_sec'], 1e-9):.0f} tokens/s across the load threads), {ld['errors']} errors.")
    for svc in (res.get("service") or {}).values():
        name, x, raw, rec = svc["model"]["name"], svc["health_idle"], svc["health_idle_raw_socket"], svc["recovery"]
        if x.get("p50") is not None and raw.get("p50") is not None:
            out.append(f"{name} /health idle: a hand-written request on a raw socket takes p50 {raw['p50']:.2f} ms (p99 {raw['p99']:.2f} ms), "
                       f"so about {x['p50'] - raw['p50']:.1f} ms of the httpx p50 ({x['p50']:.2f} ms) is the Python client's own work.")
        med = {k: rec[k]["median"] for k in ("recovery_ms", "new_pid_ms", "ready_ms", "load_ms", "backoff_sec")}
        if None not in (med["recovery_ms"], med["new_pid_ms"], med["ready_ms"], med["backoff_sec"]):
            out.append(f"{name} recovery (medians): {med['recovery_ms']:.0f} ms ≈ kill → new worker pid {med['new_pid_ms']:.0f} ms (of which "
                       f"the restart backoff is {med['backoff_sec'] * 1000:.0f} ms) + new pid → READY {med['ready_ms'] - med['new_pid_ms']:.0f} ms "
                       f"(Python start and `import llama_cpp`, which load_ms does not count, + load {med['load_ms']:.0f} ms + the "
                       f"1-token verify) + the first request; {rec['runs_met']}/{rec['runs']} runs under load_ms + 1.5 s.")
    churn = res.get("health_churn")
    if churn:
        out.append(f"Re-load churn: {churn['kills']} kills; kill → READY median {churn['kill_to_ready_ms']['median']} ms; "
                   f"/health samples by reported readiness: {churn['all'].get('readiness_counts', {})}.")
    if res.get("stories_missing"):
        out.append(f"{h.STORIES} was not found: only the built-in model was measured.")
    if res.get("stories_sha256_ok") is False:
        out.append("stories260K.gguf did not match its published sha256.")
    return out


def blocks(res: dict) -> list:
    p = res["params"]
    return [r.run_line(res, "bench/service.py"), r.bullets([
        "**Models:** " + "; ".join(r.describe(svc["model"]) for svc in (res.get("service") or {}).values()) + ".",
        f"**Repetitions:** install/start {p['install_runs']}x; /health {p['health_rounds']} rounds per model of {p['idle_sec']:g} s idle "
        f"(httpx) + {p['raw_sec']:g} s idle (raw socket) then {p['load_sec']:g} s under load (httpx) + {p['raw_sec']:g} s under load "
        f"(raw socket) + {p['raw_sec']:g} s under load (httpx against the do-nothing server), models alternating; one /health every "
        f"~{h.HEALTH_INTERVAL_S * 1000:g} ms plus the request itself; re-load churn {p['churn_kills']} kills per client kind; "
        f"recovery {p['recovery_runs']}x per model."]),
        r.Table(["measurement", "n", "median / p50", "min / p99", "max", "target", "met"], rows(res), "lrrrrl"),
        r.notes(notes(res) + r.common_notes(res))]


if __name__ == "__main__":
    import sys

    import run

    sys.exit(run.main(["--only", KEY, *sys.argv[1:]]))
