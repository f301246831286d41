#!/usr/bin/env python3
"""Profile switch speed under load, measured on a real daemon and real llama.cpp workers.

    .venv/bin/python bench/switch.py [--quick] [--json-out PATH] [--no-docs] [--keep-homes]

One daemon runs under a fresh, short temporary MSTING_HOME (``tempfile.mkdtemp(prefix="msb")``)
with a free TCP port (the ``Home`` helper of ``bench/service.py``). Two profiles are written
into ``$MSTING_HOME/config/profiles``:

- ``A``: ``{default_model: a, models: {a: {source: builtin:tiny}}}``
- ``B``: ``{default_model: b, models: {b: {source: <abs path of ../shared/models/stories260K.gguf>}}}``
  (``builtin:tiny`` with ``n_ctx: 1024`` when that file is missing)

After uncounted warm-up switches to B then A, the daemon switches A→B→A… N times (``POST /v1/profiles/switch``
then polling ``GET /v1/jobs/{id}``) while 3 client threads send back-to-back
``POST /generate {"prompt": "Once upon a time", "max_tokens": 24}`` over the Unix socket.
Between two switches the load runs on alone for a gap, so that requests sent after each
job's ``finished`` time can be checked. Per switch it records:

- the job's ``duration_ms`` (``created`` → ``finished``) and each step's ``duration_ms``;
- the new model's ``load_ms`` from ``GET /v1/status`` after the switch;
- the split of the load step, from the daemon log (INFO: "worker … spawned", "worker … ready:
  model loaded") and the ``worker_ready`` event in the daemon's SQLite store (read-only):
  spawn, Python start + imports (``import llama_cpp``), load_ms, the worker's own 1-token verify;
- the split of the drain step: waiting for the old model's last request (from the clients'
  answer times), then stopping the old worker;
- failed requests (must be 0), and whether every request sent after ``finished`` was
  answered by the new profile's default model (must be true).

Target (issue 4): a switch between two loaded-fast models completes in the new model's
load time + verify + 0.5 s at most (budget = load_ms + the verify step's ms + 500 ms per
switch), with zero failed requests.

References: the same N switches without load, and the cold start of a bare worker
interpreter (``python -c pass``, ``import msting.worker.main``, ``import_backend()``),
measured before the daemon starts.

The script always stops what it starts (``msting llm stop --force`` then SIGKILL for
anything still carrying the MSTING_HOME). Results go to stdout, ``bench/results/switch.json``
and the section "## Profile switch (issue 4)" of ``docs/benchmarks.md`` (replaced in place;
other sections are kept). This file must not import from ``tests/``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import httpx
import psutil
import harness as h  # bench/harness.py: Home, statistics, machine info
import yaml

ROOT = HERE.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "switch.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION_TITLE = "## Profile switch (issue 4)"
STORIES = h.STORIES

SLACK_MS = 500.0  # the issue's "+ 0.5 s"
PROMPT = "Once upon a time"
MAX_TOKENS = 24
CLIENTS = 3

PROFILES = {
    "quick": {"switches": 4, "idle_switches": 2, "gap_sec": 0.6, "warmup_sec": 1.0, "ref_runs": 2},
    "full": {"switches": 10, "idle_switches": 10, "gap_sec": 1.0, "warmup_sec": 1.5, "ref_runs": 5},
    "suite-quick": {"switches": 2, "idle_switches": 1, "gap_sec": 0.5, "warmup_sec": 0.5, "ref_runs": 1},
}

PROFILE_A = {"description": "bench: built-in tiny", "default_model": "a", "models": {"a": {"source": "builtin:tiny"}}}


def profile_b() -> dict:
    if STORIES.exists():
        model = {"source": str(STORIES)}
    else:
        model = {"source": "builtin:tiny", "n_ctx": 1024}
    return {"description": "bench: stories260K", "default_model": "b", "models": {"b": model}}


def write_profile(home: h.Home, name: str, body: dict) -> None:
    folder = home.path / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))


# ---------------------------------------------------------------------------------------
# load


class Load:
    """CLIENTS threads of back-to-back /generate over the Unix socket, each bounded."""

    def __init__(self, home: h.Home, max_requests: int = 20000, max_sec: float = 600):
        self.home = home
        self.stop_event = threading.Event()
        self.results: list[tuple[float, float, int, str | None, str | None]] = []  # sent, done, status, model, error
        self._lock = threading.Lock()
        self.deadline = time.monotonic() + max_sec
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._loop, name=f"load-{i}", daemon=True) for i in range(CLIENTS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        with self.home.client(timeout=60) as c:
            for _ in range(self.max_requests):  # bounded
                if self.stop_event.is_set() or time.monotonic() > self.deadline:
                    return
                sent = time.time()
                try:
                    r = c.post("/generate", json={"prompt": PROMPT, "max_tokens": MAX_TOKENS})
                    done = time.time()
                    if r.status_code == 200:
                        row = (sent, done, 200, r.json().get("model"), None)
                    else:
                        row = (sent, done, r.status_code, None, r.text[:300])
                except httpx.HTTPError as exc:
                    row = (sent, time.time(), -1, None, f"{type(exc).__name__}: {exc}"[:300])
                with self._lock:
                    self.results.append(row)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=90)
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            raise h.BenchError(f"load threads did not stop: {alive}")

    def snapshot(self) -> list[tuple]:
        with self._lock:
            return list(self.results)


# ---------------------------------------------------------------------------------------
# one switch


def run_switch(c: httpx.Client, name: str, timeout: float = 90) -> dict:
    r = c.post("/v1/profiles/switch", json={"profile": name})
    if r.status_code != 202:
        raise h.BenchError(f"POST /v1/profiles/switch {name}: {r.status_code} {r.text[:500]}")
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["state"] != "running":
            if job["state"] != "succeeded":
                raise h.BenchError(f"switch to {name} {job['state']}: {job.get('error')}")
            return job
        time.sleep(0.02)
    raise h.BenchError(f"switch to {name} did not finish within {timeout:g}s")


def worker_pids(st: dict) -> dict[str, list[int]]:
    return {m["name"]: [w["pid"] for w in m["workers"] if w["pid"]] for m in st["models"]}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------------------------------
# daemon log and store

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ msting\.daemon\.worker: worker (\S+) (spawned, pid (\d+)|ready: model loaded in ([\d.]+) ms)")


def parse_log(path: Path) -> list[dict]:
    """The worker spawn/ready lines of the daemon log, with epoch times (ms resolution, truncated)."""
    out = []
    files = sorted(path.parent.glob(path.name + "*"), key=lambda p: (p.name != path.name, p.name), reverse=True)
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            m = LOG_LINE.match(line)
            if not m:
                continue
            ts = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if m.group(4):
                out.append({"ts": ts, "worker": m.group(2), "kind": "spawned", "pid": int(m.group(4))})
            else:
                out.append({"ts": ts, "worker": m.group(2), "kind": "ready", "load_ms": float(m.group(5))})
    out.sort(key=lambda e: e["ts"])
    return out


def read_events(home: h.Home) -> list[dict]:
    dbs = list(home.path.rglob("state.db"))
    if not dbs:
        return []
    db = sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT ts, kind, model, worker, detail FROM events ORDER BY id").fetchall()
    finally:
        db.close()
    return [{"ts": r[0], "kind": r[1], "model": r[2], "worker": r[3], "detail": r[4]} for r in rows]


def load_split(sw: dict, log: list[dict], events: list[dict]) -> dict:
    """Where the load step went, for the new worker of one switch (ms)."""
    step = sw["steps"]["load"]
    pid = sw["new_pid"]
    spawn = next((e for e in log if e["kind"] == "spawned" and e["pid"] == pid and e["ts"] >= step["started"] - 0.002), None)
    if spawn is None:
        return {}
    ready = next((e for e in log if e["kind"] == "ready" and e["worker"] == spawn["worker"] and e["ts"] >= spawn["ts"]), None)
    verified = next((e for e in events if e["kind"] == "worker_ready" and e["detail"] and e["detail"].startswith(f"pid {pid},")), None)
    out: dict[str, float | None] = {"spawn_ms": (spawn["ts"] - step["started"]) * 1000.0}
    if ready:
        start_load = (ready["ts"] - spawn["ts"]) * 1000.0
        out["start_import_ms"] = start_load - ready["load_ms"]
        out["load_ms"] = ready["load_ms"]
        if verified:
            out["worker_verify_ms"] = (verified["ts"] - ready["ts"]) * 1000.0
            out["wakeup_ms"] = (step["finished"] - verified["ts"]) * 1000.0
    return out


# ---------------------------------------------------------------------------------------
# the series


def measure_series(home: h.Home, c: httpx.Client, n: int, gap: float, start_from: str, load: Load | None) -> list[dict]:
    switches = []
    current = start_from
    for i in range(n):
        target = "B" if current == "A" else "A"
        new_model = "b" if target == "B" else "a"
        before = h.status(c)
        old_pids = [p for ps in worker_pids(before).values() for p in ps]
        job = run_switch(c, target)
        after = h.status(c)
        model = next(m for m in after["models"] if m["name"] == new_model)
        steps = {s["name"]: {"duration_ms": s["duration_ms"], "started": s["started"], "finished": s["finished"], "detail": s.get("detail")}
                 for s in job["steps"]}
        sw = {
            "index": i + 1, "from": current, "to": target, "model": new_model,
            "job_id": job["id"], "created": job["created"], "finished": job["finished"],
            "duration_ms": job["duration_ms"], "result_duration_ms": (job.get("result") or {}).get("duration_ms"),
            "mode": (job.get("result") or {}).get("mode"),
            "steps": steps, "load_ms": model["load_ms"],
            "new_pid": next((w["pid"] for w in model["workers"] if w["pid"]), None),
            "old_pids": old_pids,
            "profile_after": after["profile"], "ready_after": after["ready"],
        }
        sw["to_routing_ms"] = (steps["switch"]["finished"] - job["created"]) * 1000.0
        sw["budget_ms"] = (sw["load_ms"] or 0.0) + (steps["verify"]["duration_ms"] or 0.0) + SLACK_MS
        sw["met"] = sw["duration_ms"] <= sw["budget_ms"]
        # the other reading of "load time": the whole load step (spawn + Python start + import llama_cpp
        # + load_ms + the worker's own 1-token verify), i.e. how long the new model took to come up
        sw["budget_whole_load_ms"] = (steps["load"]["duration_ms"] or 0.0) + (steps["verify"]["duration_ms"] or 0.0) + SLACK_MS
        sw["met_whole_load"] = sw["duration_ms"] <= sw["budget_whole_load_ms"]
        sw["routing_met"] = sw["to_routing_ms"] <= sw["budget_ms"]
        switches.append(sw)
        current = target
        time.sleep(gap)  # the load runs on alone: requests sent after `finished`
        sw["old_workers_gone"] = all(gone(p) for p in old_pids)
        print(f"  switch {i + 1}/{n} {sw['from']}->{sw['to']}{' (idle)' if load is None else ''}: {sw['duration_ms']:.0f} ms "
              f"(budget {sw['budget_ms']:.0f} ms, {'met' if sw['met'] else 'NOT met'}; load {steps['load']['duration_ms']:.0f}, "
              f"verify {steps['verify']['duration_ms']:.0f}, switch {steps['switch']['duration_ms']:.0f}, "
              f"drain {steps['drain']['duration_ms']:.0f}; load_ms {sw['load_ms']})", flush=True)
    return switches


def attach_requests(switches: list[dict], results: list[tuple], end: float) -> None:
    """Per switch: the requests sent from its creation to the next switch's creation."""
    for k, sw in enumerate(switches):
        lo = sw["created"]
        hi = switches[k + 1]["created"] if k + 1 < len(switches) else end
        window = [r for r in results if lo <= r[0] < hi]
        after = [r for r in window if r[0] > sw["finished"]]
        during = [r for r in window if r[0] <= sw["finished"]]
        old_model = "a" if sw["model"] == "b" else "b"
        sw["requests"] = len(window)
        sw["failed"] = sum(1 for r in window if r[2] != 200)
        sw["failures"] = [{"sent": r[0], "status": r[2], "error": r[4]} for r in window if r[2] != 200][:5]
        sw["during"] = {"n": len(during), "by_model": {m: sum(1 for r in during if r[3] == m) for m in sorted({str(r[3]) for r in during})},
                        "latency_ms": h.latency([(r[1] - r[0]) * 1000.0 for r in during if r[2] == 200])}
        sw["after"] = {"n": len(after), "by_model": {m: sum(1 for r in after if r[3] == m) for m in sorted({str(r[3]) for r in after})}}
        sw["after_all_new"] = bool(after) and all(r[2] == 200 and r[3] == sw["model"] for r in after)
        # drain split: the old model's last answer (from the clients) after the switch step
        old_done = [r[1] for r in window if r[3] == old_model]
        drain = sw["steps"]["drain"]
        if drain["started"] is not None and drain["finished"] is not None:
            last_old = max(old_done) if old_done else drain["started"]
            wait = min(max(last_old - drain["started"], 0.0), drain["finished"] - drain["started"])
            sw["drain_split"] = {"wait_old_requests_ms": wait * 1000.0, "stop_old_worker_ms": (drain["finished"] - drain["started"] - wait) * 1000.0}


def steady_latency(results: list[tuple], switches: list[dict]) -> dict:
    """Request latency outside every switch (sent after one switch finished and before the next started)."""
    spans = [(sw["created"], sw["finished"]) for sw in switches]
    lat = [(r[1] - r[0]) * 1000.0 for r in results
           if r[2] == 200 and r[0] > switches[0]["created"] and not any(a - 0.05 <= r[0] <= b for a, b in spans)]
    return h.latency(lat)


def summarize(switches: list[dict]) -> dict:
    def col(fn) -> list[float]:
        vals = []
        for sw in switches:
            try:
                v = fn(sw)
            except (KeyError, TypeError):
                v = None
            if v is not None:
                vals.append(v)
        return vals

    out = {
        "n": len(switches),
        "duration_ms": h.spread(col(lambda s: s["duration_ms"])),
        "budget_ms": h.spread(col(lambda s: s["budget_ms"])),
        "over_budget_ms": h.spread(col(lambda s: s["duration_ms"] - s["budget_ms"])),
        "to_routing_ms": h.spread(col(lambda s: s["to_routing_ms"])),
        "load_ms": h.spread(col(lambda s: s["load_ms"]), 2),
        "met": sum(1 for s in switches if s["met"]),
        "budget_whole_load_ms": h.spread(col(lambda s: s["budget_whole_load_ms"])),
        "met_whole_load": sum(1 for s in switches if s["met_whole_load"]),
        "routing_met": sum(1 for s in switches if s["routing_met"]),
        "steps": {name: h.spread(col(lambda s, name=name: s["steps"][name]["duration_ms"])) for name in
                  ("validate", "preflight", "load", "verify", "switch", "drain")},
        "load_split": {k: h.spread(col(lambda s, k=k: s["load_split"].get(k)))
                       for k in ("spawn_ms", "start_import_ms", "load_ms", "worker_verify_ms", "wakeup_ms")},
        "drain_split": {k: h.spread(col(lambda s, k=k: s["drain_split"][k])) for k in ("wait_old_requests_ms", "stop_old_worker_ms")},
        "modes": sorted({str(s.get("mode")) for s in switches}),
        "old_workers_gone": all(s.get("old_workers_gone") for s in switches),
    }
    if switches and "requests" in switches[0]:
        out["requests"] = sum(s["requests"] for s in switches)
        out["failed"] = sum(s["failed"] for s in switches)
        out["after_all_new"] = sum(1 for s in switches if s["after_all_new"])
        out["after_requests"] = sum(s["after"]["n"] for s in switches)
    return out


# ---------------------------------------------------------------------------------------
# reference: a bare worker interpreter's cold start


def cold_start_reference(runs: int) -> dict:
    py = sys.executable
    cmds = {
        "python_pass_ms": [py, "-c", "pass"],
        "import_worker_main_ms": [py, "-c", "import msting.worker.main"],
        "import_backend_ms": [py, "-c", "from msting.worker.engine import import_backend; import_backend()"],
    }
    out: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs + 1):  # the first round warms the page cache and is dropped
        for key, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            out[key].append((time.perf_counter() - t0) * 1000.0)
    return {k: h.spread(v[1:]) for k, v in out.items()}


# ---------------------------------------------------------------------------------------


def bench(p: dict, keep: bool) -> dict:
    res: dict[str, Any] = {}
    print("[reference: worker interpreter cold start, idle]", flush=True)
    res["cold_start"] = cold_start_reference(p["ref_runs"])
    cs = res["cold_start"]
    print(f"  python -c pass {cs['python_pass_ms']['median']} ms, import msting.worker.main {cs['import_worker_main_ms']['median']} ms, "
          f"+ import_backend() (llama_cpp) {cs['import_backend_ms']['median']} ms", flush=True)

    home = h.Home("switch")
    write_profile(home, "A", PROFILE_A)
    write_profile(home, "B", profile_b())
    res["profiles"] = {"A": PROFILE_A, "B": profile_b()}
    load: Load | None = None
    try:
        started = home.start()
        print(f"[daemon] ready in {started['wall_sec']:.2f} s", flush=True)
        with home.client(timeout=30) as c:
            # uncounted warm-up: default -> B -> A, describing each model (and warming the page cache)
            for name, key in (("B", "model_b"), ("A", "model_a")):
                warm = run_switch(c, name)
                print(f"  warm-up switch to {name}: {warm['duration_ms']:.0f} ms (not counted)", flush=True)
                cur = h.status(c)["models"][0]
                res[key] = {k: cur.get(k) for k in ("name", "source", "path", "n_ctx", "n_threads", "backend", "load_ms")}
                info = c.post("/models/load", json={"model": "default"}).json().get("info") or {}
                res[key].update({k: info.get(k) for k in ("arch", "n_params", "size_bytes")})

            print(f"[under load: {CLIENTS} clients, /generate max_tokens {MAX_TOKENS}]", flush=True)
            load = Load(home)
            load.start()
            time.sleep(p["warmup_sec"])
            loaded = measure_series(home, c, p["switches"], p["gap_sec"], "A", load)
            end = time.time()
            load.stop()
            results = load.snapshot()
            load = None
            attach_requests(loaded, results, end)
            res["load"] = {"requests": len(results), "failed": sum(1 for r in results if r[2] != 200),
                           "steady_latency_ms": steady_latency(results, loaded)}

            st = h.status(c)
            print("[idle: same switches, no load]", flush=True)
            start_from = st["profile"]
            idle = measure_series(home, c, p["idle_switches"], 0.3, start_from, None)

        log = parse_log(home.log_file)
        events = read_events(home)
        for sw in loaded + idle:
            sw["load_split"] = load_split(sw, log, events)
            if "drain_split" not in sw:
                sw["drain_split"] = {}
        res["loaded"] = {"summary": summarize(loaded), "switches": loaded}
        res["idle"] = {"summary": summarize(idle), "switches": idle}
        res["config"] = home.config
    finally:
        if load is not None:
            try:
                load.stop()
            except h.BenchError as exc:
                print(f"  {exc}", file=sys.stderr)
        home.cleanup(keep)
    return res


# ---------------------------------------------------------------------------------------
# reporting


def f0(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def spread_cells(s: dict, unit: str = "ms") -> list[str]:
    if not s or not s.get("n"):
        return ["0", "-", "-", "-"]
    fmt = (lambda v: f"{v:.1f} {unit}") if unit == "ms" else (lambda v: f"{v:.2f} {unit}")
    return [str(s["n"]), fmt(s["median"]), fmt(s["min"]), fmt(s["max"])]


def build_rows(res: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    for key, label in (("loaded", f"under load ({CLIENTS} clients)"), ("idle", "idle (reference)")):
        part = res.get(key)
        if not part:
            continue
        s = part["summary"]
        n = s["n"]
        rows.append([f"switch time, job created -> finished [{label}]", *spread_cells(s["duration_ms"]),
                     "<= load_ms + verify + 500 ms", f"{s['met']}/{n}"])
        rows.append(["  budget: load_ms + verify step + 500 ms", *spread_cells(s["budget_ms"]), "", ""])
        rows.append(["  over budget (switch time - budget)", *spread_cells(s["over_budget_ms"]), "", ""])
        rows.append(["  budget if load time = the whole load step (spawn, import, load, worker verify)", *spread_cells(s["budget_whole_load_ms"]),
                     "(other reading)", f"{s['met_whole_load']}/{n}"])
        rows.append(["  job created -> routing on the new profile", *spread_cells(s["to_routing_ms"]),
                     "(same budget)", f"{s['routing_met']}/{n}"])
        rows.append(["  step validate + preflight", *spread_cells(h.spread(
            [a + b for a, b in zip(s["steps"]["validate"]["values"], s["steps"]["preflight"]["values"])])), "", ""])
        rows.append(["  step load", *spread_cells(s["steps"]["load"]), "", ""])
        ls = s["load_split"]
        rows.append(["    spawn (process start, off the loop)", *spread_cells(ls["spawn_ms"]), "", ""])
        rows.append(["    Python start + imports incl. llama_cpp", *spread_cells(ls["start_import_ms"]), "", ""])
        rows.append(["    load_ms (llama.cpp model load)", *spread_cells(ls["load_ms"]), "", ""])
        rows.append(["    worker's own 1-token verify", *spread_cells(ls["worker_verify_ms"]), "", ""])
        rows.append(["    verified -> load step ends", *spread_cells(ls["wakeup_ms"]), "", ""])
        rows.append(["  step verify (2-token generate via the queue)", *spread_cells(s["steps"]["verify"]), "", ""])
        rows.append(["  step switch (routing swap)", *spread_cells(s["steps"]["switch"]), "", ""])
        rows.append(["  step drain", *spread_cells(s["steps"]["drain"]), "", ""])
        if s["drain_split"]["wait_old_requests_ms"].get("n"):
            rows.append(["    waiting for the old model's requests", *spread_cells(s["drain_split"]["wait_old_requests_ms"]), "", ""])
            rows.append(["    stopping the old worker", *spread_cells(s["drain_split"]["stop_old_worker_ms"]), "", ""])
        if "requests" in s:
            rows.append(["  requests during the series / failed", str(s["requests"]), str(s["failed"]), "", "", "0 failed",
                         "yes" if s["failed"] == 0 else "NO"])
            rows.append(["  switches where every request sent after `finished` got the new model", str(n), f"{s['after_all_new']}/{n}",
                         f"({s['after_requests']} requests)", "", "all", "yes" if s["after_all_new"] == n else "NO"])
    lat = (res.get("load") or {}).get("steady_latency_ms")
    if lat and lat.get("n"):
        rows.append(["request latency outside switches (p50 / p99 / max)", str(lat["n"]), f"{lat['p50']:.1f} ms",
                     f"{lat['p99']:.1f} ms", f"{lat['max']:.1f} ms", "", ""])
    during = [sw["during"]["latency_ms"] for sw in (res.get("loaded") or {}).get("switches", []) if sw.get("during")]
    if during:
        worst = max((d["max"] for d in during if d.get("max") is not None), default=None)
        n = sum(d["n"] for d in during)
        rows.append(["request latency, sent during a switch (max over switches)", str(n), "", "", f"{worst:.1f} ms" if worst else "-", "", ""])
    cs = res.get("cold_start")
    if cs:
        rows.append(["reference (idle): `python -c pass`", *spread_cells(cs["python_pass_ms"]), "", ""])
        rows.append(["reference (idle): `python -c 'import msting.worker.main'`", *spread_cells(cs["import_worker_main_ms"]), "", ""])
        rows.append(["reference (idle): + `import_backend()` (import llama_cpp)", *spread_cells(cs["import_backend_ms"]), "", ""])
    return rows


HEAD = ["measurement", "n", "median", "min", "max", "target", "met"]


def text_table(head: list[str], rows: list[list[str]]) -> str:
    cells = [head] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(x.ljust(widths[i]) if i in (0, len(head) - 2, len(head) - 1) else x.rjust(widths[i])
                               for i, x in enumerate(r)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"]
    for r in rows:
        cells = list(r)
        stripped = cells[0].lstrip(" ")
        depth = (len(cells[0]) - len(stripped)) // 2
        cells[0] = ("↳ " * depth if depth <= 1 else "&nbsp;&nbsp;" * (depth - 1) + "↳ ") + stripped
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


SWITCH_HEAD = ["#", "switch", "job ms", "budget ms", "met", "load", "(start+import)", "(load_ms)", "(worker verify)",
               "verify", "switch", "drain", "requests", "failed", "after `finished`: new model"]


def switch_rows(switches: list[dict]) -> list[list[str]]:
    rows = []
    for sw in switches:
        st, ls = sw["steps"], sw.get("load_split") or {}
        after = sw.get("after")
        rows.append([str(sw["index"]), f"{sw['from']}->{sw['to']}", f0(sw["duration_ms"]), f0(sw["budget_ms"]),
                     "yes" if sw["met"] else "no", f0(st["load"]["duration_ms"]), f0(ls.get("start_import_ms")),
                     f"{sw['load_ms']:.1f}" if sw.get("load_ms") is not None else "-", f0(ls.get("worker_verify_ms")),
                     f0(st["verify"]["duration_ms"]), f"{st['switch']['duration_ms']:.1f}", f0(st["drain"]["duration_ms"]),
                     str(sw.get("requests", "-")), str(sw.get("failed", "-")),
                     ("yes" if sw["after_all_new"] else "NO") + f" ({after['n']})" if after is not None else "-"])
    return rows


def describe_model(m: dict | None) -> str:
    if not m:
        return "?"
    src = m.get("source") or ""
    src = src if src.startswith("builtin") else Path(src).name
    size = f"{m['size_bytes'] / 1e6:.2f} MB" if m.get("size_bytes") else "?"
    params = f"{m['n_params'] / 1e3:.0f}K params" if m.get("n_params") else ""
    return f"`{m.get('name')}` ({src}, {m.get('arch')}, {params}, {size}, n_ctx {m.get('n_ctx')}, {m.get('n_threads')} thread(s), {m.get('backend')})"


def automatic_notes(res: dict) -> list[str]:
    notes = []
    s = (res.get("loaded") or {}).get("summary")
    if s and s["n"]:
        ls = s["load_split"]
        med = lambda d: d.get("median") or 0.0
        notes.append(
            f"Under load the median switch takes {med(s['duration_ms']):.0f} ms against a median budget of "
            f"{med(s['budget_ms']):.0f} ms ({s['met']}/{s['n']} switches within budget). The load step alone "
            f"(median {med(s['steps']['load']):.0f} ms) is spawn {med(ls['spawn_ms']):.0f} ms + Python start and imports "
            f"{med(ls['start_import_ms']):.0f} ms + load_ms {med(ls['load_ms']):.0f} ms + the worker's own verify "
            f"{med(ls['worker_verify_ms']):.0f} ms; only load_ms is in the budget.")
        notes.append(f"Drain (median {med(s['steps']['drain']):.0f} ms) is waiting for the old model's last request "
                     f"({med(s['drain_split']['wait_old_requests_ms']):.0f} ms) then stopping its worker "
                     f"({med(s['drain_split']['stop_old_worker_ms']):.0f} ms: shutdown frame, process exit, reap).")
        notes.append(f"Switch modes seen: {', '.join(s['modes'])}; old workers gone after every switch: "
                     f"{'yes' if s['old_workers_gone'] else 'NO'}.")
    i = (res.get("idle") or {}).get("summary")
    if i and i["n"]:
        notes.append(f"Without load the median switch takes {i['duration_ms']['median']:.0f} ms "
                     f"({i['met']}/{i['n']} within budget; load step {i['steps']['load']['median']:.0f} ms, "
                     f"of which Python start and imports {i['load_split']['start_import_ms']['median'] or 0:.0f} ms).")
    fl = res.get("foreign_load") or {}
    busy = [b for when in ("before", "after") for key in ("busy", "msting_or_pytest") for b in (fl.get(when) or {}).get(key, [])]
    if busy:
        names = sorted({h.short_cmd(b["cmd"]) for b in busy})
        notes.append(f"Other programs were running on this machine at the start or end of the run ({', '.join(f'`{n}`' for n in names)}): "
                     "the numbers are likely pessimistic.")
    if not STORIES.exists():
        notes.append(f"{STORIES} was not found: profile B used builtin:tiny with n_ctx 1024.")
    for e in res.get("errors", []):
        notes.append(f"Failed: {e.splitlines()[0]}")
    return notes


def analysis(res: dict) -> list[str]:
    """The verdict and where the time goes, from this run's medians."""
    s = (res.get("loaded") or {}).get("summary")
    i = (res.get("idle") or {}).get("summary")
    if not s or not s["n"]:
        return []

    def med(d: dict | None) -> float:
        return (d or {}).get("median") or 0.0

    ls, st = s["load_split"], s["steps"]
    machinery = med(st["validate"]) + med(st["preflight"]) + med(st["verify"]) + med(st["switch"])
    clean = s["failed"] == 0 and s["after_all_new"] == s["n"]
    out = ["**Verdict.** " + (
        f"Target met: {s['met']}/{s['n']} switches under load within load_ms + verify + 0.5 s" if s["met"] == s["n"] else
        f"Target not met: {s['met']}/{s['n']} switches under load within load_ms + verify + 0.5 s "
        f"(median {med(s['duration_ms']):.0f} ms against a median budget of {med(s['budget_ms']):.0f} ms"
        + (f"; idle {i['met']}/{i['n']}, median {med(i['duration_ms']):.0f} ms" if i and i["n"] else "") + ")")
        + ("; the request side holds: 0 failed requests and every request sent after `finished` answered by the new "
           "profile's model." if clean else "; and the request side does NOT hold (see the table).")]
    out.append("")
    out.append(
        f"**Where the time goes.** The switch machinery itself is cheap: validate + preflight + verify + the routing "
        f"swap take {machinery:.0f} ms (medians). The load step ({med(st['load']):.0f} ms) is almost all process start: "
        f"spawn {med(ls['spawn_ms']):.0f} ms, then Python start and imports {med(ls['start_import_ms']):.0f} ms "
        f"(idle reference: `python -c pass` {med(res['cold_start']['python_pass_ms']):.0f} ms, "
        f"`import msting.worker.main` {med(res['cold_start']['import_worker_main_ms']):.0f} ms, + `import llama_cpp` "
        f"{med(res['cold_start']['import_backend_ms']):.0f} ms in all), against load_ms {med(ls['load_ms']):.0f} ms and "
        f"the worker's own 1-token verify {med(ls['worker_verify_ms']):.0f} ms. `load_ms` deliberately leaves out the "
        f"import (worker/main.py: \"not part of load_ms\"), so the budget does not count it. Then the job only finishes "
        f"after drain ({med(st['drain']):.0f} ms: the old model's last requests {med(s['drain_split']['wait_old_requests_ms']):.0f} ms, "
        f"then the old worker's shutdown and exit {med(s['drain_split']['stop_old_worker_ms']):.0f} ms). Requests see "
        f"the new profile from the routing swap, {med(s['to_routing_ms']):.0f} ms after the job was created "
        f"({s['routing_met']}/{s['n']} within the budget). On 2 cores the load makes it worse: the old worker, the "
        f"daemon and the clients compete with the new worker's imports"
        + (f" (idle, Python start and imports take {med(i['load_split']['start_import_ms']):.0f} ms)." if i and i["n"] else "."))
    out.append("")
    out.append(
        f"**Reading the target.** If \"the new models' load time\" means what it takes msting to bring the model up "
        f"(the whole load step: spawn, Python, `import llama_cpp`, load, the worker's verify), {s['met_whole_load']}/{s['n']} "
        f"switches under load are within it + verify + 0.5 s"
        + (f" ({i['met_whole_load']}/{i['n']} idle)" if i and i["n"] else "")
        + ". The process start is a fixed cost of msting's one-process-per-worker design, not of the model "
        f"(the same ~{med(res['cold_start']['import_backend_ms']) / 1000:.1f} s idle for a 1 MB or a 4 GB file), so the strict "
        "reading (load_ms) holds the design to the target, the loose one only the model.")
    out.append("")
    out.append(
        "**What would cut it** (src/ unchanged here): (1) a warm spare worker: keep one idle worker process that has "
        "already started Python and imported `llama_cpp` (`import_backend()`) and waits for a spec frame; a switch (or a "
        "crash restart, or an on-demand load) hands it the spec instead of spawning, and a new spare is started in the "
        "background. That removes spawn + Python start + imports from the load step (the largest part above: the "
        f"median switch under load would drop to about {med(s['duration_ms']) - med(ls['spawn_ms']) - med(ls['start_import_ms']):.0f} ms), "
        "for the RSS of one idle interpreter with llama_cpp imported. A fork server (a zygote that imported llama_cpp and forks "
        "per worker) does the same with less memory, but forking a process that loaded a native library needs care. "
        "(2) End the job at the routing swap, or stop the old workers without waiting for their exit, if \"completes\" "
        "is what the user waits for: the drain is after the swap and no request waits on it. (3) Minor: the "
        f"worker's own 1-token verify and the switch's verify step both generate on the new model "
        f"({med(ls['worker_verify_ms']):.0f} + {med(st['verify']):.0f} ms here; more on a large model); one of them could go.")
    return out


def markdown(res: dict, rows: list[list[str]]) -> str:
    m = res["machine"]
    p = res["params"]
    out = [SECTION_TITLE, ""]
    out.append(f"Measured by `bench/switch.py` ({res['mode']} run, {res['finished_at']}, {res['duration_sec']:.0f} s) against "
               "one real daemon and real llama.cpp workers under a fresh temporary `MSTING_HOME` with a free port and "
               "`logging.file_level: INFO`. Re-run with `.venv/bin/python bench/switch.py` (`--quick` for a short "
               "version); the raw numbers, per switch, are in `bench/results/switch.json`.")
    out.append("")
    out.append(f"- **Machine:** {m['cpu']}, {m['logical_cores']} logical cores ({m['physical_cores']} physical), "
               f"{m['memory_gib']} GiB RAM, {m['os']}, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}.")
    if m.get("git_head"):
        dirty = m.get("src_uncommitted_changes")
        out.append(f"- **Code:** commit `{m['git_head']}`" + (f" with {dirty} uncommitted change(s) under `src/`" if dirty else "") + ".")
    out.append(f"- **Profiles:** `A` = `{{default_model: a, models: {{a: {{source: builtin:tiny}}}}}}`: {describe_model(res.get('model_a'))}; "
               f"`B` = `{{default_model: b, models: {{b: {{source: {'<abs path>/stories260K.gguf' if STORIES.exists() else 'builtin:tiny, n_ctx: 1024'}}}}}}}`: "
               f"{describe_model(res.get('model_b'))}.")
    out.append(f"- **Run:** daemon started (profile `default`), uncounted warm-up switches to `B` then `A`, then {p['switches']} switches "
               f"A→B→A… under load with a {p['gap_sec']:g} s gap after each (the load runs on alone), then "
               f"{p['idle_switches']} switches with no load (0.3 s gap). Each switch is `POST /v1/profiles/switch` and "
               "polling `GET /v1/jobs/{id}` every 20 ms.")
    out.append(f"- **Load:** {CLIENTS} client threads, each with its own httpx client on the Unix socket, back-to-back "
               f"non-streaming `POST /generate {{\"prompt\": \"{PROMPT}\", \"max_tokens\": {MAX_TOKENS}}}` (bounded loops), "
               f"from {p['warmup_sec']:g} s before the first switch to the end of the loaded series.")
    out.append("- **What is measured:** switch time = the job's `duration_ms` (`created` → `finished`, after drain); "
               "`load_ms` of the new model from `GET /v1/status` after the switch; each step's `duration_ms` from the job. "
               "The load step is split with the daemon log (\"worker … spawned\", \"worker … ready: model loaded\", "
               "millisecond timestamps) and the `worker_ready` event in the daemon's store: spawn; Python start + "
               "imports (`import llama_cpp`), i.e. spawned → ready minus load_ms; load_ms; the worker's own 1-token "
               "verify. The drain step is split with the clients' answer times: until the old model's last answer, "
               "then stopping the old worker. A request counts for a switch when it was sent between that switch's "
               "`created` and the next switch's `created`; \"after `finished`\" = sent after the job's `finished`.")
    out.append("- **Target (issue 4):** \"a switch between two loaded-fast models completes in the new models' load time + "
               "verify + 0.5 s at most, with zero failed requests\": per switch, job `duration_ms` ≤ budget = load_ms + "
               "the verify step's ms + 500 ms; 0 failed requests; every request sent after `finished` answered by the "
               "new profile's default model.")
    out.append("")
    out.extend(md_table(HEAD, rows, {1, 2, 3, 4}))
    out.append("")
    for key, title in (("loaded", "Per switch, under load (ms)"), ("idle", "Per switch, idle (ms)")):
        sws = (res.get(key) or {}).get("switches")
        if sws:
            out.append(f"{title}:")
            out.append("")
            rows_sw = switch_rows(sws)
            head = SWITCH_HEAD if key == "loaded" else SWITCH_HEAD[:12]
            out.extend(md_table(head, [r[:len(head)] for r in rows_sw], set(range(2, len(head))) - {4}))
            out.append("")
    out.extend(h.notes_block(res.get("notes") or []))
    text = analysis(res)
    if text:
        out.extend(text)
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{PROFILES['quick']['switches']} switches instead of {PROFILES['full']['switches']}")
    ap.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"JSON results (default {DEFAULT_JSON.relative_to(ROOT)})")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds until no other pytest/msting/busy program runs")
    ap.add_argument("--keep-homes", action="store_true", help="keep the temporary MSTING_HOME (logs) for inspection")
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None, help=argparse.SUPPRESS)  # bench/run.py's own
    args = ap.parse_args(argv)

    h.install_signal_handlers()
    mode = args.profile or ("quick" if args.quick else "full")
    p = PROFILES[mode]
    t_start = time.time()
    res: dict[str, Any] = {"mode": mode, "params": {**p, "clients": CLIENTS, "max_tokens": MAX_TOKENS, "prompt": PROMPT, "slack_ms": SLACK_MS},
                           "machine": h.machine(), "started_at": _dt.datetime.now().isoformat(timespec="seconds"), "errors": []}
    m = res["machine"]
    print(f"msting profile switch bench ({mode}) on {m['cpu']}, {m['logical_cores']} cores, {m['memory_gib']} GiB", flush=True)
    if args.wait_quiet:
        waited = h.wait_quiet(args.wait_quiet)
        if waited > 5:
            print(f"  waited {waited:.0f} s for other programs to finish", flush=True)
    before = h.foreign_load()
    if before["busy"] or before["msting_or_pytest"]:
        print(f"  WARNING: other programs are running: {sorted({h.short_cmd(b['cmd']) for b in before['busy'] + before['msting_or_pytest']})}", flush=True)
    res["foreign_load"] = {"before": before}
    try:
        res.update(bench(p, args.keep_homes))
    except (h.BenchError, httpx.HTTPError, OSError, subprocess.SubprocessError, KeyError, ValueError, StopIteration) as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        traceback.print_exc()
        res["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        leftovers = h.cleanup_all(args.keep_homes)
        if leftovers:
            print(f"killed leftover processes: {leftovers}", file=sys.stderr)
        res["leftover_pids_killed"] = leftovers
    res["foreign_load"]["after"] = h.foreign_load()
    after = res["foreign_load"]["after"]
    if after["busy"] or after["msting_or_pytest"]:
        print(f"  WARNING: other programs are running: {sorted({h.short_cmd(b['cmd']) for b in after['busy'] + after['msting_or_pytest']})}", flush=True)

    res["finished_at"] = _dt.datetime.now().isoformat(timespec="seconds")
    res["duration_sec"] = round(time.time() - t_start, 1)
    res["notes"] = automatic_notes(res)
    rows = build_rows(res)
    print()
    print(text_table(HEAD, rows))
    for key in ("loaded", "idle"):
        sws = (res.get(key) or {}).get("switches")
        if sws:
            print(f"\nper switch, {key} (ms):")
            print(text_table(SWITCH_HEAD, switch_rows(sws)))
    print()
    for n in res["notes"]:
        print(f"- {n}")
    print(f"\n{mode} run took {res['duration_sec']:.0f} s")

    h.save_results(res, args.json_out)
    if res["errors"]:
        print(f"the run failed: {DOCS.name} left as it was", file=sys.stderr)
        return 1
    if not args.no_docs:
        h.write_docs(markdown(res, rows), SECTION_TITLE)
        print(f"updated {DOCS} ({SECTION_TITLE[3:]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
