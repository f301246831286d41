#!/usr/bin/env python3
"""Batched decoding: msting (``parallel`` slots per worker, replicas, its defaults) against
llama.cpp's own C++ ``llama-server`` (``-np`` slots, ``-t`` threads; built by bench/cpp_peer.py)
and ``python -m llama_cpp.server``, on stories260K and a generated 180M-parameter F16 model:
single-stream tok/s, aggregate tok/s at 1, 2, 4 and 8 clients, time to first token at 4
clients, RSS; every server up for the whole model, the rounds interleaved, in one run
(docs/benchmarks.md explains the method). ``bench/batching.py [--quick] [--param K=V ...]`` is
``bench/run.py --only batching ...``; e.g. a smoke run of two servers on one model:

    bench/batching.py --quick --param 'models=[["realistic", 16]]' 'servers=["msting (defaults)", "-t 2 -np 4"]'
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import cpp_peer
import harness as h
import report as r
from overhead import ForeignMeter
from proxy import Engine
from suite import spawn_idle

KEY = "batching"
TITLE = "## Batched decoding: msting against llama.cpp's llama-server"
PROMPT = "Once upon a time"
N_CTX = 2048  # tokens per sequence (slot); llama-server's -c is split over its -np slots, so it gets -np x this
PAUSE_SEC = 0.3  # between two cells: the previous server's threads stop spinning
TTFT_CLIENTS = 4
TARGET_SINGLE = 0.95  # 180M single stream over llama-server -np 1 at its best -t
TARGET_AGG = 0.90  # 180M aggregate at 4 and 8 clients over llama-server -np = clients at its best -t
TARGET_STORIES_SINGLE = 1.0  # stories260K single stream over llama-server -t 1 -np 1
TARGET_MEMORY_SLACK = 1.10  # parallel 4: weights + 4 x KV cache + 10 %
PLOT = "img/batching.png"
MODELS = {"stories260K": "stories260K", "realistic": f"{h.REALISTIC_NAME} (generated, F16)"}
PROFILES = {  # models: [key, max_tokens]; servers: None = all, else names or parts of names
    "quick": {"models": [["stories260K", 64], ["realistic", 24]], "rounds": 1, "levels": [1, 4], "ttft_requests_per_client": 1,
              "servers": None, "build_peer": True},
    "full": {"models": [["stories260K", 256], ["realistic", 64]], "rounds": 3, "levels": [1, 2, 4, 8], "ttft_requests_per_client": 2,
             "servers": None, "build_peer": True},
}


@dataclasses.dataclass
class Spec:
    name: str
    kind: str  # msting | llama-server | llama_cpp.server
    config: dict  # msting: its llm config; llama-server: threads, parallel; llama_cpp.server: threads


def specs(parallel_ok: bool) -> tuple[list[Spec], list[str]]:
    """Every server of the matrix, and why some are left out."""
    out = [Spec("msting (defaults)", "msting", {})]
    skipped = []
    for n in (1, 4, 8):
        if parallel_ok:
            out.append(Spec(f"msting parallel {n}", "msting", {"parallel": n}))
        else:
            skipped.append(f"msting parallel {n}: this msting has no `parallel` setting")
    out.append(Spec("msting replicas 2, n_threads 1", "msting", {"replicas": 2, "n_threads": 1, **({"parallel": 1} if parallel_ok else {})}))
    out += [Spec(f"llama-server -t {t} -np {n}", "llama-server", {"threads": t, "parallel": n}) for t in (1, 2) for n in (1, 4, 8)]
    out.append(Spec("llama_cpp.server -t 1", "llama_cpp.server", {"threads": 1}))
    return out, skipped


def parallel_supported() -> bool:
    from msting.config.schema import LLMConfig

    return any(f.name == "parallel" for f in dataclasses.fields(LLMConfig))


def wanted(spec: Spec, names: list[str] | None) -> bool:
    return names is None or any(n == spec.name or n in spec.name for n in names)


# ---- the servers ----------------------------------------------------------------------------


class CppServer(h.CppLlamaServer):
    """llama-server with `parallel` slots of N_CTX tokens each (-c is their total)."""

    def __init__(self, binary: Path, model: str, threads: int, parallel: int):
        self.binary, self.parallel = binary, parallel
        super().__init__(model, n_ctx=N_CTX * parallel, n_threads=threads)

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        return [str(self.binary), "-m", model, "-t", str(n_threads), "-tb", str(n_threads), "-c", str(n_ctx), "-np", str(self.parallel),
                "--host", "127.0.0.1", "--port", str(self.port)]

    def facts(self) -> dict:
        """What its log says of its slots and KV cache."""
        try:
            log = (self.dir / "server.log").read_text(errors="replace")
        except OSError:
            return {}
        out: dict[str, Any] = {}
        for key, pattern in (("kv_mib", r"KV buffer size\s*=\s*([\d.]+) MiB"), ("n_ctx_seq", r"n_ctx_seq\s*=\s*(\d+)"),
                             ("n_slots", r"initializing slots, n_slots = (\d+)"), ("n_threads", r"n_threads = (\d+)")):
            m = re.search(pattern, log)
            if m:
                out[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
        return out


class Served:
    """One server of the matrix, started; `pids()` are its serving processes."""

    def __init__(self, spec: Spec, path: Path, binary: Path | None):
        self.spec, self.name, self.kind = spec, spec.name, spec.kind
        self.body_extra: dict = {}
        self.home, self.srv = None, None
        t0 = time.monotonic()
        if spec.kind == "msting":
            label = "bat-" + re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-")
            self.home = h.home(label, {"llm": {"model": str(path), "n_ctx": N_CTX, **spec.config}})
            # the daemon is this process's child (`msting llm start` detaches it): the bench's process tree
            # holds every server it measures, as the quiet-machine tooling expects
            spawn_idle(self.home)
            with self.home.client() as c:
                self.home.wait_for(lambda: every_worker_ready(c), 300, 0.1, f"{spec.name}: every worker ready")
            self.url = self.home.url
        elif spec.kind == "llama-server":
            assert binary is not None
            self.srv = CppServer(binary, str(path), spec.config["threads"], spec.config["parallel"])
        else:
            self.srv = Engine(str(path), n_ctx=N_CTX, n_threads=spec.config["threads"])
            self.body_extra = {"repeat_penalty": 1.0}  # its default is 1.1; msting and llama-server use 1.0
        if self.srv is not None:
            self.url = self.srv.url
        self.start_sec = round(time.monotonic() - t0, 2)

    def pids(self) -> tuple[list[int], list[int]]:
        """(the model's processes: msting's workers or the server, the others: msting's daemon and warm spare)."""
        if self.home is None:
            return [self.srv.pid], []
        with self.home.client() as c:
            st = h.status(c)
        workers = [w["pid"] for m in st["models"] for w in m["workers"] if w.get("pid")]
        return workers, [p.pid for p in self.home.our_processes() if p.pid not in workers]

    def info(self) -> dict:
        """The settings in effect: msting's status of its model; a peer's threads and slots (and what its log says)."""
        if self.home is None:
            return {**self.spec.config, **(self.srv.facts() if isinstance(self.srv, CppServer) else {})}
        with self.home.client() as c:
            m = h.status(c)["models"][0]
        keep = ("n_ctx", "n_threads", "parallel", "threads", "replicas", "load_ms", "backend", "memory")
        return {**{k: m[k] for k in keep if k in m}, "workers": [{k: v for k, v in w.items() if k != "rss_bytes"} for w in m["workers"]]}

    def stop(self) -> None:
        if self.home is not None:
            self.home.cleanup(h.KEEP)
        elif self.srv is not None:
            self.srv.stop(h.KEEP)


# ---- the load -------------------------------------------------------------------------------


def every_worker_ready(c: Any) -> bool:
    m = h.status(c)["models"][0]
    if m.get("fatal") or m.get("state") == "failed":
        raise h.BenchError(f"the model failed to load: {m.get('last_error')}")
    return m["state"] == "ready" and bool(m["workers"]) and all(w.get("verified") and w.get("pid") for w in m["workers"])


def first_text(event: bytes) -> bool:
    """Whether one SSE event carries generated text; raises on an error event."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]" or not payload:
                continue
            obj = json.loads(payload)
            if "error" in obj:
                raise RuntimeError(f"stream error: {str(obj['error'])[:200]}")
            if any(ch.get("text") for ch in obj.get("choices") or []):
                return True
    return False


async def request(session: Any, url: str, body: dict, stream: bool) -> dict:
    """One POST /v1/completions: its wall time, and the time to its first text when streamed
    (the rest of a stream is read without being parsed: a cheap client)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"ok": False}
    try:
        async with session.post(url + "/v1/completions", json={**body, "stream": True} if stream else body) as resp:
            if resp.status != 200:
                out["error"] = f"HTTP {resp.status}: {(await resp.text())[:200]}"
            elif not stream:
                j = json.loads(await resp.read())
                ch = (j.get("choices") or [{}])[0]
                out.update(ok=True, tokens=(j.get("usage") or {}).get("completion_tokens"), finish=ch.get("finish_reason"), text=ch.get("text"))
            else:
                buf, tail, first = b"", b"", None
                async for chunk in resp.content.iter_any():
                    if first is None:
                        buf = (buf + chunk).replace(b"\r\n", b"\n")
                        while first is None and b"\n\n" in buf:
                            event, buf = buf.split(b"\n\n", 1)
                            if first_text(event):
                                first = time.perf_counter()
                    tail = (tail + chunk)[-64:]
                out.update(ok=first is not None and b"[DONE]" in tail, ttft=None if first is None else first - t0)
                if not out["ok"]:
                    out["error"] = "stream without text" if first is None else "stream without [DONE]"
    except Exception as exc:  # noqa: BLE001 - a failed request is a result
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
    out["wall"] = time.perf_counter() - t0
    return out


async def cell(session: Any, url: str, body: dict, clients: int, per_client: int, stream: bool) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests back to back."""
    async def client() -> list[dict]:
        return [await request(session, url, body, stream) for _ in range(per_client)]

    t0 = time.perf_counter()
    replies = [x for rs in await asyncio.gather(*(client() for _ in range(clients))) for x in rs]
    wall = time.perf_counter() - t0
    tokens = sum(x.get("tokens") or 0 for x in replies if x["ok"])
    return {"clients": clients, "wall": wall, "tokens": tokens, "agg_tps": tokens / wall, "replies": replies}


def plan(levels: list[int], rnd: int) -> list[str]:
    """The cells of one round: the levels (their order alternating) and the TTFT cell ("ttft",
    first or last in turn)."""
    order = [str(c) for c in (levels if rnd % 2 == 0 else levels[::-1])]
    return order + ["ttft"] if rnd % 2 == 0 else ["ttft"] + order


async def measure(servers: list[Served], p: dict, max_tokens: int, key: str) -> tuple[dict[str, dict[str, list[dict]]], list[dict]]:
    """Every cell of every round on every server: (the cells by server and cell, each round's
    seconds and the cores other programs used meanwhile)."""
    import aiohttp

    rng = random.Random(20261201)
    meter = ForeignMeter([os.getpid(), *(pid for s in servers for pids in s.pids() for pid in pids)])
    rounds: list[dict] = []
    cells: dict[str, dict[str, list[dict]]] = {s.name: {} for s in servers}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=900)
    # a new connection per request, for every server alike: llama-server (cpp-httplib) closes a keep-alive
    # connection after 5 requests, and a POST sent on it just then fails ("Server disconnected") without being served
    sessions = {s.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, force_close=True), timeout=timeout) for s in servers}
    try:
        for s in servers:  # warm-up, not counted: connections, the first decode, a stream
            body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, **s.body_extra}
            for stream in (False, True):
                x = await request(sessions[s.name], s.url, body, stream)
                if not x["ok"]:
                    raise h.BenchError(f"{s.name}: warm-up request failed: {x.get('error')}")
        for rnd in range(p["rounds"]):
            t0 = time.monotonic()
            meter.start()
            for what in plan(p["levels"], rnd):
                order = list(servers)
                rng.shuffle(order)
                for s in order:
                    await asyncio.sleep(PAUSE_SEC)
                    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, **s.body_extra}
                    if what == "ttft":
                        got = await cell(sessions[s.name], s.url, body, TTFT_CLIENTS, p["ttft_requests_per_client"], True)
                    else:
                        got = await cell(sessions[s.name], s.url, body, int(what), 1, False)
                    cells[s.name].setdefault(what, []).append({**got, "round": rnd})
            rounds.append({"round": rnd, "sec": round(time.monotonic() - t0, 1), "foreign_cores": meter.stop()})
            print(f"  [{key}] round {rnd + 1}/{p['rounds']} ({rounds[-1]['sec']:.0f} s, others used {rounds[-1]['foreign_cores']:.2f} cores): "
                  + ", ".join(f"{s.name} {cells[s.name][str(p['levels'][-1])][-1]['agg_tps']:.0f}" for s in servers)
                  + f" tok/s at {p['levels'][-1]} clients", flush=True)
    finally:
        for session in sessions.values():
            await session.close()
    return cells, rounds


# ---- one model ------------------------------------------------------------------------------


def model_facts(path: Path) -> dict:
    """Size, parameters, and the KV cache of one N_CTX sequence (F16 K and V, llama.cpp's default)."""
    from msting.models.gguf_file import read_gguf_info

    info = read_gguf_info(path)
    md = info.metadata
    arch = md.get("general.architecture", "llama")
    n_layer, n_embd = md.get(f"{arch}.block_count"), md.get(f"{arch}.embedding_length")
    heads, heads_kv = md.get(f"{arch}.attention.head_count"), md.get(f"{arch}.attention.head_count_kv")
    heads_kv = heads_kv or heads
    kv = 2 * n_layer * N_CTX * (n_embd * heads_kv // heads) * 2 if n_layer and n_embd and heads else None
    return {"file": path.name, "path": str(path), "size_bytes": path.stat().st_size, "n_params": info.n_params, "n_layer": n_layer,
            "n_embd": n_embd, "kv_bytes_per_seq": kv, "n_ctx_per_seq": N_CTX}


def memory(servers: list[Served]) -> dict[str, dict]:
    """RSS of every server's processes, after the load (its KV caches touched)."""
    out = {}
    for s in servers:
        model_pids, other_pids = s.pids()
        model = [m for m in map(h.memory_of, model_pids) if m]
        other = [m for m in map(h.memory_of, other_pids) if m]
        out[s.name] = {"rss": sum(m["rss"] for m in model + other), "model_rss": sum(m["rss"] for m in model),
                       "model_uss": sum(m["uss"] or 0 for m in model), "processes": model + other}
    return out


def summarize(cells: dict[str, list[dict]], levels: list[int]) -> dict:
    out: dict[str, Any] = {"levels": {}}
    for c in map(str, levels):
        runs = cells.get(c) or []
        replies = [x for run in runs for x in run["replies"]]
        lat = [x["wall"] * 1000.0 for x in replies if x["ok"]]
        out["levels"][c] = {"agg_tps": h.spread([x["agg_tps"] for x in runs], 1), "per_round": [round(x["agg_tps"], 2) for x in runs],
                            "latency_ms": {q: round(h.percentile(lat, n), 1) if lat else None for q, n in (("p50", 50), ("p95", 95))},
                            "requests": len(replies), "ok": sum(x["ok"] for x in replies),
                            "tokens": sorted({x.get("tokens") for x in replies if x["ok"]}, key=str),
                            "finish": sorted({str(x.get("finish")) for x in replies if x["ok"]}),
                            "failures": [x.get("error") for x in replies if not x["ok"]][:3]}
    out["texts"] = sorted({x.get("text") or "" for c in map(str, levels) for run in cells.get(c) or [] for x in run["replies"] if x["ok"]})
    runs = cells.get("ttft") or []
    replies = [x for run in runs for x in run["replies"]]
    ms = [x["ttft"] * 1000.0 for x in replies if x["ok"]]
    out["ttft"] = {"n": len(ms), "requests": len(replies), **{q: round(h.percentile(ms, n), 1) if ms else None for q, n in (("p50", 50), ("p95", 95))},
                   "max": round(max(ms), 1) if ms else None, "failures": [x.get("error") for x in replies if not x["ok"]][:3]}
    return out


def bench_model(key: str, path: Path, max_tokens: int, p: dict, todo: list[Spec], binary: Path | None) -> dict:
    res: dict[str, Any] = {"label": MODELS[key], "model": model_facts(path), "max_tokens": max_tokens, "servers": {}, "not_started": {}}
    servers: list[Served] = []
    try:
        for spec in todo:
            if spec.kind == "llama-server" and binary is None:
                continue
            try:
                servers.append(Served(spec, path, binary))
                print(f"  [{key}] {spec.name} up in {servers[-1].start_sec:.1f} s", flush=True)
            except Exception as exc:  # noqa: BLE001 - one server that does not start must not lose the others
                res["not_started"][spec.name] = f"{type(exc).__name__}: {exc}"[:600]
                print(f"  [{key}] {spec.name} did not start: {res['not_started'][spec.name][:300]}", flush=True)
        if not servers:
            raise h.BenchError(f"{key}: no server started")
        t0 = time.monotonic()
        cells, res["rounds"] = asyncio.run(measure(servers, p, max_tokens, key))
        res["measure_sec"] = round(time.monotonic() - t0, 1)
        mem = memory(servers)
        for s in servers:
            res["servers"][s.name] = {"kind": s.kind, "config": s.spec.config, "start_sec": s.start_sec, "info": s.info(),
                                      "memory": mem[s.name], **summarize(cells[s.name], p["levels"])}
    finally:
        for s in servers:
            s.stop()
    res["targets"] = targets(key, res)
    return res


def bench(p: dict, res: dict) -> dict:
    binary, peer = cpp_peer.binary(build=p.get("build_peer", True))
    ok = parallel_supported()
    every, skipped = specs(ok)
    todo = [s for s in every if wanted(s, p.get("servers"))]
    out: dict[str, Any] = {"peer": peer, "parallel_supported": ok, "skipped": skipped, "servers": [s.name for s in todo], "models": {}}
    if binary is None:
        print(f"  no llama-server: {peer.get('error')}", flush=True)
    for key, max_tokens in p["models"]:
        path = h.STORIES if key == "stories260K" else h.realistic_model()
        if not path.is_file():
            out["models"][key] = {"missing": str(path)}
            continue
        ok_, got = h.attempt(lambda: bench_model(key, path, max_tokens, p, todo, binary), res["errors"], section=KEY, part=key)
        if ok_:
            out["models"][key] = got
    return out


# ---- the targets ----------------------------------------------------------------------------


def median(m: dict, name: str, level: str) -> float | None:
    s = m["servers"].get(name)
    return ((s or {}).get("levels", {}).get(level) or {}).get("agg_tps", {}).get("median")


def best_peer(m: dict, parallel: int, level: str, threads: tuple[int, ...] = (1, 2)) -> str | None:
    """The llama-server -np `parallel` with the highest median at `level` clients, over -t."""
    got = [(median(m, f"llama-server -t {t} -np {parallel}", level), f"llama-server -t {t} -np {parallel}") for t in threads]
    got = [g for g in got if g[0] is not None]
    return max(got)[1] if got else None


def ratio(m: dict, ours: str, peer: str | None, level: str) -> dict | None:
    a, b = median(m, ours, level), median(m, peer, level) if peer else None
    if a is None or not b:
        return None
    pa, pb = (m["servers"][n]["levels"][level]["per_round"] for n in (ours, peer))
    paired = h.spread([x / y for x, y in zip(pa, pb) if y], 3)
    return {"ours": a, "peer": b, "peer_name": peer, "ratio": round(a / b, 3), "paired_min": paired["min"], "paired_max": paired["max"]}


def targets(key: str, m: dict) -> list[dict]:
    """The speed targets this model is judged on, with msting's default settings."""
    ours = "msting (defaults)"
    out: list[dict] = []

    def add(what: str, got: dict | None, target: float, label: str) -> None:
        if got:
            out.append({"what": what, **got, "target": target, "target_text": label, "met": got["ratio"] >= target})

    if key == "realistic":
        add("single stream, msting defaults ÷ llama-server -np 1 at its best -t", ratio(m, ours, best_peer(m, 1, "1"), "1"),
            TARGET_SINGLE, f">= {TARGET_SINGLE}")
        for c in ("4", "8"):
            add(f"aggregate at {c} clients, msting defaults ÷ llama-server -np {c} at its best -t", ratio(m, ours, best_peer(m, int(c), c), c),
                TARGET_AGG, f">= {TARGET_AGG}")
        peer = best_peer(m, TTFT_CLIENTS, str(TTFT_CLIENTS))
        a, b = (m["servers"].get(n, {}).get("ttft", {}).get("p95") for n in (ours, peer))
        if a is not None and b is not None:
            out.append({"what": f"TTFT p95 at {TTFT_CLIENTS} clients, msting defaults vs {peer}", "ours": a, "peer": b, "peer_name": peer,
                        "ratio": round(a / b, 3), "target": 1.0, "target_text": f"<= {peer}'s", "met": a <= b, "unit": "ms"})
        s4 = m["servers"].get("msting parallel 4")
        kv, size = m["model"]["kv_bytes_per_seq"], m["model"]["size_bytes"]
        if s4 and kv:
            bound = (size + 4 * kv) * TARGET_MEMORY_SLACK
            out.append({"what": "memory at parallel 4: the worker's RSS ÷ (weights + 4 × KV cache)", "ours": s4["memory"]["model_rss"],
                        "peer": size + 4 * kv, "ratio": round(s4["memory"]["model_rss"] / (size + 4 * kv), 3), "target": TARGET_MEMORY_SLACK,
                        "target_text": f"<= {TARGET_MEMORY_SLACK:.2f}", "met": s4["memory"]["model_rss"] <= bound, "unit": "bytes"})
    else:
        add("single stream, msting defaults ÷ llama-server -t 1 -np 1", ratio(m, ours, "llama-server -t 1 -np 1", "1"),
            TARGET_STORIES_SINGLE, f">= {TARGET_STORIES_SINGLE}")
    return out


# ---- report ---------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def target_value(t: dict) -> str:
    if t.get("unit") == "ms":
        return f"{t['ours']:.0f} ms vs {t['peer']:.0f} ms"
    if t.get("unit") == "bytes":
        return f"{t['ratio']:.3f} ({t['ours'] / 2**20:.0f} MiB vs {t['peer'] / 2**20:.0f} MiB)"
    return (f"{t['ratio']:.3f} ({t['ours']:.1f} vs {t['peer']:.1f} tok/s, {t['peer_name']}; paired {fmt(t['paired_min'], 2)}"
            f"-{fmt(t['paired_max'], 2)})")


def summary_rows(res: dict) -> list[list[str]]:
    rows = []
    for key, m in (res.get("models") or {}).items():
        for t in m.get("targets") or []:
            rows.append([f"{t['what']} [{MODELS[key]}]", target_value(t), t["target_text"], r.yes(t["met"])])
        if not m.get("missing") and not any(s["kind"] == "llama-server" for s in m.get("servers", {}).values()):
            rows.append([f"speed targets against llama-server [{MODELS[key]}]", "no llama-server in this run", "", "-"])
    return rows


def server_note(name: str, s: dict) -> str:
    i = s.get("info") or {}
    if s["kind"] == "msting":
        w = (i.get("workers") or [{}])[0]  # the threads each worker chose, when n_threads is automatic
        th = next((x for x in (i.get("threads"), w.get("threads")) if isinstance(x, dict)), {})
        bits = [f"n_threads {i.get('n_threads') or w.get('n_threads') or th.get('chosen')}"]
        if "parallel" in i:
            bits.append(f"parallel {i['parallel']}")
        if i.get("replicas", 1) != 1:
            bits.append(f"replicas {i['replicas']}")
        if th.get("reason"):
            bits.append(f"threads {th.get('source')}: {th['reason']}")
        return ", ".join(bits)
    if s["kind"] == "llama-server":
        return ", ".join(f"{k} {v}" for k, v in i.items() if k not in ("threads", "parallel"))
    return ""


def model_rows(m: dict, levels: list[int]) -> list[list[str]]:
    rows = []
    for name, s in m["servers"].items():
        lv = s["levels"]
        cells = [f"{fmt(lv[str(c)]['agg_tps']['median'])} ({fmt(lv[str(c)]['agg_tps']['min'], 0)}-{fmt(lv[str(c)]['agg_tps']['max'], 0)})"
                 for c in levels]
        t = s["ttft"]
        ok = sum(x["ok"] for x in lv.values()) + t["n"]
        asked = sum(x["requests"] for x in lv.values()) + t["requests"]
        rows.append([name, *cells, f"{fmt(t['p50'], 0)} / {fmt(t['p95'], 0)}", fmt(s["memory"]["rss"] / 2**20, 0),
                     fmt(s["memory"]["model_rss"] / 2**20, 0), f"{ok}/{asked}", server_note(name, s)])
    return rows


def blocks(res: dict) -> list:
    p = res["params"]
    levels = p["levels"]
    peer = res.get("peer") or {}
    out: list[Any] = [r.run_line(res, "bench/run.py --only batching")]
    out.append(r.bullets([
        f"**Load:** {', '.join(map(str, levels))} concurrent clients (asyncio + aiohttp in the bench process, over TCP, a new "
        f"connection per request for every server), each "
        f"sending one non-streamed `POST /v1/completions` (prompt {PROMPT!r}, `temperature` 0, `max_tokens` per model below), all "
        f"at once; aggregate tok/s = the replies' completion tokens ÷ the wall time from the first request to the last reply; "
        f"single stream = 1 client. Time to first token: {TTFT_CLIENTS} clients each sending {p['ttft_requests_per_client']} "
        f"streamed request(s) back to back (the first SSE event with text). {p['rounds']} round(s); in each, every cell (clients level, "
        f"or the TTFT cell) runs on every server in a shuffled order, the levels' order alternating; one uncounted request and "
        f"one stream per server first.",
        f"**Servers** (all up for the whole model; {N_CTX} tokens of context per sequence everywhere): msting under a fresh "
        f"`MSTING_HOME` with the shipped defaults except the settings named (`llm.model`, `llm.n_ctx` {N_CTX}); "
        f"`llama-server -t T -tb T -np N -c N×{N_CTX}`; `python -m llama_cpp.server --n_threads 1 --interrupt_requests False` "
        f"(`repeat_penalty` 1.0 sent, as the others use).",
        "**llama-server:** " + (f"`{peer.get('path')}`, built from {peer.get('from')} ({peer.get('sdist')}) with "
                                f"`{peer.get('configure')}` and `{peer.get('build')}` (bench/cpp_peer.py); "
                                f"`--version`: {' '.join(peer.get('version') or [])}." if peer.get("path") else
                                f"**not in this run: {peer.get('error')}**"),
        "**RSS:** after the load, psutil; \"all\" = every process of the server (msting: the daemon, its workers and its warm "
        "spare worker), \"model\" = the process(es) holding the model (msting's workers, the server itself).",
        *res.get("skipped", []),
    ]))
    rows = summary_rows(res)
    if rows:
        out += ["**Speed targets** (msting's default settings; ratios of medians, paired = the same round's ratio, min-max):",
                r.Table(["measurement", "this run", "target", "met"], rows, "l")]
    for key, m in (res.get("models") or {}).items():
        if m.get("missing"):
            out.append(f"**{MODELS[key]}:** {m['missing']} not found.")
            continue
        mf = m["model"]
        out += [f"**{MODELS[key]}** (`{mf['file']}`, {h.human_params(mf['n_params'])} parameters, {mf['size_bytes'] / 2**20:.1f} MiB; "
                f"KV cache {fmt((mf['kv_bytes_per_seq'] or 0) / 2**20)} MiB per {N_CTX}-token sequence; `max_tokens` {m['max_tokens']}; "
                f"measured in {m.get('measure_sec', 0) / 60:.1f} min). Aggregate tok/s: median (min-max) over the rounds; TTFT at "
                f"{TTFT_CLIENTS} clients, ms:",
                r.Table(["server", *[f"{c} client{'s' if c > 1 else ''}" for c in levels], "TTFT p50 / p95", "RSS all MiB", "RSS model MiB",
                         "ok", "settings in effect"], model_rows(m, levels), "l" + "r" * (len(levels) + 4) + "l")]
        for name, why in m.get("not_started", {}).items():
            out.append(f"{name} did not start: {why.splitlines()[0][:300]}")
    out.append(f"![aggregate tok/s against clients]({PLOT})")
    return out + [r.notes(notes(res) + r.common_notes(res))]


def notes(res: dict) -> list[str]:
    out = []
    for key, m in (res.get("models") or {}).items():
        if m.get("missing"):
            continue
        toks = {name: lv["tokens"] for name, s in m["servers"].items() for lv in s["levels"].values()}
        counts = sorted({str(t) for ts in toks.values() for t in ts})
        out.append(f"{MODELS[key]}: completion tokens per reply {', '.join(counts)} (`max_tokens` {m['max_tokens']}). " + texts_line(m))
        fc = [x["foreign_cores"] for x in m.get("rounds", [])]
        if fc:
            out.append(f"{MODELS[key]}: other programs used {', '.join(f'{x:.2f}' for x in fc)} cores during the rounds (the machine's "
                       "busy time minus the bench's and its servers' own CPU time).")
        fails = [f"{n}: {f}" for n, s in m["servers"].items() for lv in [*s["levels"].values(), s["ttft"]] for f in lv["failures"]]
        if fails:
            out.append(f"{MODELS[key]}: failed requests, e.g. {'; '.join(fails[:3])}.")
    return out


def texts_line(m: dict) -> str:
    """Whether each server gave one text at every level, and which servers agree (temperature 0:
    a sequence's text must not depend on the others decoded with it)."""
    groups: dict[str, list[str]] = {}
    for name, s in m["servers"].items():
        if len(s["texts"]) == 1:
            groups.setdefault(s["texts"][0], []).append(name)
    several = [f"{n} ({len(s['texts'])})" for n, s in m["servers"].items() if len(s["texts"]) > 1]
    return (("Every server gave one text at every level" if not several else f"Servers with several texts over their replies: {', '.join(several)}")
            + "; servers giving the same text: " + " | ".join(", ".join(ns) for ns in groups.values()) + ".")


def plot(res: dict, folder: Path) -> list[str]:
    """Aggregate tok/s against clients, one panel per model; the files written, relative to the page."""
    plt = r.pyplot()
    if plt is None:
        return []
    models = {k: m for k, m in (res.get("models") or {}).items() if m.get("servers")}
    if not models:
        return []
    levels = res["params"]["levels"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    styles = {"msting": "-", "llama-server": "--", "llama_cpp.server": ":"}
    colors = plt.get_cmap("tab20").colors
    for ax, m in zip(axes[0], models.values()):
        for i, (name, s) in enumerate(m["servers"].items()):
            a = [s["levels"][str(c)]["agg_tps"] for c in levels]
            ax.errorbar(levels, [v["median"] for v in a], yerr=[[v["median"] - v["min"] for v in a], [v["max"] - v["median"] for v in a]],
                        marker="o", ms=4, capsize=2, ls=styles[s["kind"]], color=colors[(2 * i) % 20 + (2 * i) // 20],
                        lw=2.4 if name == "msting (defaults)" else 1.2, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set(xlabel="concurrent clients", ylabel="aggregate completion tokens/s")
        ax.set_title(f"{m['model']['file']} (max_tokens {m['max_tokens']})", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    mm = res["machine"]
    fig.suptitle(f"Aggregate throughput against clients: median, min-max ({mm['cpu']}, {mm['logical_cores']} cores)", fontsize=10)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / Path(PLOT).name, dpi=110)
    plt.close(fig)
    return [PLOT]


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", KEY, *sys.argv[1:]]))
