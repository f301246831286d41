#!/usr/bin/env python3
"""Profile switch under load: one daemon, profiles A (msting-tiny) and B (stories260K),
switched A→B→A… while 3 clients send /generate, then the same switches idle
(docs/benchmarks.md explains the method and the target). ``bench/switch.py`` is
``bench/run.py --only switch``."""

from __future__ import annotations

import datetime as _dt
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness as h
import httpx
import report as r

KEY = "switch"
TITLE = "## Profile switch under load"
SLACK_MS = 500.0  # the target's "+ 0.5 s"
LOAD = {"prompt": "Once upon a time", "max_tokens": 24}
CLIENTS = 3
PROFILES = {
    "quick": {"switches": 2, "idle_switches": 1, "gap_sec": 0.5, "warmup_sec": 0.5, "ref_runs": 1},
    "full": {"switches": 10, "idle_switches": 10, "gap_sec": 1.0, "warmup_sec": 1.5, "ref_runs": 5},
}
PROFILE_A = {"description": "bench: built-in tiny", "default_model": "a", "models": {"a": {"source": "builtin:tiny"}}}
# the daemon log's lines for a worker's start ("spawned, pid N" or "took the warm spare, pid N")
# and its model load ("ready: model loaded in X ms", or "loaded the model in X ms" in later daemons)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ msting\.daemon\.[\w.]+: worker (\S+) "
                      r"(?:(?:spawned|took the warm spare), pid (\d+)|(?:ready: model loaded|loaded the model) in ([\d.]+) ms)")


def profile_b() -> dict:
    model = {"source": str(h.STORIES)} if h.STORIES.exists() else {"source": "builtin:tiny", "n_ctx": 1024}
    return {"description": "bench: stories260K", "default_model": "b", "models": {"b": model}}


def run_switch(c: httpx.Client, name: str, timeout: float = 90) -> dict:
    resp = c.post("/v1/profiles/switch", json={"profile": name})
    if resp.status_code != 202:
        raise h.BenchError(f"POST /v1/profiles/switch {name}: {resp.status_code} {resp.text[:500]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{resp.json()['id']}").json()
        if job["state"] == "succeeded":
            return job
        if job["state"] != "running":
            raise h.BenchError(f"switch to {name} {job['state']}: {job.get('error')}")
        time.sleep(0.02)
    raise h.BenchError(f"switch to {name} did not finish within {timeout:g}s")


def parse_log(path: Path) -> list[dict]:
    """The worker spawn/ready lines of the daemon log (and its rotations), with epoch times."""
    out = []
    for f in sorted(path.parent.glob(path.name + "*")):
        for line in f.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m:
                ts = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append({"ts": ts, "worker": m.group(2), "kind": "spawned", "pid": int(m.group(3))} if m.group(3) else
                           {"ts": ts, "worker": m.group(2), "kind": "ready", "load_ms": float(m.group(4))})
    return sorted(out, key=lambda e: e["ts"])


def read_events(dh: h.DaemonHome) -> list[dict]:
    """The daemon's event store, read-only."""
    dbs = list(dh.home.rglob("state.db"))
    if not dbs:
        return []
    db = sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT ts, kind, model, worker, detail FROM events ORDER BY id").fetchall()
    finally:
        db.close()
    return [dict(zip(("ts", "kind", "model", "worker", "detail"), row)) for row in rows]


def load_split(sw: dict, log: list[dict], events: list[dict]) -> dict:
    """Where the load step of one switch went, for its new worker (ms)."""
    step, pid = sw["steps"]["load"], sw["new_pid"]
    spawn = next((e for e in log if e["kind"] == "spawned" and e["pid"] == pid and e["ts"] >= step["started"] - 0.002), None)
    if spawn is None:
        return {}
    ready = next((e for e in log if e["kind"] == "ready" and e["worker"] == spawn["worker"] and e["ts"] >= spawn["ts"]), None)
    verified = next((e for e in events if e["kind"] == "worker_ready" and (e["detail"] or "").startswith(f"pid {pid},")), None)
    out: dict[str, float | None] = {"spawn_ms": (spawn["ts"] - step["started"]) * 1000.0}
    if ready:
        out.update(start_import_ms=(ready["ts"] - spawn["ts"]) * 1000.0 - ready["load_ms"], load_ms=ready["load_ms"])
        if verified:
            out.update(worker_verify_ms=(verified["ts"] - ready["ts"]) * 1000.0, wakeup_ms=(step["finished"] - verified["ts"]) * 1000.0)
    return out


def measure_series(c: httpx.Client, n: int, gap: float, start_from: str, loaded: bool) -> list[dict]:
    switches, current = [], start_from
    for i in range(n):
        target = "B" if current == "A" else "A"
        new_model = target.lower()
        old_pids = [w["pid"] for m in h.status(c)["models"] for w in m["workers"] if w["pid"]]
        job = run_switch(c, target)
        after = h.status(c)
        model = next(m for m in after["models"] if m["name"] == new_model)
        steps = {s["name"]: {k: s.get(k) for k in ("duration_ms", "started", "finished", "detail")} for s in job["steps"]}
        sw = {"index": i + 1, "from": current, "to": target, "model": new_model, "job_id": job["id"], "created": job["created"],
              "finished": job["finished"], "duration_ms": job["duration_ms"], "mode": (job.get("result") or {}).get("mode"), "steps": steps,
              "load_ms": model["load_ms"], "old_pids": old_pids, "new_pid": next((w["pid"] for w in model["workers"] if w["pid"]), None),
              "to_routing_ms": (steps["switch"]["finished"] - job["created"]) * 1000.0}
        verify = steps["verify"]["duration_ms"] or 0.0
        sw["budget_ms"] = (sw["load_ms"] or 0.0) + verify + SLACK_MS
        # the other reading of "load time": the whole load step (spawn or spare, Python start,
        # import llama_cpp, load_ms, the worker's own 1-token verify)
        sw["budget_whole_load_ms"] = (steps["load"]["duration_ms"] or 0.0) + verify + SLACK_MS
        sw.update(met=sw["duration_ms"] <= sw["budget_ms"], met_whole_load=sw["duration_ms"] <= sw["budget_whole_load_ms"],
                  routing_met=sw["to_routing_ms"] <= sw["budget_ms"])
        switches.append(sw)
        current = target
        time.sleep(gap)  # the load runs on alone: requests sent after `finished`
        sw["old_workers_gone"] = not any(h.alive(p) for p in old_pids)
        print(f"  switch {i + 1}/{n} {sw['from']}->{sw['to']}{'' if loaded else ' (idle)'}: {sw['duration_ms']:.0f} ms "
              f"(budget {sw['budget_ms']:.0f} ms)", flush=True)
    return switches


def attach_requests(switches: list[dict], results: list[tuple], end: float) -> None:
    """Per switch: the requests sent from its creation to the next switch's creation."""
    for k, sw in enumerate(switches):
        hi = switches[k + 1]["created"] if k + 1 < len(switches) else end
        window = [x for x in results if sw["created"] <= x[0] < hi]
        after = [x for x in window if x[0] > sw["finished"]]
        during = [x for x in window if x[0] <= sw["finished"]]
        sw["requests"] = len(window)
        sw["failed"] = sum(1 for x in window if x[2] != 200)
        sw["during"] = {"n": len(during), "latency_ms": h.latency([(x[1] - x[0]) * 1000.0 for x in during if x[2] == 200])}
        sw["after"] = {"n": len(after)}
        sw["after_all_new"] = bool(after) and all(x[2] == 200 and x[3] == sw["model"] for x in after)
        # drain split: the old model's last answer (from the clients), then stopping its worker
        old_done = [x[1] for x in window if x[3] == ("a" if sw["model"] == "b" else "b")]
        drain = sw["steps"]["drain"]
        if drain["started"] is not None and drain["finished"] is not None:
            wait = min(max((max(old_done) if old_done else drain["started"]) - drain["started"], 0.0), drain["finished"] - drain["started"])
            sw["drain_split"] = {"wait_old_requests_ms": wait * 1000.0, "stop_old_worker_ms": (drain["finished"] - drain["started"] - wait) * 1000.0}


def summarize(switches: list[dict]) -> dict:
    def col(fn: Any, digits: int = 1) -> dict:
        vals = []
        for sw in switches:
            try:
                vals.append(fn(sw))
            except (KeyError, TypeError):
                pass
        return h.spread(vals, digits)

    out = {"n": len(switches), "duration_ms": col(lambda s: s["duration_ms"]), "budget_ms": col(lambda s: s["budget_ms"]),
           "over_budget_ms": col(lambda s: s["duration_ms"] - s["budget_ms"]), "to_routing_ms": col(lambda s: s["to_routing_ms"]),
           "load_ms": col(lambda s: s["load_ms"], 2), "met": sum(1 for s in switches if s["met"]),
           "budget_whole_load_ms": col(lambda s: s["budget_whole_load_ms"]), "met_whole_load": sum(1 for s in switches if s["met_whole_load"]),
           "routing_met": sum(1 for s in switches if s["routing_met"]),
           "steps": {k: col(lambda s, k=k: s["steps"][k]["duration_ms"]) for k in ("validate", "preflight", "load", "verify", "switch", "drain")},
           "load_split": {k: col(lambda s, k=k: s["load_split"][k]) for k in ("spawn_ms", "start_import_ms", "load_ms", "worker_verify_ms", "wakeup_ms")},
           "drain_split": {k: col(lambda s, k=k: s["drain_split"][k]) for k in ("wait_old_requests_ms", "stop_old_worker_ms")},
           "modes": sorted({str(s.get("mode")) for s in switches}), "old_workers_gone": all(s.get("old_workers_gone") for s in switches)}
    if switches and "requests" in switches[0]:
        out.update(requests=sum(s["requests"] for s in switches), failed=sum(s["failed"] for s in switches),
                   after_all_new=sum(1 for s in switches if s["after_all_new"]), after_requests=sum(s["after"]["n"] for s in switches))
    return out


def cold_start_reference(runs: int) -> dict:
    """A bare worker interpreter's cold start, idle: the first round warms the page cache and is dropped."""
    py = sys.executable
    cmds = {"python_pass_ms": [py, "-c", "pass"], "import_worker_main_ms": [py, "-c", "import msting.worker.main"],
            "import_backend_ms": [py, "-c", "from msting.worker.engine import import_backend; import_backend()"]}
    out: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs + 1):
        for key, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            out[key].append((time.perf_counter() - t0) * 1000.0)
    return {k: h.spread(v[1:]) for k, v in out.items()}


def bench(p: dict, _: dict) -> dict:
    res: dict[str, Any] = {"cold_start": cold_start_reference(p["ref_runs"]), "profiles": {"A": PROFILE_A, "B": profile_b()}}
    dh = h.home("switch")
    h.write_profiles(dh, res["profiles"])

    def send(c: httpx.Client) -> tuple:
        sent = time.time()
        try:
            resp = c.post("/generate", json=LOAD)
            ok = resp.status_code == 200
            return sent, time.time(), resp.status_code, resp.json().get("model") if ok else None, None if ok else resp.text[:300]
        except httpx.HTTPError as exc:
            return sent, time.time(), -1, None, f"{type(exc).__name__}: {exc}"[:300]

    load = None
    try:
        h.start(dh)
        with dh.client(timeout=30) as c:
            for name, key in (("B", "model_b"), ("A", "model_a")):  # uncounted warm-up, describing each model
                run_switch(c, name)
                res[key] = h.model_info(c, ("name", "source", "path", "n_ctx", "n_threads", "backend", "load_ms"), ("arch", "n_params", "size_bytes"))
            load = h.Load.of(dh, CLIENTS, send, 600, max_requests=60000).start()
            time.sleep(p["warmup_sec"])
            loaded = measure_series(c, p["switches"], p["gap_sec"], "A", True)
            end = time.time()
            results = load.stop()
            load = None
            attach_requests(loaded, results, end)
            spans = [(sw["created"], sw["finished"]) for sw in loaded]
            steady = [(x[1] - x[0]) * 1000.0 for x in results  # outside every switch
                      if x[2] == 200 and x[0] > loaded[0]["created"] and not any(a - 0.05 <= x[0] <= b for a, b in spans)]
            res["load"] = {"requests": len(results), "failed": sum(1 for x in results if x[2] != 200), "steady_latency_ms": h.latency(steady)}
            idle = measure_series(c, p["idle_switches"], 0.3, h.status(c)["profile"], False)
        log, events = parse_log(dh.log_file), read_events(dh)
        for sw in loaded + idle:
            sw["load_split"] = load_split(sw, log, events)
            sw.setdefault("drain_split", {})
        res.update(loaded={"summary": summarize(loaded), "switches": loaded}, idle={"summary": summarize(idle), "switches": idle},
                   config=dh.config)
        return res
    finally:
        if load is not None:
            load.stop()
        dh.cleanup(h.KEEP)


# ---- report -------------------------------------------------------------------------------


def f0(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def med(d: dict | None) -> float:
    return (d or {}).get("median") or 0.0


def cells(s: dict) -> list[str]:
    if not s or not s.get("n"):
        return ["0", "-", "-", "-"]
    return [str(s["n"]), *(f"{s[k]:.1f} ms" for k in ("median", "min", "max"))]


def rows(res: dict) -> list[list[str]]:
    out: list[list[str]] = []
    sub = "&nbsp;&nbsp;↳"
    for key, label in (("loaded", f"under load ({CLIENTS} clients)"), ("idle", "idle (reference)")):
        if not res.get(key):
            continue
        s = res[key]["summary"]
        n, st, ls, ds = s["n"], s["steps"], s["load_split"], s["drain_split"]
        out += [[f"switch time, job created -> finished [{label}]", *cells(s["duration_ms"]), "<= load_ms + verify + 500 ms", f"{s['met']}/{n}"],
                ["↳ budget: load_ms + verify step + 500 ms", *cells(s["budget_ms"]), "", ""],
                ["↳ over budget (switch time - budget)", *cells(s["over_budget_ms"]), "", ""],
                ["↳ budget if load time = the whole load step (spawn, import, load, worker verify)", *cells(s["budget_whole_load_ms"]),
                 "(other reading)", f"{s['met_whole_load']}/{n}"],
                ["↳ job created -> routing on the new profile", *cells(s["to_routing_ms"]), "(same budget)", f"{s['routing_met']}/{n}"],
                ["↳ step validate + preflight", *cells(h.spread([a + b for a, b in zip(st["validate"]["values"], st["preflight"]["values"])])), "", ""],
                ["↳ step load", *cells(st["load"]), "", ""],
                [f"{sub} spawn (process start, off the loop)", *cells(ls["spawn_ms"]), "", ""],
                [f"{sub} Python start + imports incl. llama_cpp", *cells(ls["start_import_ms"]), "", ""],
                [f"{sub} load_ms (llama.cpp model load)", *cells(ls["load_ms"]), "", ""],
                [f"{sub} worker's own 1-token verify", *cells(ls["worker_verify_ms"]), "", ""],
                [f"{sub} verified -> load step ends", *cells(ls["wakeup_ms"]), "", ""],
                ["↳ step verify (2-token generate via the queue)", *cells(st["verify"]), "", ""],
                ["↳ step switch (routing swap)", *cells(st["switch"]), "", ""],
                ["↳ step drain", *cells(st["drain"]), "", ""]]
        if ds["wait_old_requests_ms"].get("n"):
            out += [[f"{sub} waiting for the old model's requests", *cells(ds["wait_old_requests_ms"]), "", ""],
                    [f"{sub} stopping the old worker", *cells(ds["stop_old_worker_ms"]), "", ""]]
        if "requests" in s:
            out += [["↳ requests during the series / failed", str(s["requests"]), str(s["failed"]), "", "", "0 failed", r.yes(s["failed"] == 0)],
                    ["↳ switches where every request sent after `finished` got the new model", str(n), f"{s['after_all_new']}/{n}",
                     f"({s['after_requests']} requests)", "", "all", r.yes(s["after_all_new"] == n)]]
    lat = (res.get("load") or {}).get("steady_latency_ms")
    if lat and lat.get("n"):
        out.append(["request latency outside switches (p50 / p99 / max)", str(lat["n"]), *(f"{lat[k]:.1f} ms" for k in ("p50", "p99", "max")), "", ""])
    during = [sw["during"]["latency_ms"] for sw in (res.get("loaded") or {}).get("switches", []) if sw.get("during")]
    if during:
        worst = max((d["max"] for d in during if d.get("max") is not None), default=None)
        out.append(["request latency, sent during a switch (max over switches)", str(sum(d["n"] for d in during)), "", "",
                    f"{worst:.1f} ms" if worst else "-", "", ""])
    cs = res.get("cold_start")
    if cs:
        out += [["reference (idle): `python -c pass`", *cells(cs["python_pass_ms"]), "", ""],
                ["reference (idle): `python -c 'import msting.worker.main'`", *cells(cs["import_worker_main_ms"]), "", ""],
                ["reference (idle): + `import_backend()` (import llama_cpp)", *cells(cs["import_backend_ms"]), "", ""]]
    return out


def switch_rows(switches: list[dict], loaded: bool) -> list[list[str]]:
    out = []
    for sw in switches:
        st, ls, after = sw["steps"], sw.get("load_split") or {}, sw.get("after")
        row = [sw["index"], f"{sw['from']}->{sw['to']}", f0(sw["duration_ms"]), f0(sw["budget_ms"]), "yes" if sw["met"] else "no",
               f0(st["load"]["duration_ms"]), f0(ls.get("start_import_ms")), "-" if sw.get("load_ms") is None else f"{sw['load_ms']:.1f}",
               f0(ls.get("worker_verify_ms")), f0(st["verify"]["duration_ms"]), f"{st['switch']['duration_ms']:.1f}", f0(st["drain"]["duration_ms"])]
        if loaded:
            row += [sw.get("requests", "-"), sw.get("failed", "-"), "-" if after is None else f"{'yes' if sw['after_all_new'] else 'NO'} ({after['n']})"]
        out.append(row)
    return out


def notes(res: dict) -> list[str]:
    out = []
    s, i = (res.get("loaded") or {}).get("summary"), (res.get("idle") or {}).get("summary")
    if s and s["n"]:
        ls, st = s["load_split"], s["steps"]
        out += [f"Under load the median switch takes {med(s['duration_ms']):.0f} ms against a median budget of {med(s['budget_ms']):.0f} ms "
                f"({s['met']}/{s['n']} switches within budget). The load step alone (median {med(st['load']):.0f} ms) is spawn "
                f"{med(ls['spawn_ms']):.0f} ms + Python start and imports {med(ls['start_import_ms']):.0f} ms + load_ms "
                f"{med(ls['load_ms']):.0f} ms + the worker's own verify {med(ls['worker_verify_ms']):.0f} ms; only load_ms is in the budget.",
                f"Drain (median {med(st['drain']):.0f} ms) is waiting for the old model's last request "
                f"({med(s['drain_split']['wait_old_requests_ms']):.0f} ms) then stopping its worker "
                f"({med(s['drain_split']['stop_old_worker_ms']):.0f} ms: shutdown frame, process exit, reap).",
                f"Switch modes seen: {', '.join(s['modes'])}; old workers gone after every switch: {'yes' if s['old_workers_gone'] else 'NO'}."]
    if i and i["n"]:
        out.append(f"Without load the median switch takes {med(i['duration_ms']):.0f} ms ({i['met']}/{i['n']} within budget; load step "
                   f"{med(i['steps']['load']):.0f} ms, of which Python start and imports {med(i['load_split']['start_import_ms']):.0f} ms).")
    if not h.STORIES.exists():
        out.append(f"{h.STORIES} was not found: profile B used builtin:tiny with n_ctx 1024.")
    return out


def analysis(res: dict) -> list[str]:
    """The verdict and where the time goes, from this run's medians."""
    s, i, cs = (res.get("loaded") or {}).get("summary"), (res.get("idle") or {}).get("summary"), res.get("cold_start") or {}
    if not s or not s["n"]:
        return []
    ls, st, ds = s["load_split"], s["steps"], s["drain_split"]
    clean = s["failed"] == 0 and s["after_all_new"] == s["n"]
    idle = f"; idle {i['met']}/{i['n']}, median {med(i['duration_ms']):.0f} ms" if i and i["n"] else ""
    return ["**Verdict.** " + (f"Target met: {s['met']}/{s['n']} switches under load within load_ms + verify + 0.5 s" if s["met"] == s["n"] else
                               f"Target not met: {s['met']}/{s['n']} switches under load within load_ms + verify + 0.5 s (median "
                               f"{med(s['duration_ms']):.0f} ms against a median budget of {med(s['budget_ms']):.0f} ms{idle})")
            + ("; the request side holds: 0 failed requests and every request sent after `finished` answered by the new profile's model."
               if clean else "; and the request side does NOT hold (see the table)."),
            f"**Where the time goes.** The switch machinery itself is cheap: validate + preflight + verify + the routing swap take "
            f"{sum(med(st[k]) for k in ('validate', 'preflight', 'verify', 'switch')):.0f} ms (medians). The load step "
            f"({med(st['load']):.0f} ms) is spawn (or taking the warm spare) {med(ls['spawn_ms']):.0f} ms, then Python start and imports "
            f"{med(ls['start_import_ms']):.0f} ms (idle reference: `python -c pass` {med(cs.get('python_pass_ms')):.0f} ms, "
            f"`import msting.worker.main` {med(cs.get('import_worker_main_ms')):.0f} ms, + `import llama_cpp` "
            f"{med(cs.get('import_backend_ms')):.0f} ms in all), load_ms {med(ls['load_ms']):.0f} ms and the worker's own 1-token verify "
            f"{med(ls['worker_verify_ms']):.0f} ms. `load_ms` leaves out the import, so the budget does not count it. Then the job only "
            f"finishes after drain ({med(st['drain']):.0f} ms: the old model's last requests {med(ds['wait_old_requests_ms']):.0f} ms, then "
            f"the old worker's shutdown and exit {med(ds['stop_old_worker_ms']):.0f} ms). Requests see the new profile from the routing "
            f"swap, {med(s['to_routing_ms']):.0f} ms after the job was created ({s['routing_met']}/{s['n']} within the budget).",
            f"**Reading the target.** If \"the new models' load time\" means what it takes msting to bring the model up (the whole load "
            f"step), {s['met_whole_load']}/{s['n']} switches under load are within it + verify + 0.5 s"
            + (f" ({i['met_whole_load']}/{i['n']} idle)." if i and i["n"] else ".")]


def blocks(res: dict) -> list:
    p = res["params"]
    stories = "<abs path>/stories260K.gguf" if h.STORIES.exists() else "builtin:tiny, n_ctx: 1024"
    switch_head = ["#", "switch", "job ms", "budget ms", "met", "load", "(start+import)", "(load_ms)", "(worker verify)", "verify", "switch",
                   "drain", "requests", "failed", "after `finished`: new model"]
    out = [r.run_line(res, "bench/switch.py"), r.bullets([
        f"**Profiles:** `A` = `{{default_model: a, models: {{a: {{source: builtin:tiny}}}}}}`: {r.describe(res.get('model_a'))}; "
        f"`B` = `{{default_model: b, models: {{b: {{source: {stories}}}}}}}`: {r.describe(res.get('model_b'))}.",
        f"**This run:** {p['switches']} switches under load with a {p['gap_sec']:g} s gap after each, the load starting {p['warmup_sec']:g} s "
        f"before the first; then {p['idle_switches']} switches with no load (0.3 s gap)."]),
        r.Table(["measurement", "n", "median", "min", "max", "target", "met"], rows(res), "lrrrrl")]
    for key, title in (("loaded", "Per switch, under load (ms):"), ("idle", "Per switch, idle (ms):")):
        sws = (res.get(key) or {}).get("switches")
        if sws:
            head = switch_head if key == "loaded" else switch_head[:12]
            out += [title, r.Table(head, switch_rows(sws, key == "loaded"), "llrrlr")]
    return out + [r.notes(notes(res) + r.common_notes(res)), *analysis(res)]


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", KEY, *sys.argv[1:]]))
