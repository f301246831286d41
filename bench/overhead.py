#!/usr/bin/env python3
"""Serving overhead: decode tokens/s, time to first token and CPU per request through msting
(a worker alone, the daemon over its Unix socket and TCP), against llama-cpp-python in
process and its own server (docs/benchmarks.md explains the method). Every timed call runs
in one client process spawned once. ``bench/overhead.py`` is ``bench/run.py --only overhead``."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import harness as h
import httpx
import report as r

KEY = "overhead"
TITLE = "## Overhead against llama-cpp-python in process"
PROMPT = "Once upon a time"
TTFT_MAX_TOKENS = 16
N_CTX = 2048
TARGET_RATIO_NONSTREAM = 0.95  # tokens/s over in-process create_completion, same stream mode
TARGET_RATIO_STREAM = 0.90
TARGET_TTFT_ADDED_MS = 2.0
# A round in which other programs used more than this many cores is "disturbed"; when
# enough rounds are quiet, the summaries use only the quiet ones.
QUIET_CORES = 0.10
TTFT_BLOCK = 10  # time-to-first-token iterations per measurement of the others' CPU use
PROFILES = {  # models: (key, max_tokens); "large" is harness.large_model()
    "quick": {"rounds": 3, "ttft_requests": 6, "warmup": 1, "max_pause_sec": 10, "models": [["stories260K", 256], ["large", 32]]},
    "full": {"rounds": 15, "ttft_requests": 100, "warmup": 2, "max_pause_sec": 120, "models": [["stories260K", 256], ["large", 128]]},
}
# path -> (label, stream?, where)
TPS_VARIANTS: dict[str, tuple[str, bool, str]] = {
    "inproc_cc": ("in process: create_completion", False, "inproc"),
    "inproc_cc_stream": ("in process: create_completion(stream=True)", True, "inproc"),
    "inproc_generate": ("in process: Llama.generate loop", False, "inproc"),
    "inproc_engine": ("in process: msting Engine.generate", False, "inproc"),
    "worker": ("msting worker alone (protocol over a socketpair)", False, "worker"),
    "worker_stream": ("msting worker alone, stream (token frames)", True, "worker"),
    "msting_uds": ("msting /v1/completions, Unix socket", False, "msting"),
    "msting_uds_stream": ("msting /v1/completions, Unix socket, stream", True, "msting"),
    "msting_tcp": ("msting /v1/completions, TCP", False, "msting"),
    "msting_tcp_stream": ("msting /v1/completions, TCP, stream", True, "msting"),
    "llamasrv": ("llama_cpp.server /v1/completions", False, "llamasrv"),
    "llamasrv_stream": ("llama_cpp.server /v1/completions, stream", True, "llamasrv"),
}
TTFT_VARIANTS: dict[str, str] = {
    "inproc_cc_stream": "in process: create_completion(stream=True), first chunk",
    "inproc_engine": "in process: msting Engine.generate, first piece",
    "worker_stream": "msting worker alone (socketpair, no daemon), first token frame",
    "msting_uds_stream": "msting, Unix socket, httpx",
    "msting_uds_raw": "msting, Unix socket, raw socket client",
    "msting_tcp_stream": "msting, TCP, httpx",
    "llamasrv_stream": "llama_cpp.server, TCP, httpx",
    # The clients' own share: a POST the daemon answers 400 at once (no worker involved),
    # timed to the whole answer. httpx minus raw is what httpx itself adds to a request.
    "reject_raw": "msting, Unix socket, raw socket client: a POST answered 400 at once (round trip)",
    "reject_httpx": "msting, Unix socket, httpx: a POST answered 400 at once (round trip)",
}
REJECT_BODY = {"model": "default", "prompt": 1, "max_tokens": TTFT_MAX_TOKENS}  # 'prompt' must be a string: 400
TTFT_TARGET_PATH = "msting_uds_raw"  # the daemon's share: one write for the request, bytes read as they come


# ---- the clients (in the client process) ---------------------------------------------------


def result(t0: float, ttft: float | None, text: str, chunks: int, tokens: int | None, finish: str | None) -> dict:
    """One timed call: its wall time from `t0` to now."""
    return {"wall": time.perf_counter() - t0, "ttft": ttft, "text": text, "chunks": chunks, "completion_tokens": tokens, "finish_reason": finish}


class CompletionStream:
    """A streamed /v1/completions as a client sees it: feed it each ``data:`` payload."""

    def __init__(self) -> None:
        self.first: float | None = None  # perf_counter() at the first piece of text
        self.parts: list[str] = []
        self.usage: dict | None = None
        self.finish: str | None = None

    def feed(self, payload: str | bytes) -> None:
        if payload in ("[DONE]", b"[DONE]"):
            return
        obj = json.loads(payload)
        if "error" in obj:
            raise RuntimeError(f"stream error: {obj['error']}")
        self.usage = obj.get("usage") or self.usage
        for ch in obj.get("choices") or []:
            if ch.get("text"):
                self.first = self.first or time.perf_counter()
                self.parts.append(ch["text"])
            self.finish = ch.get("finish_reason") or self.finish

    def result(self, t0: float) -> dict:
        return result(t0, None if self.first is None else self.first - t0, "".join(self.parts), len(self.parts),
                      (self.usage or {}).get("completion_tokens"), self.finish)


def raw_stream(conn: h.RawConn, body: dict) -> dict:
    """A streamed POST /v1/completions written by hand, timed from its first byte written."""
    stream, pending = CompletionStream(), [b""]

    def on_chunk(data: bytes) -> None:
        pending[0] += data
        while b"\n\n" in pending[0]:
            event, pending[0] = pending[0].split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    stream.feed(line[6:])

    try:
        reply = conn.request("POST", "/v1/completions", json.dumps(body).encode(), on_chunk=on_chunk)
    except BaseException:
        conn.close()
        raise
    if reply.status != 200 or not reply.complete or "chunked" not in reply.headers.get("transfer-encoding", ""):
        raise RuntimeError(f"raw stream: {reply.status} {reply.error}")
    return stream.result(reply.sent_at)


def http_stream(client: httpx.Client, body: dict, t0: float) -> dict:
    """A streamed POST /v1/completions read with httpx (timed from `t0`)."""
    stream = CompletionStream()
    with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                stream.feed(line[6:])
    return stream.result(t0)


def inproc_completion(llm: Any, prompt: str, n: int, stream: bool) -> dict:
    """``Llama.create_completion`` in this process: the baseline every path is compared with."""
    t0 = time.perf_counter()
    if not stream:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
        return result(t0, None, out["choices"][0]["text"], 1, out["usage"]["completion_tokens"], out["choices"][0]["finish_reason"])
    ttft, parts, finish = None, [], None
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True):
        ch = chunk["choices"][0]
        if ch.get("text"):
            ttft = ttft or time.perf_counter() - t0
            parts.append(ch["text"])
        finish = ch.get("finish_reason") or finish
    return result(t0, ttft, "".join(parts), len(parts), None, finish)


class DirectWorker:
    """A msting worker process (``python -m msting.worker``) driven over its socketpair with
    the daemon's own frames: the worker's share of the overhead, no daemon."""

    def __init__(self, name: str, path: str):
        from msting.worker import protocol

        self.protocol = protocol
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = {"name": name, "path": path, "n_ctx": N_CTX, "n_threads": 1, "n_gpu_layers": 0, "seed": 0, "embedding": False,
                "chat_format": None}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "msting.worker", "--fd", str(child.fileno()), "--spec", json.dumps(spec)],
                                         pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        finally:
            child.close()
        self.pid = self.proc.pid
        self.reader = self.sock.makefile("rb", buffering=1 << 16)
        self.seq = 0
        deadline = time.monotonic() + 60
        while (frame := self._frame())["type"] != "ready":
            if frame["type"] == "error" or time.monotonic() > deadline:
                raise RuntimeError(f"direct worker did not start: {frame}")

    def _frame(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the direct worker closed its socket")
        return json.loads(line)

    def run(self, prompt: str, n: int, stream: bool) -> dict:
        self.seq += 1
        rid = f"bench-{self.seq}"
        data = self.protocol.encode("generate", rid, prompt=prompt, max_tokens=n, temperature=0.0, top_p=0.95, stop=None, seed=None,
                                    presence_penalty=0.0, frequency_penalty=0.0, stream=stream)
        t0 = time.perf_counter()
        self.sock.sendall(data)
        ttft, parts = None, []
        while True:
            f = self._frame()
            if f.get("id") != rid:
                continue
            if f["type"] == "token" and f.get("text"):
                ttft = ttft or time.perf_counter() - t0
                parts.append(f["text"])
            elif f["type"] == "done":
                return result(t0, ttft, f.get("text") or "".join(parts), len(parts) or 1, f["usage"]["completion_tokens"], f.get("finish_reason"))
            elif f["type"] != "token":
                raise RuntimeError(f"direct worker: {f}")

    def close(self) -> None:
        for close in (self.reader.close, self.sock.close):
            with contextlib.suppress(OSError):
                close()
        try:
            self.proc.wait(10)  # EOF on its socket: the worker exits 0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Client:
    """Lives in the client process: the in-process models and every client."""

    def __init__(self, spec: dict):
        import llama_cpp

        from msting.worker.engine import Engine

        self.lib = llama_cpp
        self.models: dict[str, dict] = {}
        for key, m in spec["models"].items():
            llm = llama_cpp.Llama(m["path"], n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False)
            engine = Engine(m["path"], n_ctx=N_CTX, n_threads=1, n_threads_batch=1)
            engine.load()
            timeout = httpx.Timeout(120)
            self.models[key] = {
                "llm": llm, "vocab": llama_cpp.llama_model_get_vocab(llm.model), "engine": engine,
                "uds": httpx.Client(transport=httpx.HTTPTransport(uds=m["socket"]), base_url="http://msting", timeout=timeout),
                "tcp": httpx.Client(base_url=m["msting_url"], timeout=timeout), "srv": httpx.Client(base_url=m["llamasrv_url"], timeout=timeout),
                "raw": h.RawConn(("unix", m["socket"]), 60), "worker": DirectWorker(key, m["path"])}

    def close(self) -> None:
        for m in self.models.values():
            for k in ("uds", "tcp", "srv", "raw", "worker", "engine", "llm"):
                m[k].close()

    def inproc_generate(self, m: dict, n: int) -> dict:
        """The bare loop: tokenize as create_completion does, sample with its defaults, stop at
        EOG or n tokens, detokenize once at the end."""
        llm = m["llm"]
        t0 = time.perf_counter()
        prompt_tokens = llm.tokenize(PROMPT.encode("utf-8"), add_bos=True, special=True)
        out: list[int] = []
        ttft, finish = None, "length"
        gen = llm.generate(prompt_tokens, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0, temp=0.0, repeat_penalty=1.0)
        try:
            for tok in gen:
                ttft = ttft or time.perf_counter() - t0
                if self.lib.llama_vocab_is_eog(m["vocab"], tok):
                    finish = "stop"
                    break
                out.append(tok)
                if len(out) >= n:
                    break
        finally:
            gen.close()
        return result(t0, ttft, llm.detokenize(out, prev_tokens=prompt_tokens).decode("utf-8", errors="replace"), 1, len(out), finish)

    def inproc_engine(self, m: dict, n: int) -> dict:
        from msting.worker.engine import GenerationResult

        t0 = time.perf_counter()
        ttft, parts, res = None, [], None
        for ev in m["engine"].generate(prompt=PROMPT, max_tokens=n, temperature=0.0, top_p=0.95):
            if isinstance(ev, GenerationResult):
                res = ev
            elif ev.text:
                ttft = ttft or time.perf_counter() - t0
                parts.append(ev.text)
        assert res is not None
        return result(t0, ttft, "".join(parts), len(parts), res.completion_tokens, res.finish_reason)

    def http(self, client: httpx.Client, n: int, stream: bool, llamasrv: bool) -> dict:
        body: dict[str, Any] = {"prompt": PROMPT, "max_tokens": n, "temperature": 0.0}
        if llamasrv:
            body["repeat_penalty"] = 1.0  # its server defaults to 1.1; create_completion and msting use 1.0
        if stream:
            body.update(stream=True, **({} if llamasrv else {"stream_options": {"include_usage": True}}))
        t0 = time.perf_counter()
        if stream:
            return http_stream(client, body, t0)
        resp = client.post("/v1/completions", json=body)
        j = resp.json()
        wall = time.perf_counter() - t0
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {str(j)[:300]}")
        return {**result(t0, None, j["choices"][0]["text"], 1, j["usage"]["completion_tokens"], j["choices"][0]["finish_reason"]), "wall": wall}

    def run(self, variant: str, key: str, n: int) -> dict:
        m = self.models[key]
        if variant.startswith("inproc_cc"):
            return inproc_completion(m["llm"], PROMPT, n, variant.endswith("_stream"))
        if variant == "inproc_generate":
            return self.inproc_generate(m, n)
        if variant == "inproc_engine":
            return self.inproc_engine(m, n)
        if variant.startswith("worker"):
            return m["worker"].run(PROMPT, n, variant == "worker_stream")
        if variant.startswith("reject"):
            if variant == "reject_raw":
                reply = m["raw"].request("POST", "/v1/completions", json.dumps(REJECT_BODY).encode())
                wall, status = time.perf_counter() - reply.sent_at, reply.status
            else:
                t0 = time.perf_counter()
                status = m["uds"].post("/v1/completions", json=REJECT_BODY).status_code
                wall = time.perf_counter() - t0
            if status != 400:
                raise RuntimeError(f"{variant}: HTTP {status}")
            return {"wall": wall, "ttft": wall, "text": "", "chunks": 0, "completion_tokens": None, "finish_reason": None}
        if variant == "msting_uds_raw":
            body = {"prompt": PROMPT, "max_tokens": n, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
            return {**raw_stream(m["raw"], body), "finish_reason": None}
        client = {"msting_uds": m["uds"], "msting_tcp": m["tcp"], "llamasrv": m["srv"]}[variant.removesuffix("_stream")]
        return self.http(client, n, variant.endswith("_stream"), variant.startswith("llamasrv"))


def _client_process(conn: Any, spec: dict) -> None:
    try:
        client = Client(spec)
    except BaseException as exc:  # noqa: BLE001 - report it, so the harness does not wait forever
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    conn.send(("ok", {"pid": os.getpid(), "direct_workers": {k: m["worker"].pid for k, m in client.models.items()}}))
    try:
        while (cmd := conn.recv())[0] == "run":
            try:
                conn.send(("ok", client.run(*cmd[1:])))
            except Exception as exc:  # noqa: BLE001 - the harness reports it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


class ClientProcess(h.Child):
    def __init__(self, spec: dict):
        super().__init__(_client_process, spec, name="overhead-client")
        value = self._answer(120, "start")
        self.pid, self.direct_workers = value["pid"], value["direct_workers"]

    def _answer(self, timeout: float, what: str) -> Any:
        kind, value = self.answer(timeout, "the client process")
        if kind != "ok":
            raise h.BenchError(f"the client process: {what}: {value}")
        return value

    def run(self, variant: str, key: str, n: int) -> dict:
        self.conn.send(("run", variant, key, n))
        return self._answer(300, f"{variant} [{key}]")


# ---- the run ------------------------------------------------------------------------------


class ForeignMeter:
    """CPU used by processes that are not the bench's own, between start() and stop(), in
    cores: the machine's busy time from /proc/stat minus the CPU time of our processes."""

    def __init__(self, pids: list[int]):
        self.pids = sorted(set(pids))
        self.hz = os.sysconf("SC_CLK_TCK")
        self.mark = (0.0, 0.0, 0.0)
        self.paused = 0.0

    def _read(self) -> tuple[float, float, float]:
        st = h.cpu_stat() or [0] * 8
        busy = (st[0] + st[1] + st[2] + st[5] + st[6]) / self.hz  # user nice system irq softirq
        return time.monotonic(), busy, sum(h.cpu_seconds(pid) or 0.0 for pid in self.pids)

    def start(self) -> None:
        self.mark = self._read()

    def stop(self) -> float:
        (t0, b0, o0), (t1, b1, o1) = self.mark, self._read()
        return round(max(0.0, ((b1 - b0) - (o1 - o0)) / max(t1 - t0, 1e-6)), 3)

    def wait_quiet(self, budget: float) -> float:
        """Wait (within what is left of `budget` s for the whole run) until other programs use
        less than QUIET_CORES over 0.5 s; the seconds waited."""
        t0 = time.monotonic()
        while True:
            self.start()
            time.sleep(0.5)
            if self.stop() < QUIET_CORES or self.paused + (time.monotonic() - t0) >= budget:
                break
            time.sleep(0.5)
        waited = max(time.monotonic() - t0 - 0.5, 0.0)
        self.paused += waited
        return waited


class Target:
    """One model: its msting daemon and its llama_cpp.server."""

    def __init__(self, key: str, path: str, max_tokens: int):
        self.key, self.path, self.max_tokens = key, path, max_tokens
        self.home = h.home(f"overhead-{key}", {"llm": {"model": path, "n_threads": 1}})
        self.started = h.start(self.home)
        with self.home.client() as c:
            st = h.status(c)
            self.info = h.model_info(c, ("name", "path", "load_ms"), ("arch", "n_params", "n_vocab", "n_ctx", "size_bytes", "backend"), st)
        self.daemon_pid, self.worker_pid = st["pid"], st["models"][0]["workers"][0]["pid"]
        self.server = h.LlamaServer(path, n_ctx=N_CTX)
        self.spec = {"path": path, "socket": str(self.home.socket), "msting_url": self.home.url, "llamasrv_url": self.server.url}

    def pids(self, client_pid: int) -> dict[str, int | None]:
        return {"client": client_pid, "daemon": self.daemon_pid, "worker": self.worker_pid, "llamasrv": self.server.pid}


class Recorder:
    def __init__(self, client: ClientProcess, targets: dict[str, Target]):
        self.client, self.targets = client, targets
        self.tps: dict[str, dict[str, list[dict]]] = {k: {v: [] for v in TPS_VARIANTS} for k in targets}
        self.ttft: dict[str, dict[str, list[dict]]] = {k: {v: [] for v in TTFT_VARIANTS} for k in targets}
        self.ref: dict[str, dict] = {}
        self.rounds: list[dict] = []  # per decode round: others' CPU (cores), waited, quiet
        self.ttft_blocks: list[dict] = []  # per block of TTFT_BLOCK iterations
        self.round = -1  # stored in each timed run

    def measure(self, variant: str, key: str, n: int) -> dict:
        """One call in the client process, with the CPU time of every process involved read
        before and after it, outside the timed region."""
        pids = self.targets[key].pids(self.client.pid)
        if variant.startswith("worker"):
            pids = {"client": self.client.pid, "worker": self.client.direct_workers[key]}
        before = {name: h.cpu_seconds(pid) for name, pid in pids.items()}
        out = self.client.run(variant, key, n)
        after = {name: h.cpu_seconds(pid) for name, pid in pids.items()}
        out["cpu_ms"] = {k: round((after[k] - before[k]) * 1000.0, 2) for k in pids if None not in (before[k], after[k])}
        out["round"] = self.round
        return out

    def tps_run(self, variant: str, key: str, record: bool = True) -> None:
        out = self.measure(variant, key, self.targets[key].max_tokens)
        ref = self.ref[key]
        out["text_matches"] = out.pop("text") == ref["text"]
        tokens = out.get("completion_tokens")
        if tokens is None:  # a stream without usage: as many tokens as the identical reference
            tokens = ref["completion_tokens"] if out["text_matches"] else out["chunks"]
            out["tokens_from"] = "reference" if out["text_matches"] else "chunks"
        out["tokens"] = tokens
        out["tps"] = tokens / out["wall"] if out["wall"] > 0 else None
        if record:
            self.tps[key][variant].append(out)

    def ttft_run(self, variant: str, key: str, record: bool = True) -> None:
        out = self.measure(variant, key, TTFT_MAX_TOKENS)
        del out["text"]
        if record:
            self.ttft[key][variant].append(out)


def run_bench(p: dict, targets: dict[str, Target], client: ClientProcess) -> Recorder:
    rec = Recorder(client, targets)
    keys = list(targets)
    for key in keys:  # the reference text (create_completion, non-streaming), then a warm-up of every path
        ref = client.run("inproc_cc", key, targets[key].max_tokens)
        rec.ref[key] = {k: ref[k] for k in ("text", "completion_tokens", "finish_reason")}
        print(f"  {key}: create_completion gives {ref['completion_tokens']} tokens ({ref['finish_reason']})", flush=True)
        for _ in range(p["warmup"]):
            for v in TPS_VARIANTS:
                rec.tps_run(v, key, record=False)
            for v in TTFT_VARIANTS:
                rec.ttft_run(v, key, record=False)
    pids = [os.getpid(), client.pid, *client.direct_workers.values()]
    meter = ForeignMeter(pids + [pid for t in targets.values() for pid in t.pids(client.pid).values() if pid])
    rng = random.Random(20261122)
    # decode rounds, then time to first token in blocks of TTFT_BLOCK iterations: each block
    # after a wait for quiet, the others' CPU use measured over it; models alternating, paths shuffled
    for count, per, variants, run_one, meta, name in ((p["rounds"], 1, TPS_VARIANTS, rec.tps_run, rec.rounds, "round"),
                                                  (p["ttft_requests"], TTFT_BLOCK, TTFT_VARIANTS, rec.ttft_run, rec.ttft_blocks, "block")):
        for block in range(-(-count // per)):
            waited = meter.wait_quiet(p["max_pause_sec"])
            rec.round = block
            meter.start()
            for i in range(block * per, min(count, (block + 1) * per)):
                for key in keys if i % 2 == 0 else keys[::-1]:
                    order = list(variants)
                    rng.shuffle(order)
                    for v in order:
                        run_one(v, key)
            foreign = meter.stop()
            meta.append({name: block, "foreign_cores": foreign, **({"waited_sec": round(waited, 1)} if per == 1 else {}), "quiet": foreign < QUIET_CORES})
            if per == 1:
                print(f"  round {block + 1}/{count}" + (f": other programs used {foreign:.2f} cores" if foreign >= QUIET_CORES else ""), flush=True)
    rec.paused_sec = round(meter.paused, 1)
    return rec


def cpu_mean(runs: list[dict]) -> dict[str, float | None]:
    """Mean CPU ms per request and process: psutil's CPU times tick every 10 ms, so a mean
    over many requests is meaningful where one request's delta is not."""
    out: dict[str, float | None] = {}
    for name in ("client", "daemon", "worker", "llamasrv"):
        vals = [run["cpu_ms"][name] for run in runs if name in run["cpu_ms"]]
        out[name] = round(sum(vals) / len(vals), 1) if vals else None
    return out


def quiet_set(meta: list[dict], key: str) -> tuple[set[int], bool]:
    """The rounds (or TTFT blocks) to summarize: the quiet ones when at least half of them
    (and at least 3) are quiet, else all of them; and whether only the quiet ones are used."""
    every, quiet = {m[key] for m in meta}, {m[key] for m in meta if m["quiet"]}
    return (quiet, True) if len(quiet) >= max(3, len(every) / 2) else (every, False)


def summarize(rec: Recorder, targets: dict[str, Target]) -> tuple[dict, dict]:
    """(per-model summaries, which rounds were used)."""
    use_rounds, only_quiet = quiet_set(rec.rounds, "round")
    use_blocks, only_quiet_ttft = quiet_set(rec.ttft_blocks, "block")
    selection = {"rounds": len(rec.rounds), "rounds_used": len(use_rounds), "only_quiet_rounds": only_quiet,
                 "ttft_blocks": len(rec.ttft_blocks), "ttft_blocks_used": len(use_blocks), "only_quiet_ttft_blocks": only_quiet_ttft,
                 "quiet_cores": QUIET_CORES, "paused_sec": rec.paused_sec, "per_round": rec.rounds, "per_ttft_block": rec.ttft_blocks,
                 "foreign_cores": h.spread([m["foreign_cores"] for m in rec.rounds + rec.ttft_blocks], 3)}
    out: dict[str, Any] = {}
    for key, t in targets.items():
        runs = {v: [x for x in rs if x["round"] in use_rounds] for v, rs in rec.tps[key].items()}
        med = {v: h.percentile([x["tps"] for x in rs], 50) for v, rs in runs.items()}
        tps = {}
        for v, rs in runs.items():
            label, stream, where = TPS_VARIANTS[v]
            base = "inproc_cc_stream" if stream else "inproc_cc"
            s = h.spread([x["tps"] for x in rs], 1)
            tps[v] = {"label": label, "stream": stream, **{k: s[k] for k in ("n", "median", "min", "max")},
                      "wall_ms_median": round(h.percentile([x["wall"] * 1000 for x in rs], 50), 2),
                      "all_max_tokens": all(x["tokens"] == t.max_tokens for x in rs), "text_matches_reference": sum(1 for x in rs if x["text_matches"]),
                      "chunks_median": h.percentile([x["chunks"] for x in rs], 50),
                      "ratio_cc": round(med[v] / med[base], 3),
                      "ratio_cc_paired": h.spread([a["tps"] / b["tps"] for a, b in zip(rs, runs[base])], 3),  # the same round's baseline
                      "ratio_generate": round(med[v] / med["inproc_generate"], 3), "ratio_engine": round(med[v] / med["inproc_engine"], 3),
                      "ratio_llamasrv": round(med[v] / med["llamasrv_stream" if stream else "llamasrv"], 3),
                      "cpu_ms_mean": cpu_mean(rs)}
            if where == "msting":
                target = TARGET_RATIO_STREAM if stream else TARGET_RATIO_NONSTREAM
                tps[v].update(target_ratio=target, met=tps[v]["ratio_cc"] >= target)
        ttft = {}
        for v, rs_all in rec.ttft[key].items():
            rs = [x for x in rs_all if x["round"] in use_blocks]
            ms = [x["ttft"] * 1000.0 for x in rs if x["ttft"] is not None]
            lat = {"n": len(ms), "p50": round(h.percentile(ms, 50), 3), "p95": round(h.percentile(ms, 95), 3),
                   "min": round(min(ms), 3), "max": round(max(ms), 3)} if ms else {"n": 0}
            ttft[v] = {**lat, "label": TTFT_VARIANTS[v], "cpu_ms_mean": cpu_mean(rs)}
        base = ttft["inproc_cc_stream"]
        for v, lat in ttft.items():
            if v.startswith(("inproc", "reject")) or not lat.get("n"):
                continue
            lat["added_p50_ms"], lat["added_p95_ms"] = round(lat["p50"] - base["p50"], 3), round(lat["p95"] - base["p95"], 3)
            if v == TTFT_TARGET_PATH:
                lat.update(target_added_ms=TARGET_TTFT_ADDED_MS, met_p50=lat["added_p50_ms"] <= TARGET_TTFT_ADDED_MS,
                           met=max(lat["added_p50_ms"], lat["added_p95_ms"]) <= TARGET_TTFT_ADDED_MS)
        raw_rt, httpx_rt = ttft["reject_raw"], ttft["reject_httpx"]
        if raw_rt.get("n") and httpx_rt.get("n"):
            httpx_rt["httpx_own_p50_ms"] = round(httpx_rt["p50"] - raw_rt["p50"], 3)
            httpx_rt["httpx_own_p95_ms"] = round(httpx_rt["p95"] - raw_rt["p95"], 3)
        out[key] = {"model": t.info, "title": Path(t.path).name, "reference": rec.ref[key], "tps": tps, "ttft": ttft,
                    "max_tokens": t.max_tokens, "daemon_start_sec": round(t.started["wall_sec"], 2)}
    return out, selection


def bench(p: dict, res: dict) -> dict:
    targets: dict[str, Target] = {}
    client = None
    for key, max_tokens in p["models"]:
        path = h.large_model() if key == "large" else h.STORIES
        if not path.is_file():
            res["stories_missing"] = True
            continue
        targets[key] = Target(key, str(path), max_tokens)
    try:
        client = ClientProcess({"models": {k: t.spec for k, t in targets.items()}})
        stat0 = h.cpu_stat()
        rec = run_bench(p, targets, client)
        models, selection = summarize(rec, targets)
        return {"models": models, "selection": selection, "cpu_stat": h.steal_share(stat0, h.cpu_stat())}
    finally:
        if client is not None:
            client.close(10)


# ---- report -------------------------------------------------------------------------------


def num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def verdict(ok: bool | None, ok_median: bool | None = None) -> str:
    return "" if ok is None else ("yes" if ok else ("p50 only" if ok_median else "**NO**"))


def tps_rows(models: dict) -> list[list[str]]:
    return [[m["model"]["name"], x["label"], x["n"], num(x["median"]), num(x["min"]), num(x["max"]),
             f"{x['ratio_cc']:.3f}" + (" (s)" if x["stream"] else ""), f"{x['ratio_generate']:.3f}", f"{x['ratio_engine']:.3f}",
             f"{x['ratio_llamasrv']:.2f}" if TPS_VARIANTS[v][2] == "msting" else "",
             f">= {x['target_ratio']:.2f}" if "target_ratio" in x else "", verdict(x.get("met"))]
            for m in models.values() for v, x in m["tps"].items()]


def ttft_rows(models: dict) -> list[list[str]]:
    rows = []
    for m in models.values():
        for x in m["ttft"].values():
            added = f"{x['added_p50_ms']:+.2f} / {x['added_p95_ms']:+.2f}" if "added_p50_ms" in x else ""
            if "httpx_own_p50_ms" in x:
                added = f"httpx's own: {x['httpx_own_p50_ms']:+.2f} / {x['httpx_own_p95_ms']:+.2f}"
            rows.append([m["model"]["name"], x["label"], x["n"], num(x.get("p50"), 2), num(x.get("p95"), 2), num(x.get("max"), 2), added,
                         f"<= +{x['target_added_ms']:g} ms" if "target_added_ms" in x else "", verdict(x.get("met"), x.get("met_p50"))])
    return rows


def cpu_rows(models: dict) -> list[list[str]]:
    rows = []
    for m in models.values():
        for v, x in m["tps"].items():
            c, where = x["cpu_ms_mean"], TPS_VARIANTS[v][2]
            rows.append([m["model"]["name"], x["label"], num(x["wall_ms_median"], 1), num(c.get("client"), 1),
                         num(c.get("daemon"), 1) if where == "msting" else "", num(c.get("worker"), 1) if where in ("msting", "worker") else "",
                         num(c.get("llamasrv"), 1) if where == "llamasrv" else "", num(x["chunks_median"])])
    return rows


def notes(res: dict) -> list[str]:
    out = []
    for m in (res.get("models") or {}).values():
        name, ref, n = m["model"]["name"], m["reference"], m["max_tokens"]
        bad = [x["label"] for x in m["tps"].values() if not x["all_max_tokens"]]
        out.append(f"{name}: the prompt {PROMPT!r} gives {ref['completion_tokens']} tokens with max_tokens {n} (finish_reason "
                   f"{ref['finish_reason']}) in create_completion" + (f"; paths with another count: {', '.join(bad)}." if bad else
                                                                      f"; every timed request of every path gave completion_tokens == {n}."))
        mism = [f"{x['label']} ({x['text_matches_reference']}/{x['n']})" for x in m["tps"].values() if x["text_matches_reference"] != x["n"]]
        out.append(f"{name}: text differing from create_completion's (matching runs/all): {', '.join(mism)}." if mism else
                   f"{name}: every path returned exactly create_completion's text (greedy, same sampler settings).")
    sel = res.get("selection")
    if sel:
        fc = sel["foreign_cores"]
        out.append(f"Other programs' CPU use was measured for every decode round and every block of {TTFT_BLOCK} time-to-first-token "
                   f"iterations (machine busy time minus the bench's own processes): median {fc['median']:.2f}, max {fc['max']:.2f} cores. "
                   f"Summarized: {sel['rounds_used']} of {sel['rounds']} decode rounds"
                   + (" (the quiet ones" if sel["only_quiet_rounds"] else " (all: too few were quiet")
                   + f"), {sel['ttft_blocks_used']} of {sel['ttft_blocks']} TTFT blocks"
                   + (" (the quiet ones)" if sel["only_quiet_ttft_blocks"] else " (all: too few were quiet)")
                   + f"; quiet = other programs under {QUIET_CORES:g} cores"
                   + (f"; the bench paused {sel['paused_sec']:.0f} s in all waiting for quiet." if sel["paused_sec"] else ".")
                   + ("" if sel["only_quiet_rounds"] and sel["only_quiet_ttft_blocks"] else
                      " Numbers from disturbed rounds are pessimistic: re-run on an idle machine."))
    cs = res.get("cpu_stat")
    if cs:
        out.append(f"During the timed part the machine was {cs['busy_pct']:g} % busy (both cores) and the hypervisor took "
                   f"{cs['steal_pct']:g} % of the CPU time (steal): this is a VM, so single runs vary by tens of per cent; compare medians.")
    if res.get("stories_missing"):
        out.append(f"{h.STORIES} was not found: only the generated model was measured.")
    return out


def blocks(res: dict) -> list:
    p, models = res["params"], res.get("models") or {}
    descr = [f"`{mm['model']['name']}` ({Path(mm['model']['path']).name}, {mm['model'].get('arch')}, "
             f"{h.human_params(mm['model'].get('n_params'))} params, {(mm['model'].get('size_bytes') or 0) / 1e6:.2f} MB)" for mm in models.values()]
    max_tokens = ", ".join(f"{mm['max_tokens']} ({mm['model']['name']})" for mm in models.values())
    return [r.run_line(res, "bench/overhead.py"), r.bullets([
        "**Models:** " + "; ".join(descr) + f"; `max_tokens` {max_tokens}.",
        f"**Repetitions:** {p['warmup']} warm-up runs of every path, then {p['rounds']} rounds of every path per model; time to first "
        f"token: {p['ttft_requests']} streaming requests with `max_tokens` {TTFT_MAX_TOKENS} per path and model (read to the end; the "
        "first SSE chunk carrying text counts)."]),
        "**Decode tokens/s.** Ratios are of medians, each against the path named in the column (create_completion and "
        "llama_cpp.server in the same stream mode as the row; \"(s)\" marks the streaming rows); the per-round paired ratios are in "
        "the JSON. The target is judged on \"÷ create_completion\".",
        r.Table(["model", "path", "n", "tok/s median", "min", "max", "÷ create_completion", "÷ generate loop", "÷ Engine",
                 "÷ llama_cpp.server", "target", "met"], tps_rows(models), "llr"),
        f"**Time to first token** (streaming, `max_tokens` {TTFT_MAX_TOKENS}; added = this path minus in-process "
        "create_completion(stream=True), at p50 and at p95; the last two rows per model are round trips of a POST the daemon "
        "rejects with 400, no worker involved):",
        r.Table(["model", "path", "n", "p50 ms", "p95 ms", "max ms", "added p50 / p95 ms", "target", "met"], ttft_rows(models), "llr"),
        f"**CPU per request** (means over the decode runs, `max_tokens` {max_tokens}; \"chunks\": pieces of text the client received):",
        r.Table(["model", "path", "wall ms", "client CPU ms", "daemon CPU ms", "worker CPU ms", "llama_cpp.server CPU ms", "chunks"],
                cpu_rows(models), "llr"),
        r.notes(notes(res) + r.common_notes(res))]


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", KEY, *sys.argv[1:]]))
