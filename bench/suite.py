#!/usr/bin/env python3
"""Concurrency against the peer servers, memory, and CLI latency: two sections of
``bench/run.py`` (``concurrency``, ``memory_cli``; docs/benchmarks.md explains the method).
``bench/suite.py [--quick]`` is ``bench/run.py --only memory_cli concurrency [--quick]``."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import harness as h
import httpx
import psutil
import report as r

PROMPT = "Once upon a time"
N_CTX = 2048
LEVELS = [1, 2, 4, 8]
TARGET_REPLICA_SCALING = 1.6  # aggregate tokens/s, replicas 2 over replicas 1
TARGET_DAEMON_RSS_MB = 80.0
TARGET_CLI_RATIO = 1.3
CONC_PROFILES = {  # models: (key, max_tokens); "large" is harness.large_model()
    "quick": {"models": [["large", 32]], "reps": 2, "requests_per_client": 1},
    "full": {"models": [["large", 64], ["stories260K", 256]], "reps": 5, "requests_per_client": 2},
}
MEM_PROFILES = {"quick": {"cli_runs": 6}, "full": {"cli_runs": 20}}
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
DAEMON_IMPORTS = ["yaml", "psutil", "sqlite3", "httpx", "anyio", "starlette.applications", "uvicorn", "msting.config", "msting.daemon.main"]


# ---- concurrency ---------------------------------------------------------------------------


def reference(path: Path, max_tokens: int) -> dict:
    """The in-process temperature-0 reply (in a subprocess) that every server's reply is checked against."""
    out = subprocess.run([sys.executable, "-c", REFERENCE_CODE, str(path), PROMPT, str(max_tokens)], capture_output=True, text=True,
                         timeout=300, check=False)
    if out.returncode != 0:
        raise h.BenchError(f"in-process reference failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Server:
    """msting with `replicas` workers, or a peer server (`peer`: a harness.LlamaServer class)."""

    def __init__(self, key: str, path: Path, replicas: int = 1, peer: Any = None):
        self.replicas, self.body_extra = replicas, {}
        if peer is None:
            self.name, self.kind = f"msting, replicas {replicas}", "msting"
            self.home = h.home(f"conc-{key}-r{replicas}", {"llm": {"model": str(path), "n_threads": 1, "n_ctx": N_CTX, "replicas": replicas}})
            self.started_sec, self.url = h.start(self.home)["wall_sec"], self.home.url
            with self.home.client() as c:
                self.pid = h.status(c)["pid"]
            if len(self.worker_pids()) != replicas:
                raise h.BenchError(f"{self.name}: {len(self.worker_pids())} worker(s) running, expected {replicas}")
        else:
            self.home, self.srv = None, peer(str(path), n_ctx=N_CTX, n_threads=1)
            self.name, self.url, self.pid, self.started_sec = self.srv.name, self.srv.url, self.srv.pid, self.srv.started_sec
            self.kind = "llama_cpp.server" if peer is h.LlamaServer else "llama-server"
            if self.kind == "llama_cpp.server":
                self.body_extra = {"repeat_penalty": 1.0}  # its default is 1.1; create_completion and msting use 1.0

    def worker_pids(self) -> list[int]:
        if self.home is None:
            return [self.pid]
        with self.home.client() as c:
            return [w["pid"] for w in h.status(c)["models"][0]["workers"] if w.get("pid")]

    def stop(self) -> None:
        self.home.cleanup(h.KEEP) if self.home is not None else self.srv.stop(h.KEEP)


async def _cell(url: str, body: dict, clients: int, per_client: int) -> tuple[float, list[dict]]:
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600), limits=limits, trust_env=False) as client:
        await client.get("/v1/models")  # connect once before the clock starts

        async def one_client() -> list[dict]:
            out = []
            for _ in range(per_client):
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/v1/completions", json=body)
                    wall = time.perf_counter() - t0
                    if resp.status_code == 200:
                        j = resp.json()
                        ch = (j.get("choices") or [{}])[0]
                        out.append({"status": 200, "wall": wall, "text": ch.get("text"), "finish_reason": ch.get("finish_reason"),
                                    "completion_tokens": (j.get("usage") or {}).get("completion_tokens")})
                    else:
                        out.append({"status": resp.status_code, "wall": wall, "error": resp.text[:200]})
                except (httpx.HTTPError, ValueError) as exc:
                    out.append({"status": -1, "wall": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"[:200]})
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_client() for _ in range(clients)))
        return time.perf_counter() - t0, [x for rs in results for x in rs]


def run_cell(server: Server, clients: int, per_client: int, max_tokens: int, ref: dict) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests back to back; a reply
    is complete when its finish_reason and completion_tokens are the reference's."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, **server.body_extra}
    wall, replies = asyncio.run(_cell(server.url, body, clients, per_client))
    for x in replies:
        ok = x["status"] == 200
        x["complete"] = ok and x["finish_reason"] == ref["finish_reason"] and x["completion_tokens"] == ref["completion_tokens"]
        x["text_matches"] = ok and x["text"] == ref["text"]
    tokens = sum(x.get("completion_tokens") or 0 for x in replies if x["status"] == 200)
    return {"clients": clients, "wall": wall, "requests": len(replies), "tokens": tokens, "agg_tps": tokens / wall,
            "complete": sum(x["complete"] for x in replies), "text_matches": sum(x["text_matches"] for x in replies),
            "latency_ms": [x["wall"] * 1000.0 for x in replies],
            "failures": [{k: x.get(k) for k in ("status", "finish_reason", "completion_tokens", "error")} for x in replies if not x["complete"]][:5]}


def memory_of_servers(servers: list[Server], path: Path) -> dict:
    size = path.stat().st_size
    out: dict[str, Any] = {"model_size_bytes": size, "servers": {}}
    for s in servers:
        mems = [m for m in map(h.memory_of, s.worker_pids()) if m]
        total = {k: sum(m[k] or 0 for m in mems) for k in ("rss", "uss", "pss")}
        out["servers"][s.name] = {"processes": mems, **total, **{f"{k}_over_file": round(total[k] / size, 3) for k in ("rss", "pss", "uss")}}
        if s.home is not None:
            out["servers"][s.name]["daemon"] = h.memory_of(s.pid)
    return out


def concurrency(p: dict) -> dict:
    out: dict[str, Any] = {"levels": LEVELS, "requests_per_client": p["requests_per_client"], "reps": p["reps"],
                           "llama_server_cpp": shutil.which("llama-server"), "models": {}}
    rng = random.Random(20261122)
    for key, max_tokens in p["models"]:
        path = h.large_model() if key == "large" else h.STORIES
        if not path.exists():
            out["models"][key] = {"missing": True}
            continue
        ref = reference(path, max_tokens)
        print(f"  [{key}] reference: {ref['completion_tokens']} tokens ({ref['finish_reason']}), {ref['tps']:.0f} tok/s", flush=True)
        servers: list[Server] = []
        try:
            servers += [Server(key, path, 1), Server(key, path, 2), Server(key, path, peer=h.LlamaServer)]
            if out["llama_server_cpp"]:
                servers.append(Server(key, path, peer=h.CppLlamaServer))
            for s in servers:  # warm-up, not counted
                run_cell(s, 1, 1, max_tokens, ref)
            cells: dict[str, dict[str, list[dict]]] = {s.name: {str(c): [] for c in LEVELS} for s in servers}
            for rep in range(p["reps"]):  # levels alternate direction, servers shuffled in every cell
                for clients in LEVELS if rep % 2 == 0 else LEVELS[::-1]:
                    order = list(servers)
                    rng.shuffle(order)
                    for s in order:
                        cells[s.name][str(clients)].append(run_cell(s, clients, p["requests_per_client"], max_tokens, ref))
                print(f"  [{key}] repetition {rep + 1}/{p['reps']}", flush=True)
            memory = memory_of_servers(servers, path)  # after the load: KV caches touched
            summary = {}
            for s in servers:
                per = {}
                for clients, runs in cells[s.name].items():
                    lat = [v for x in runs for v in x["latency_ms"]]
                    per[clients] = {"agg_tps": h.spread([x["agg_tps"] for x in runs], 1),
                                    "latency_ms": {"n": len(lat), **{f"p{q}": round(h.percentile(lat, q), 1) for q in (50, 95)},
                                                   "min": round(min(lat), 1), "max": round(max(lat), 1)},
                                    **{k: sum(x[k] for x in runs) for k in ("requests", "complete", "text_matches")},
                                    "failures": [f for x in runs for f in x["failures"]][:5]}
                summary[s.name] = {"kind": s.kind, "replicas": s.replicas, "start_sec": round(s.started_sec, 2), "levels": per}
            r1, r2 = summary["msting, replicas 1"]["levels"], summary["msting, replicas 2"]["levels"]
            scaling = {c: round(r2[c]["agg_tps"]["median"] / r1[c]["agg_tps"]["median"], 3) if r1[c]["agg_tps"]["median"] else None for c in r1}
            out["models"][key] = {"path": str(path), "file": path.name, "size_bytes": path.stat().st_size, "max_tokens": max_tokens,
                                  "reference": ref, "servers": summary, "replica_scaling": scaling, "memory": memory}
        finally:
            for s in servers:
                s.stop()
    return out


# ---- memory and CLI latency -------------------------------------------------------------------


def spawn_idle(dh: h.DaemonHome) -> dict:
    """Start the daemon detached (as `msting llm start` does) without waiting for a model: for
    a config that loads none (``llm_service.always_ready: false``). The first /health body."""
    (dh.home / "logs").mkdir(parents=True, exist_ok=True)
    with open(dh.home / "logs" / "daemon.out", "ab") as out:
        subprocess.Popen([sys.executable, "-m", "msting.daemon"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True, env=dh.env)
    with dh.client(timeout=2) as c:
        return dh.wait_for(lambda: dh.socket.exists() and c.get("/health").json(), 60, 0.02, "the daemon's /health")


def memory_cli(p: dict) -> dict:
    dh = h.home("idle", {"llm_service": {"always_ready": False}})
    try:
        health = spawn_idle(dh)
        time.sleep(1.5)  # let it settle (warm spare started, caches warm)
        with dh.client() as c:
            st = h.status(c)
        daemon = h.memory_of(st["pid"])
        children = [m for m in (h.memory_of(ch.pid) for ch in psutil.Process(st["pid"]).children(recursive=True)) if m]
        out: dict[str, Any] = {"idle_daemon": {"readiness": health.get("readiness"), "daemon": daemon, "children": children, "config": dh.config,
                                               "models_loaded": [m["name"] for m in st["models"] if any(w.get("pid") for w in m["workers"])]}}
        steps = subprocess.run([sys.executable, "-c", IMPORT_RSS_CODE, *DAEMON_IMPORTS], capture_output=True, text=True, timeout=60)
        if steps.returncode == 0:  # where the daemon's RSS comes from: RSS after each import, in a fresh interpreter
            rss = json.loads(steps.stdout)
            out["import_rss"] = [{"module": m, "rss": v, "delta": v - (rss[i - 1][1] if i else 0)} for i, (m, v) in enumerate(rss)]
        print(f"  idle daemon: RSS {daemon['rss'] / 2**20:.1f} MB", flush=True)
        out["cli"] = cli_latency(dh, p["cli_runs"])
        return out
    finally:
        dh.cleanup(h.KEEP)


def cli_latency(dh: h.DaemonHome, runs: int) -> dict:
    """`msting llm status --json` against `python -c "import typer, httpx"`, interleaved pairs
    after one uncounted pair; msting compiled to bytecode first, as pip install does."""
    h.compile_msting()
    status_cmd, base_cmd = [*h.msting_command(), "llm", "status", "--json"], [sys.executable, "-c", "import typer, httpx"]
    times: dict[str, list[float]] = {"status": [], "imports": []}
    exit_codes: set[int] = set()
    for i in range(runs + 1):
        for name, cmd in [("status", status_cmd), ("imports", base_cmd)][:: -1 if i % 2 else 1]:
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env=dh.env, capture_output=True, text=True, timeout=60)
            dt = (time.perf_counter() - t0) * 1000.0
            if name == "status":  # exit code 0 only when the service is ready; the command worked when it printed JSON
                try:
                    json.loads(out.stdout)
                except ValueError:
                    raise h.BenchError(f"{' '.join(cmd)} exited {out.returncode} without JSON: {out.stderr[-500:]}") from None
                exit_codes.add(out.returncode)
            elif out.returncode != 0:
                raise h.BenchError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-500:]}")
            if i:
                times[name].append(dt)
    res = {"status_ms": h.spread(times["status"]), "imports_ms": h.spread(times["imports"]), "command": "msting llm status --json",
           "paired_ratio": h.spread([a / b for a, b in zip(times["status"], times["imports"])], 3), "status_exit_codes": sorted(exit_codes),
           "baseline": 'python -c "import typer, httpx"', "bytecode": "msting compiled to .pyc first (as pip install does)"}
    res["ratio"] = round(res["status_ms"]["median"] / res["imports_ms"]["median"], 3)
    imp = subprocess.run([sys.executable, "-X", "importtime", *(status_cmd[1:] if status_cmd[0] == sys.executable else status_cmd)],
                         env=dh.env, capture_output=True, text=True, timeout=60)
    top: dict[str, int] = {}  # cumulative us per imported module
    for line in imp.stderr.splitlines():
        cols = [x.strip() for x in line[len("import time:"):].split("|")] if line.startswith("import time:") else []
        if len(cols) == 3 and cols[1].isdigit():
            top[cols[2]] = max(top.get(cols[2], 0), int(cols[1]))
    res["importtime_top_ms"] = {k: round(v / 1000.0, 1) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:10]}
    print(f"  CLI: status --json {res['status_ms']['median']:.0f} ms vs bare imports {res['imports_ms']['median']:.0f} ms", flush=True)
    return res


# ---- report -------------------------------------------------------------------------------


def fnum(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def scaling_line(mm: dict) -> str:
    sc = mm.get("replica_scaling") or {}
    return ", ".join(fnum(sc.get(str(c))) for c in LEVELS)


def conc_blocks(run: dict) -> list:
    c = run.get("concurrency") or {}
    cores = run["machine"]["logical_cores"]
    rows, lines = [], []
    for key, mm in (c.get("models") or {}).items():
        fails: list[str] = []
        if mm.get("missing"):
            rows.append([key, "(model file not found)", *[""] * 9])
            continue
        label = f"{mm['file']} ({mm['max_tokens']} tok)"
        for name, s in mm["servers"].items():
            for clients in map(str, LEVELS):
                lv = s["levels"][clients]
                a, lat = lv["agg_tps"], lv["latency_ms"]
                rows.append([label, name, clients, *(f"{a[k]:.1f}" for k in ("median", "min", "max")), *(f"{lat[k]:.0f}" for k in ("p50", "p95", "max")),
                             f"{lv['complete']}/{lv['requests']}", f"{lv['text_matches']}/{lv['requests']}"])
            failed = [f for lv in s["levels"].values() for f in lv.get("failures", [])]
            if failed:
                fails.append(f"{name} [{mm['file']}]: failed replies, e.g. {failed[:2]}.")
        if not c.get("llama_server_cpp"):
            rows.append([label, "llama-server (C++)", "-", "not found on PATH", *[""] * 7])
        ref = mm["reference"]
        lines.append(f"{mm['file']}: in-process reference {ref['completion_tokens']} tokens (finish_reason {ref['finish_reason']}) at "
                        f"{ref['tps']:.0f} tok/s with 1 thread; replicas 2 ÷ replicas 1 aggregate tokens/s at 1/2/4/8 clients: "
                        f"{scaling_line(mm)} (target ≥ {TARGET_REPLICA_SCALING} where cores allow: this machine has {cores} logical cores, "
                        f"so 2 single-threaded workers can use both, but then the daemon and the clients compete with them for the same cores).")
        lines += fails
    cpp = c.get("llama_server_cpp")
    return [f"**Latest run:** `bench/run.py` ({run['mode']}, {run['finished_at']}) on {r.machine_line(run['machine'])}.",
            f"- **This run:** {', '.join(map(str, LEVELS))} concurrent clients, each sending {c.get('requests_per_client')} requests back to back; "
            f"{c.get('reps')} interleaved repetitions of every (clients, server) cell.\n- **llama.cpp's C++ `llama-server`:** "
            + (f"`{cpp}`." if cpp else "**not found on PATH, so it is not in this run** (install llama.cpp and put `llama-server` on "
                                       "PATH to include it; the suite starts it by itself; the decode and time-to-first-token tables "
                                       "of the overhead section below never include it)."),
            r.Table(["model", "server", "clients", "agg tok/s median", "min", "max", "latency p50 ms", "p95 ms", "max ms", "complete",
                     "same text"], rows, "llr"), r.bullets(lines)]


def mem_blocks(run: dict) -> list:
    mc = run.get("memory_cli") or {}
    idle, cli, ir = mc.get("idle_daemon"), mc.get("cli"), mc.get("import_rss")
    rows = []

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v / 2**20:.1f}"

    if idle:
        d = idle["daemon"]
        rows.append(["daemon, no model loaded (`llm_service.always_ready: false`)", mb(d["rss"]), mb(d["uss"]), mb(d["pss"]), "", "",
                     f"RSS <= {TARGET_DAEMON_RSS_MB:g} MB", r.yes(d["rss"] / 2**20 <= TARGET_DAEMON_RSS_MB)])
        rows += [[f"↳ its child `{ch['cmd']}` (warm spare worker, no model)", mb(ch["rss"]), mb(ch["uss"]), mb(ch["pss"]), "", "", "", ""]
                 for ch in idle.get("children", [])]
    for mm in ((run.get("concurrency") or {}).get("models") or {}).values():
        mem = mm.get("memory")
        for name, s in (mem or {}).get("servers", {}).items():
            n = len(s["processes"])
            rows.append([f"{name}: {'workers' if 'msting' in name else 'server'} ({n} process{'es' if n > 1 else ''}) "
                         f"[{mm['file']}, {mem['model_size_bytes'] / 2**20:.1f} MB]", mb(s["rss"]), mb(s["uss"]), mb(s["pss"]),
                         f"{s['rss_over_file']:.2f}", f"{s['pss_over_file']:.2f}", "", ""])
            if s.get("daemon"):
                rows.append(["↳ its daemon", *(mb(s["daemon"][k]) for k in ("rss", "uss", "pss")), "", "", "", ""])
    out = [f"**Latest run:** `bench/run.py` ({run['mode']}, {run['finished_at']}) on {r.machine_line(run['machine'])}.",
           r.Table(["measurement", "RSS MB", "USS MB", "PSS MB", "÷ model file (RSS)", "÷ model file (PSS)", "target", "met"], rows)]
    if ir:
        out.append("Where a daemon's RSS comes from: RSS of a fresh interpreter after each import, in this order (MB, increment): "
                   + ", ".join(f"{x['module']} {x['rss'] / 2**20:.1f} (+{x['delta'] / 2**20:.1f})" if i else f"bare python {x['rss'] / 2**20:.1f}"
                               for i, x in enumerate(ir)) + ".")
    if cli:
        sm, im, pr = cli["status_ms"], cli["imports_ms"], cli["paired_ratio"]
        out += [f"**CLI latency**: wall time of `{cli['command']}` (`.venv/bin/msting`, the daemon above running; its exit code(s) "
                f"{cli.get('status_exit_codes')}: it reports that no model is loaded) against `{cli['baseline']}` with the same interpreter, "
                f"{sm['n']} interleaved pairs after one uncounted pair; {cli.get('bytecode')}.",
                r.Table(["command", "n", "median ms", "min", "max", "target", "met"], [
                    ["`msting llm status --json`", sm["n"], *(f"{sm[k]:.1f}" for k in ("median", "min", "max")), "", ""],
                    ["`python -c \"import typer, httpx\"`", im["n"], *(f"{im[k]:.1f}" for k in ("median", "min", "max")), "", ""],
                    ["ratio of medians (paired ratios: min / max)", "", f"{cli['ratio']:.3f}", f"{pr['min']:.3f}", f"{pr['max']:.3f}",
                     f"<= {TARGET_CLI_RATIO}", r.yes(cli["ratio"] <= TARGET_CLI_RATIO)]])]
        if cli.get("importtime_top_ms"):
            out.append("`python -X importtime` of the status command, cumulative ms per top-level package: "
                       + ", ".join(f"{k} {v}" for k, v in cli["importtime_top_ms"].items()) + ".")
    return out


CONCURRENCY = SimpleNamespace(KEY="concurrency", TITLE="## Concurrent clients, against llama_cpp.server", PROFILES=CONC_PROFILES,
                              WHOLE_RUN=True, bench=lambda p, res: concurrency(p), blocks=conc_blocks)
MEMORY = SimpleNamespace(KEY="memory_cli", TITLE="## Memory and CLI latency", PROFILES=MEM_PROFILES, WHOLE_RUN=True,
                         bench=lambda p, res: memory_cli(p), blocks=mem_blocks)

if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "memory_cli", "concurrency", *sys.argv[1:]]))
