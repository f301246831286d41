#!/usr/bin/env python3
"""The measurements issue 5 adds to the three older benches: concurrency against the peer
servers, memory, CLI latency. ``bench/run.py`` runs them with the others; on their own:

    .venv/bin/python bench/suite.py [--quick] [--json-out PATH] [--keep-homes]

1. **Concurrency:** 1, 2, 4 and 8 concurrent clients (asyncio + httpx, one persistent
   connection each, back-to-back non-streaming ``POST /v1/completions`` over TCP
   127.0.0.1, temperature 0) against msting with ``llm.replicas`` 1 and 2, against
   ``python -m llama_cpp.server`` and, when one is on PATH, llama.cpp's ``llama-server``
   (each with one decode thread per model instance, as msting's workers). Every server is
   up for the whole section; repetitions are interleaved (levels alternate direction,
   servers are shuffled in every cell). Reported: aggregate completion tokens/s (all
   tokens received / wall time of the cell), per-request latency, and how many replies
   were complete. A reply is complete when it is a 200 whose ``finish_reason`` and
   ``completion_tokens`` equal those of the in-process temperature-0 reference
   (``llama_cpp.Llama.create_completion`` in a subprocess, same prompt and
   ``max_tokens``); whether its text equals the reference is reported beside it.
2. **Memory:** the RSS of a daemon with no model loaded (``llm_service.always_ready:
   false``), and of its other processes (the warm spare worker); RSS, USS and PSS
   (psutil ``memory_full_info``) of the workers with 1 and 2 replicas, over the model file
   size; llama_cpp.server's for comparison.
3. **CLI latency:** wall time of ``msting llm status --json`` (the console script, daemon
   running) against ``python -c "import typer, httpx"`` with the same interpreter,
   interleaved; with ``python -X importtime`` of the command, the modules that cost most.

Every process started here is stopped (``msting llm stop --force`` per home, servers
terminated) by ``harness.cleanup_all()``. This file must not import from ``tests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness as h  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

PROMPT = "Once upon a time"
N_CTX = 2048
LEVELS = [1, 2, 4, 8]

# targets (issue 5)
TARGET_REPLICA_SCALING = 1.6  # aggregate tokens/s, replicas 2 over replicas 1
TARGET_DAEMON_RSS_MB = 80.0
TARGET_CLI_RATIO = 1.3

PROFILES = {
    # per model: (key, max_tokens); "large" is the generated model, "stories260K" the real one
    "quick": {"models": [("large", 32)], "reps": 2, "requests_per_client": 1, "cli_runs": 6},
    "full": {"models": [("large", 64), ("stories260K", 256)], "reps": 5, "requests_per_client": 2, "cli_runs": 20},
}


def model_path(key: str) -> Path | None:
    if key == "large":
        return h.large_model()
    return h.STORIES if h.STORIES.exists() else None


# ---------------------------------------------------------------------------------------
# reference


REFERENCE_CODE = r"""
import json, sys, time, llama_cpp
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
llm.create_completion(prompt, max_tokens=4, temperature=0.0)
t0 = time.perf_counter()
r = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
wall = time.perf_counter() - t0
print(json.dumps({"text": r["choices"][0]["text"], "finish_reason": r["choices"][0]["finish_reason"],
                  "completion_tokens": r["usage"]["completion_tokens"], "tps": r["usage"]["completion_tokens"] / wall}))
"""


def reference(path: Path, max_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-c", REFERENCE_CODE, str(path), PROMPT, str(max_tokens)],
                         capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise h.BenchError(f"in-process reference failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# servers


class MstingServer:
    def __init__(self, key: str, path: Path, replicas: int):
        self.name = f"msting, replicas {replicas}"
        self.kind = "msting"
        self.replicas = replicas
        self.home = h.Home(f"conc-{key}-r{replicas}", {"llm": {"model": str(path), "n_threads": 1, "n_ctx": N_CTX,
                                                                "replicas": replicas}})
        started = self.home.start()
        self.started_sec = started["wall_sec"]
        self.url = f"http://127.0.0.1:{self.home.port}"
        self.body_extra: dict = {}
        with self.home.client() as c:
            st = h.status(c)
        self.pid = st["pid"]
        self.workers = [w["pid"] for w in st["models"][0]["workers"] if w.get("pid")]
        if len(self.workers) != replicas:
            raise h.BenchError(f"{self.name}: {len(self.workers)} worker(s) running, expected {replicas}")

    def worker_pids(self) -> list[int]:
        with self.home.client() as c:
            st = h.status(c)
        return [w["pid"] for w in st["models"][0]["workers"] if w.get("pid")]


class PeerServer:
    def __init__(self, cls: type, key: str, path: Path):
        self.srv = cls(key, str(path), n_ctx=N_CTX, n_threads=1)
        self.name = self.srv.name
        self.kind = "llama_cpp.server" if cls is h.LlamaServer else "llama-server"
        self.replicas = 1
        self.url = self.srv.url
        self.pid = self.srv.pid
        self.started_sec = self.srv.started_sec
        # llama_cpp.server's repeat_penalty default is 1.1; create_completion and msting use 1.0
        self.body_extra = {"repeat_penalty": 1.0} if self.kind == "llama_cpp.server" else {}


# ---------------------------------------------------------------------------------------
# one cell: `clients` concurrent clients, each sending `per_client` requests back to back


async def _cell(url: str, body: dict, clients: int, per_client: int) -> tuple[float, list[dict]]:
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600), limits=limits) as client:
        await client.get("/v1/models")  # connect once before the clock starts

        async def one_client() -> list[dict]:
            out = []
            for _ in range(per_client):
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/completions", json=body)
                    wall = time.perf_counter() - t0
                    j = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    if r.status_code == 200:
                        ch = (j.get("choices") or [{}])[0]
                        out.append({"status": 200, "wall": wall, "text": ch.get("text"), "finish_reason": ch.get("finish_reason"),
                                    "completion_tokens": (j.get("usage") or {}).get("completion_tokens")})
                    else:
                        out.append({"status": r.status_code, "wall": wall, "error": r.text[:200]})
                except httpx.HTTPError as exc:
                    out.append({"status": -1, "wall": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"[:200]})
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return wall, [r for rs in results for r in rs]


def run_cell(server: Any, clients: int, per_client: int, max_tokens: int, ref: dict) -> dict:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, **server.body_extra}
    wall, replies = asyncio.run(_cell(server.url, body, clients, per_client))
    tokens = 0
    complete = text_ok = 0
    for r in replies:
        if r["status"] == 200:
            tokens += r.get("completion_tokens") or 0
            r["complete"] = r["finish_reason"] == ref["finish_reason"] and r["completion_tokens"] == ref["completion_tokens"]
            r["text_matches"] = r["text"] == ref["text"]
        else:
            r["complete"] = r["text_matches"] = False
        complete += r["complete"]
        text_ok += r["text_matches"]
    return {"clients": clients, "wall": wall, "requests": len(replies), "tokens": tokens, "agg_tps": tokens / wall,
            "complete": complete, "text_matches": text_ok, "latency_ms": [r["wall"] * 1000.0 for r in replies],
            "failures": [{k: r.get(k) for k in ("status", "finish_reason", "completion_tokens", "error")}
                         for r in replies if not r["complete"]][:5]}


def bench_concurrency(p: dict) -> dict:
    out: dict[str, Any] = {"levels": LEVELS, "requests_per_client": p["requests_per_client"], "reps": p["reps"],
                           "llama_server_cpp": h.cpp_llama_server(), "models": {}}
    rng = random.Random(20261122)
    for key, max_tokens in p["models"]:
        path = model_path(key)
        if path is None:
            out["models"][key] = {"missing": True}
            continue
        ref = reference(path, max_tokens)
        print(f"  [{key}] reference: {ref['completion_tokens']} tokens, finish_reason {ref['finish_reason']}, "
              f"in process {ref['tps']:.0f} tok/s", flush=True)
        servers: list[Any] = []
        try:
            servers.append(MstingServer(key, path, 1))
            servers.append(MstingServer(key, path, 2))
            servers.append(PeerServer(h.LlamaServer, key, path))
            if h.cpp_llama_server():
                servers.append(PeerServer(h.CppLlamaServer, key, path))
            for s in servers:  # warm-up, not counted
                run_cell(s, 1, 1, max_tokens, ref)
            cells: dict[str, dict[int, list[dict]]] = {s.name: {c: [] for c in LEVELS} for s in servers}
            for rep in range(p["reps"]):
                levels = LEVELS if rep % 2 == 0 else LEVELS[::-1]
                for clients in levels:
                    order = list(servers)
                    rng.shuffle(order)
                    for s in order:
                        cells[s.name][clients].append(run_cell(s, clients, p["requests_per_client"], max_tokens, ref))
                print(f"  [{key}] repetition {rep + 1}/{p['reps']}: " + "; ".join(
                    f"{s.name} x8 {cells[s.name][8][-1]['agg_tps']:.0f} tok/s" for s in servers), flush=True)
            # memory of the loaded servers, after the load (KV caches touched)
            memory = memory_of_servers(servers, path)
            summary: dict[str, Any] = {}
            for s in servers:
                per = {}
                for clients, runs in cells[s.name].items():
                    lat = [v for r in runs for v in r["latency_ms"]]
                    per[clients] = {
                        "agg_tps": h.spread([r["agg_tps"] for r in runs], 1),
                        "latency_ms": {"n": len(lat), "p50": round(h.percentile(lat, 50), 1), "p95": round(h.percentile(lat, 95), 1),
                                       "min": round(min(lat), 1), "max": round(max(lat), 1)},
                        "requests": sum(r["requests"] for r in runs),
                        "complete": sum(r["complete"] for r in runs),
                        "text_matches": sum(r["text_matches"] for r in runs),
                        "failures": [f for r in runs for f in r["failures"]][:5],
                    }
                summary[s.name] = {"kind": s.kind, "replicas": s.replicas, "start_sec": round(s.started_sec, 2), "levels": per}
            r1, r2 = summary.get("msting, replicas 1"), summary.get("msting, replicas 2")
            scaling = {}
            if r1 and r2:
                for c in LEVELS:
                    a, b = r1["levels"][c]["agg_tps"]["median"], r2["levels"][c]["agg_tps"]["median"]
                    scaling[c] = round(b / a, 3) if a else None
            out["models"][key] = {"path": str(path), "file": path.name, "size_bytes": path.stat().st_size,
                                  "max_tokens": max_tokens, "reference": ref, "servers": summary,
                                  "replica_scaling": scaling, "memory": memory,
                                  "raw": {name: {c: [{k: v for k, v in r.items() if k != "latency_ms"} for r in runs]
                                                 for c, runs in per_level.items()} for name, per_level in cells.items()}}
        finally:
            for s in servers:
                if isinstance(s, MstingServer):
                    s.home.cleanup()
                else:
                    s.srv.stop()
    return out


# ---------------------------------------------------------------------------------------
# memory


def memory_of_servers(servers: list[Any], path: Path) -> dict:
    size = path.stat().st_size
    out = {"model_size_bytes": size, "servers": {}}
    for s in servers:
        pids = s.worker_pids() if isinstance(s, MstingServer) else [s.pid]
        mems = [m for m in (h.memory_of(pid) for pid in pids) if m]
        total = {k: sum(m[k] or 0 for m in mems) for k in ("rss", "uss", "pss")}
        out["servers"][s.name] = {"processes": mems, **total,
                                  "rss_over_file": round(total["rss"] / size, 3), "pss_over_file": round(total["pss"] / size, 3),
                                  "uss_over_file": round(total["uss"] / size, 3)}
        if isinstance(s, MstingServer):
            d = h.memory_of(s.pid)
            out["servers"][s.name]["daemon"] = d
    return out


IMPORT_RSS_CODE = r"""
import json, os, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out = [["python", rss()]]
for mod in sys.argv[1:]:
    __import__(mod)
    out.append([mod, rss()])
print(json.dumps(out))
"""
DAEMON_IMPORTS = ["yaml", "psutil", "sqlite3", "httpx", "anyio", "starlette.applications", "uvicorn",
                  "msting.config", "msting.daemon.main"]


def bench_memory_cli(p: dict) -> dict:
    out: dict[str, Any] = {}
    home = h.Home("idle", {"llm_service": {"always_ready": False}})
    try:
        health = home.spawn_idle()
        time.sleep(1.5)  # let it settle (warm spare started, caches warm)
        with home.client() as c:
            st = h.status(c)
            c.get("/health")
        daemon = h.memory_of(st["pid"])
        children = [m for m in (h.memory_of(ch.pid) for ch in psutil.Process(st["pid"]).children(recursive=True)) if m]
        out["idle_daemon"] = {"readiness": health.get("readiness"), "daemon": daemon, "children": children,
                              "models_loaded": [m["name"] for m in st["models"] if any(w.get("pid") for w in m.get("workers", []))],
                              "config": home.config}
        # where the daemon's RSS comes from: RSS after each import, in a fresh interpreter
        r = subprocess.run([sys.executable, "-c", IMPORT_RSS_CODE, *DAEMON_IMPORTS], capture_output=True, text=True,
                           timeout=60, check=False)
        if r.returncode == 0:
            steps = json.loads(r.stdout)
            out["import_rss"] = [{"module": m, "rss": v, "delta": v - (steps[i - 1][1] if i else 0)} for i, (m, v) in enumerate(steps)]
        print(f"  idle daemon: RSS {daemon['rss'] / 2**20:.1f} MB (USS {daemon['uss'] / 2**20:.1f}, PSS {daemon['pss'] / 2**20:.1f}); "
              f"other processes: {[(m['cmd'], round(m['rss'] / 2**20, 1)) for m in children]}", flush=True)
        out["cli"] = bench_cli(home, p["cli_runs"])
    finally:
        home.cleanup()
    return out


def bench_cli(home: h.Home, runs: int) -> dict:
    # pip compiles an installed package to bytecode; an editable checkout run with
    # PYTHONDONTWRITEBYTECODE=1 (as on these machines) never writes .pyc files and would
    # recompile every msting module on every run. Compile it first, as pip install does.
    import compileall

    import msting

    compileall.compile_dir(str(Path(msting.__file__).parent), quiet=1)
    status_cmd = [*h.msting_command(), "llm", "status", "--json"]
    base_cmd = [sys.executable, "-c", "import typer, httpx"]
    times: dict[str, list[float]] = {"status": [], "imports": []}
    exit_codes: set[int] = set()
    for i in range(runs + 1):  # the first pair warms the page cache and is dropped
        pair = [("status", status_cmd), ("imports", base_cmd)]
        if i % 2:
            pair.reverse()
        for name, cmd in pair:
            t0 = time.perf_counter()
            r = subprocess.run(cmd, env=home.env, capture_output=True, text=True, timeout=60, check=False)
            dt = (time.perf_counter() - t0) * 1000.0
            if name == "status":
                # its exit code says whether the service is ready (here: no model, so not 0); the
                # command itself worked when it printed the status as JSON
                try:
                    json.loads(r.stdout)
                except ValueError:
                    raise h.BenchError(f"{' '.join(cmd)} exited {r.returncode} without JSON: {r.stderr[-500:]}") from None
                exit_codes.add(r.returncode)
            elif r.returncode != 0:
                raise h.BenchError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-500:]}")
            if i:
                times[name].append(dt)
    ratio = [a / b for a, b in zip(times["status"], times["imports"])]
    out = {"status_ms": h.spread(times["status"]), "imports_ms": h.spread(times["imports"]), "paired_ratio": h.spread(ratio, 3),
           "command": "msting llm status --json", "status_exit_codes": sorted(exit_codes), "baseline": 'python -c "import typer, httpx"',
           "bytecode": "msting compiled to .pyc first (as pip install does)"}
    out["ratio"] = round(out["status_ms"]["median"] / out["imports_ms"]["median"], 3)
    # which imports cost most in the status command (cumulative us, top-level packages)
    r = subprocess.run([sys.executable, "-X", "importtime", *status_cmd[-4:]] if status_cmd[0] == sys.executable else
                       [sys.executable, "-X", "importtime", status_cmd[0], *status_cmd[1:]],
                       env=home.env, capture_output=True, text=True, timeout=60, check=False)
    top: dict[str, int] = {}
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [x.strip() for x in line[len("import time:"):].split("|")]
        try:
            cum = int(parts[1])
        except ValueError:
            continue
        name = parts[2]
        if not name.startswith(" "):  # imported at top level (its nested imports are in `cum`)
            top[name] = max(top.get(name, 0), cum)
    out["importtime_top_ms"] = {k: round(v / 1000.0, 1) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:10]}
    print(f"  CLI: status --json {out['status_ms']['median']:.0f} ms vs bare imports {out['imports_ms']['median']:.0f} ms "
          f"(ratio {out['ratio']:.2f}); top imports: {out['importtime_top_ms']}", flush=True)
    return out


# ---------------------------------------------------------------------------------------


def run(mode: str) -> dict:
    p = PROFILES[mode]
    res: dict[str, Any] = {"mode": mode, "params": {k: v for k, v in p.items()}, "errors": []}
    for name, fn in (("memory_cli", bench_memory_cli), ("concurrency", bench_concurrency)):
        print(f"[{name}]", flush=True)
        try:
            res[name] = fn(p)
        except (h.BenchError, httpx.HTTPError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
            print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
            res["errors"].append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--keep-homes", action="store_true")
    args = ap.parse_args(argv)
    h.install_signal_handlers()
    mode = "quick" if args.quick else "full"
    t0 = time.time()
    try:
        res = run(mode)
    finally:
        leftovers = h.cleanup_all(args.keep_homes)
    res["leftover_pids_killed"] = leftovers
    res["machine"] = h.machine()
    res["finished_at"] = _dt.datetime.now().isoformat(timespec="seconds")
    res["duration_sec"] = round(time.time() - t0, 1)
    out = args.json_out or h.RESULTS / ("suite.quick.json" if args.quick else "suite.json")
    h.dump_json(out, res)
    print(f"wrote {out} ({res['duration_sec']:.0f} s)")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
