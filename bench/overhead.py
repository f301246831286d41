#!/usr/bin/env python3
"""Serving overhead of the msting daemon against llama-cpp-python in-process and against
llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``).

    .venv/bin/python bench/overhead.py [--quick] [--json-out PATH] [--no-docs] [--wait-quiet S] [--keep-homes]

Needs the ``bench`` extra (``.venv/bin/pip install -e '.[bench]'``: llama-cpp-python's
server dependencies). Everything runs in ONE run, on real processes, with interleaved
repetitions (the order of the paths is shuffled in every round, models alternate):

1. decode tokens/s = completion_tokens / wall time of one request (or of the call, in
   process), same prompt, ``max_tokens``, ``temperature: 0``, one thread, for
   - in process (baselines): ``Llama.create_completion`` with stream False and True (the
     main baseline: what a user calls), a bare ``Llama.generate`` loop (the ceiling), and
     msting's own ``Engine.generate`` (exactly what the worker runs, minus the process
     boundary: the difference to it *is* the serving overhead);
   - a msting worker process alone, driven over its socketpair with the daemon's frames
     (the worker's share of the overhead);
   - the msting daemon (``llm.n_threads: 1``): ``POST /v1/completions`` non-streaming
     and streaming, over the Unix socket and over TCP (127.0.0.1);
   - ``python -m llama_cpp.server --model M --n_threads 1 --n_threads_batch 1 --port P``,
     non-streaming and streaming (the peer to beat);
2. time to first token (first SSE chunk with text) of streaming requests with
   ``max_tokens`` 16: msting over the Unix socket (httpx, and hand-written HTTP on a raw
   socket to leave out the Python client's own cost), msting over TCP, llama_cpp.server,
   against the first chunk of ``create_completion(stream=True)`` in process;
3. CPU time each process spends per request (client, daemon, worker, llama_cpp.server),
   read with psutil before and after every request.

Every measuring call runs in ONE dedicated client process (spawned once; it also holds
the in-process ``Llama`` objects): the harness process only sends it a command and
blocks on a pipe, so the bench's own bookkeeping never competes for the two cores while
a request is timed. The client and the server still compete with each other (the
worker's decode thread keeps one core busy; the daemon's event loop and the client share
the other), exactly as they would for a real local client.

Models: ``../shared/models/stories260K.gguf`` (the fastest real model, so the worst case
for a fixed per-token overhead) and the built-in ``msting-tiny`` (written with
``msting.models.builtin.ensure_builtin_model``). The same GGUF file serves all paths.

The script always stops what it starts (``msting llm stop --force`` for every daemon
home, then SIGKILL for anything still carrying that MSTING_HOME; SIGTERM then SIGKILL for
the llama_cpp.server processes). Results go to stdout, to ``bench/results/overhead.json``
and to the section "## Serving overhead (issue 3)" of ``docs/benchmarks.md`` (replaced in
place; other sections are kept).

This file must not import from ``tests/``. It reuses the daemon-home helpers of
``bench/service.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import httpx
import harness as h  # bench/harness.py: Home, servers, statistics, machine info

ROOT = HERE.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "overhead.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION_TITLE = "## Serving overhead (issue 3)"
STORIES = h.STORIES
CACHE = HERE / ".cache"  # generated models (gitignored)

PROMPT = "Once upon a time"
MAX_TOKENS = 256
TTFT_MAX_TOKENS = 16
N_CTX = 2048

# targets: ratio of tokens/s to the in-process create_completion baseline (same stream mode)
TARGET_RATIO_NONSTREAM = 0.95
TARGET_RATIO_STREAM = 0.90
TARGET_TTFT_ADDED_MS = 2.0
# A round during which other programs used more than this many cores' worth of CPU is
# "disturbed"; when enough rounds are quiet, the summaries use only the quiet ones.
QUIET_CORES = 0.10
TTFT_BLOCK = 10  # time-to-first-token iterations per foreign-load measurement

PROFILES = {
    "quick": {"rounds": 8, "ttft_requests": 25, "warmup": 2, "max_pause_sec": 60},
    "full": {"rounds": 40, "ttft_requests": 100, "warmup": 3, "max_pause_sec": 300},
    # bench/run.py: run.py --quick, and the full suite's share (it adds a model that is ~40x slower)
    "suite-quick": {"rounds": 3, "ttft_requests": 6, "warmup": 1, "max_pause_sec": 10},
    "suite-full": {"rounds": 15, "ttft_requests": 100, "warmup": 2, "max_pause_sec": 120},
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
# The daemon's share of time to first token is what the raw client measures: it writes a
# request in one call and reads the bytes as they come. httpx adds its own per-request
# work (two writes, header and line parsing), measured by the reject_* pair above.
TTFT_TARGET_PATH = "msting_uds_raw"
MSTING = [v for v in TPS_VARIANTS if TPS_VARIANTS[v][2] == "msting"]


# ---------------------------------------------------------------------------------------
# the client process: every timed call runs here


class CompletionStream:
    """What a client gathers from a streamed ``/v1/completions``: the text pieces, the
    time to the first piece (from `t0`), usage and finish_reason. Feed it each
    ``data:`` payload (str or bytes) as it arrives."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.ttft: float | None = None
        self.parts: list[str] = []
        self.usage: dict | None = None
        self.finish: str | None = None

    def feed(self, payload: str | bytes) -> None:
        if payload in ("[DONE]", b"[DONE]"):
            return
        obj = json.loads(payload)
        if "error" in obj:
            raise RuntimeError(f"stream error: {obj['error']}")
        if obj.get("usage"):
            self.usage = obj["usage"]
        for ch in obj.get("choices") or []:
            if ch.get("text"):
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self.t0
                self.parts.append(ch["text"])
            self.finish = ch.get("finish_reason") or self.finish

    def result(self) -> dict:
        return {"wall": time.perf_counter() - self.t0, "ttft": self.ttft, "text": "".join(self.parts),
                "chunks": len(self.parts), "completion_tokens": (self.usage or {}).get("completion_tokens"),
                "finish_reason": self.finish}


class RawSSE:
    """POST + SSE over one persistent Unix-socket connection, HTTP written by hand (chunked
    transfer decoding included), so that httpx's own cost can be told apart from the
    daemon's."""

    def __init__(self, path: str):
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = bytearray()

    def _connect(self) -> socket.socket:
        if self.sock is not None:
            # an idle keep-alive connection the server has closed reads as EOF: start a new one
            readable, _, _ = select.select([self.sock], [], [], 0)
            if readable:
                self.close()
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(60)
            s.connect(self.path)
            self.sock = s
            self.buf = bytearray()
        return self.sock

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def _until(self, delim: bytes) -> bytes:
        while True:
            i = self.buf.find(delim)
            if i != -1:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(delim)]
                return out
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def post_stream(self, route: str, body: dict) -> dict:
        return self._post(route, body, self._read_stream)

    def post_reject(self, route: str, body: dict) -> dict:
        """A POST that must be answered 400: the round trip to the end of the answer."""
        return self._post(route, body, self._read_reject)

    def _post(self, route: str, body: dict, read: Callable[[float], dict]) -> dict:
        """Write the request in one call, timed from just before it; `read(t0)` reads the answer."""
        data = json.dumps(body).encode()
        head = (f"POST {route} HTTP/1.1\r\nHost: msting\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        try:
            sock = self._connect()
            t0 = time.perf_counter()
            sock.sendall(head + data)
            return read(t0)
        except BaseException:
            self.close()
            raise

    def _read_reject(self, t0: float) -> dict:
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        length = next(int(x.split(":", 1)[1]) for x in lines[1:] if x.lower().startswith("content-length:"))
        self._exact(length)
        wall = time.perf_counter() - t0
        if " 400 " not in lines[0] + " ":
            raise RuntimeError(f"raw reject: {lines[0]}")
        return {"wall": wall, "ttft": wall, "text": "", "chunks": 0, "completion_tokens": None, "finish_reason": None}

    def _read_stream(self, t0: float) -> dict:
        status_and_headers = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        if " 200 " not in status_and_headers[0] + " ":
            raise RuntimeError(f"raw stream: {status_and_headers[0]}")
        if not any(h.lower().startswith("transfer-encoding:") and "chunked" in h.lower() for h in status_and_headers[1:]):
            raise RuntimeError("raw stream: the answer is not chunked")
        stream = CompletionStream(t0)
        pending = b""
        while True:
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                self._until(b"\r\n")  # end of the (empty) trailer
                break
            pending += self._exact(size)
            self._exact(2)
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        stream.feed(line[6:])
        return stream.result()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class DirectWorker:
    """A msting worker process (``python -m msting.worker``) driven straight over its
    socketpair with the daemon's frames: the worker's share of the overhead, no daemon."""

    def __init__(self, name: str, path: str):
        from msting.worker import protocol

        self.protocol = protocol
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = {"name": name, "path": path, "n_ctx": N_CTX, "n_threads": 1, "n_gpu_layers": 0, "seed": 0,
                "embedding": False, "chat_format": None}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "msting.worker", "--fd", str(child.fileno()),
                                          "--spec", json.dumps(spec)], pass_fds=(child.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            child.close()
        self.pid = self.proc.pid
        self.reader = self.sock.makefile("rb", buffering=1 << 16)
        self.seq = 0
        deadline = time.monotonic() + 60
        while True:
            frame = self._frame()
            if frame["type"] == "ready":
                break
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
        data = self.protocol.encode("generate", rid, prompt=prompt, max_tokens=n, temperature=0.0, top_p=0.95, stop=None,
                                    seed=None, presence_penalty=0.0, frequency_penalty=0.0, stream=stream)
        t0 = time.perf_counter()
        self.sock.sendall(data)
        ttft = None
        parts: list[str] = []
        while True:
            f = self._frame()
            if f.get("id") != rid:
                continue
            if f["type"] == "token":
                if f.get("text"):
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    parts.append(f["text"])
            elif f["type"] == "done":
                wall = time.perf_counter() - t0
                return {"wall": wall, "ttft": ttft, "text": f.get("text") or "".join(parts), "chunks": len(parts) or 1,
                        "completion_tokens": f["usage"]["completion_tokens"], "finish_reason": f.get("finish_reason")}
            else:
                raise RuntimeError(f"direct worker: {f}")

    def close(self) -> None:
        for closer in (self.reader.close, self.sock.close):
            try:
                closer()
            except OSError:
                pass
        try:
            self.proc.wait(10)  # EOF on its socket: the worker exits 0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def inproc_completion(llm: Any, prompt: str, n: int, stream: bool) -> dict:
    """``Llama.create_completion`` in this process: the baseline every path is compared with."""
    t0 = time.perf_counter()
    if not stream:
        r = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
        wall = time.perf_counter() - t0
        return {"wall": wall, "ttft": None, "text": r["choices"][0]["text"], "chunks": 1,
                "completion_tokens": r["usage"]["completion_tokens"], "finish_reason": r["choices"][0]["finish_reason"]}
    ttft = None
    parts = []
    chunks = 0
    finish = None
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True):
        ch = chunk["choices"][0]
        if ch.get("text"):
            if ttft is None:
                ttft = time.perf_counter() - t0
            chunks += 1
            parts.append(ch["text"])
        finish = ch.get("finish_reason") or finish
    wall = time.perf_counter() - t0
    return {"wall": wall, "ttft": ttft, "text": "".join(parts), "chunks": chunks, "completion_tokens": None, "finish_reason": finish}


def http_stream(client: httpx.Client, body: dict, t0: float) -> dict:
    """A streamed ``POST /v1/completions`` read with httpx (timed from `t0`)."""
    stream = CompletionStream(t0)
    with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if line.startswith("data: "):
                stream.feed(line[6:])
    return stream.result()


class Client:
    """Lives in the client process: the in-process models and the HTTP clients."""

    def __init__(self, spec: dict):
        import llama_cpp

        from msting.worker.engine import Engine

        self.llama_cpp = llama_cpp
        self.prompt = spec["prompt"]
        self.models: dict[str, dict] = {}
        for key, m in spec["models"].items():
            llm = llama_cpp.Llama(m["path"], n_ctx=N_CTX, n_threads=1, n_threads_batch=1, verbose=False)
            engine = Engine(m["path"], n_ctx=N_CTX, n_threads=1, n_threads_batch=1)
            engine.load()
            timeout = httpx.Timeout(120)
            self.models[key] = {
                "llm": llm,
                "vocab": llama_cpp.llama_model_get_vocab(llm.model),
                "engine": engine,
                "uds": httpx.Client(transport=httpx.HTTPTransport(uds=m["socket"]), base_url="http://msting", timeout=timeout),
                "tcp": httpx.Client(base_url=m["msting_url"], timeout=timeout),
                "srv": httpx.Client(base_url=m["llamasrv_url"], timeout=timeout),
                "raw": RawSSE(m["socket"]),
                "worker": DirectWorker(key, m["path"]),
            }

    def close(self) -> None:
        for m in self.models.values():
            for k in ("uds", "tcp", "srv"):
                m[k].close()
            m["raw"].close()
            m["worker"].close()
            m["engine"].close()
            m["llm"].close()

    # ---- in process ------------------------------------------------------------------

    def inproc_cc(self, m: dict, n: int, stream: bool) -> dict:
        return inproc_completion(m["llm"], self.prompt, n, stream)

    def inproc_generate(self, m: dict, n: int) -> dict:
        """The bare loop: tokenize as create_completion does, sample with its defaults,
        stop at EOG or n tokens, detokenize once at the end."""
        llm, vocab, lib = m["llm"], m["vocab"], self.llama_cpp
        t0 = time.perf_counter()
        prompt_tokens = llm.tokenize(self.prompt.encode("utf-8"), add_bos=True, special=True)
        out: list[int] = []
        ttft = None
        finish = "length"
        gen = llm.generate(prompt_tokens, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0, temp=0.0, repeat_penalty=1.0)
        try:
            for tok in gen:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                if lib.llama_vocab_is_eog(vocab, tok):
                    finish = "stop"
                    break
                out.append(tok)
                if len(out) >= n:
                    break
        finally:
            gen.close()
        text = llm.detokenize(out, prev_tokens=prompt_tokens).decode("utf-8", errors="replace")
        wall = time.perf_counter() - t0
        return {"wall": wall, "ttft": ttft, "text": text, "chunks": 1, "completion_tokens": len(out), "finish_reason": finish}

    def inproc_engine(self, m: dict, n: int) -> dict:
        from msting.worker.engine import GenerationResult

        t0 = time.perf_counter()
        ttft = None
        parts = []
        result = None
        for ev in m["engine"].generate(prompt=self.prompt, max_tokens=n, temperature=0.0, top_p=0.95):
            if isinstance(ev, GenerationResult):
                result = ev
            elif ev.text:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(ev.text)
        wall = time.perf_counter() - t0
        assert result is not None
        return {"wall": wall, "ttft": ttft, "text": "".join(parts), "chunks": len(parts),
                "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason}

    # ---- over HTTP -------------------------------------------------------------------

    def body(self, n: int, stream: bool, llamasrv: bool) -> dict:
        b: dict[str, Any] = {"prompt": self.prompt, "max_tokens": n, "temperature": 0.0}
        if llamasrv:
            b["repeat_penalty"] = 1.0  # its server defaults to 1.1; create_completion and msting use 1.0
        if stream:
            b["stream"] = True
            if not llamasrv:
                b["stream_options"] = {"include_usage": True}
        return b

    def http(self, client: httpx.Client, n: int, stream: bool, llamasrv: bool) -> dict:
        body = self.body(n, stream, llamasrv)
        t0 = time.perf_counter()
        if not stream:
            r = client.post("/v1/completions", json=body)
            j = r.json()
            wall = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {str(j)[:300]}")
            return {"wall": wall, "ttft": None, "text": j["choices"][0]["text"], "chunks": 1,
                    "completion_tokens": j["usage"]["completion_tokens"], "finish_reason": j["choices"][0]["finish_reason"]}
        return http_stream(client, body, t0)

    def run(self, variant: str, key: str, n: int) -> dict:
        m = self.models[key]
        if variant == "inproc_cc":
            return self.inproc_cc(m, n, False)
        if variant == "inproc_cc_stream":
            return self.inproc_cc(m, n, True)
        if variant == "inproc_generate":
            return self.inproc_generate(m, n)
        if variant == "inproc_engine":
            return self.inproc_engine(m, n)
        if variant in ("worker", "worker_stream"):
            return m["worker"].run(self.prompt, n, variant == "worker_stream")
        if variant == "reject_raw":
            return m["raw"].post_reject("/v1/completions", REJECT_BODY)
        if variant == "reject_httpx":
            t0 = time.perf_counter()
            r = m["uds"].post("/v1/completions", json=REJECT_BODY)
            wall = time.perf_counter() - t0
            if r.status_code != 400:
                raise RuntimeError(f"httpx reject: HTTP {r.status_code}")
            return {"wall": wall, "ttft": wall, "text": "", "chunks": 0, "completion_tokens": None, "finish_reason": None}
        if variant == "msting_uds_raw":
            out = m["raw"].post_stream("/v1/completions", self.body(n, True, False))
            out["finish_reason"] = None
            return out
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
        while True:
            cmd = conn.recv()
            if cmd[0] != "run":
                return
            _, variant, key, n = cmd
            try:
                conn.send(("ok", client.run(variant, key, n)))
            except Exception as exc:  # noqa: BLE001 - the harness reports it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


class ClientProcess:
    def __init__(self, spec: dict):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_client_process, args=(child, spec), name="overhead-client", daemon=True)
        self.proc.start()
        child.close()
        kind, value = self._answer(120)
        if kind != "ok":
            raise h.BenchError(f"the client process failed to start: {value}")
        self.pid = value["pid"]
        self.direct_workers = value["direct_workers"]

    def _answer(self, timeout: float) -> tuple[str, Any]:
        if not self.conn.poll(timeout):
            raise h.BenchError(f"the client process gave no answer within {timeout:g}s")
        return self.conn.recv()

    def run(self, variant: str, key: str, n: int) -> dict:
        self.conn.send(("run", variant, key, n))
        kind, value = self._answer(300)
        if kind != "ok":
            raise h.BenchError(f"{variant} [{key}]: {value}")
        return value

    def close(self) -> None:
        h.close_child(self.conn, self.proc, 10)


# ---------------------------------------------------------------------------------------
# harness (the servers, CPU counters and foreign-load snapshots live in bench/harness.py)

cpu_stat = h.cpu_stat
steal_share = h.steal_share
source_info = h.source_info
cpu_seconds = h.cpu_seconds
foreign_load = h.foreign_load_not_ours



class ForeignMeter:
    """CPU time used on this machine by processes that are not the bench's own (the harness,
    the client process, its direct workers, the daemons, their workers, the llama_cpp.server
    processes), between start() and stop(), in cores: the machine's busy time from
    /proc/stat minus the CPU time of our processes."""

    def __init__(self, pids: list[int]):
        self.pids = sorted(set(pids))
        self.hz = os.sysconf("SC_CLK_TCK")
        self.mark: tuple[float, float, float] | None = None
        self.paused = 0.0

    def _read(self) -> tuple[float, float, float]:
        st = cpu_stat() or [0] * 8
        busy = (st[0] + st[1] + st[2] + st[5] + st[6]) / self.hz  # user nice system irq softirq
        ours = sum(cpu_seconds(pid) or 0.0 for pid in self.pids)
        return time.monotonic(), busy, ours

    def start(self) -> None:
        self.mark = self._read()

    def stop(self) -> float:
        assert self.mark is not None
        t0, b0, o0 = self.mark
        t1, b1, o1 = self._read()
        return round(max(0.0, ((b1 - b0) - (o1 - o0)) / max(t1 - t0, 1e-6)), 3)

    def wait_quiet(self, budget: float) -> float:
        """Wait (within what is left of *budget* seconds for the whole run) until other
        programs use less than QUIET_CORES over a 0.5 s window; returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            self.start()
            time.sleep(0.5)
            if self.stop() < QUIET_CORES or self.paused + (time.monotonic() - t0) >= budget:
                break
            time.sleep(0.5)
        waited = time.monotonic() - t0 - 0.5
        self.paused += max(waited, 0.0)
        return waited


class Target:
    """One model: its msting daemon, its llama_cpp.server, and the pids to account."""

    def __init__(self, key: str, title: str, path: str, max_tokens: int = MAX_TOKENS):
        self.key = key
        self.title = title
        self.path = path
        self.max_tokens = max_tokens
        self.home = h.Home(f"overhead-{key}", {"llm": {"model": path, "n_threads": 1}})
        self.started = self.home.start()
        with self.home.client() as c:
            st = h.status(c)
            info = c.post("/models/load", json={"model": "default"}).json().get("info") or {}
        m = st["models"][0]
        self.daemon_pid = st["pid"]
        self.worker_pid = h.worker_of(st)["pid"]
        self.info = {"name": m["name"], "path": m["path"], "load_ms": m["load_ms"],
                     **{k: info.get(k) for k in ("arch", "n_params", "n_vocab", "n_ctx", "size_bytes", "backend")}}
        self.server = h.LlamaServer(key, path, n_ctx=N_CTX)
        self.spec = {"path": path, "socket": str(self.home.socket), "msting_url": f"http://127.0.0.1:{self.home.port}",
                     "llamasrv_url": self.server.url}

    def pids(self, client_pid: int) -> dict[str, int | None]:
        return {"client": client_pid, "daemon": self.daemon_pid, "worker": self.worker_pid, "llamasrv": self.server.pid}


class Recorder:
    def __init__(self, client: ClientProcess, targets: dict[str, Target]):
        self.client = client
        self.targets = targets
        self.tps: dict[str, dict[str, list[dict]]] = {k: {v: [] for v in TPS_VARIANTS} for k in targets}
        self.ttft: dict[str, dict[str, list[dict]]] = {k: {v: [] for v in TTFT_VARIANTS} for k in targets}
        self.ref: dict[str, dict] = {}
        self.rounds: list[dict] = []  # per decode round: foreign CPU (cores), waited, quiet
        self.ttft_blocks: list[dict] = []  # per block of TTFT_BLOCK iterations
        self.round = -1  # index stored in each timed run
        self.paused_sec = 0.0

    def measure(self, variant: str, key: str, n: int) -> dict:
        pids = self.targets[key].pids(self.client.pid)
        if variant.startswith("worker"):
            pids = {"client": self.client.pid, "worker": self.client.direct_workers[key]}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        out = self.client.run(variant, key, n)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        out["cpu_ms"] = {name: round((after[name] - before[name]) * 1000.0, 2)
                         for name in pids if before[name] is not None and after[name] is not None}
        out["round"] = self.round
        return out

    def tps_run(self, variant: str, key: str, record: bool = True) -> dict:
        out = self.measure(variant, key, self.targets[key].max_tokens)
        ref = self.ref.get(key)
        out["text_matches"] = ref is not None and out["text"] == ref["text"]
        tokens = out.get("completion_tokens")
        if tokens is None:  # a stream without usage: as many tokens as the identical reference
            tokens = ref["completion_tokens"] if out["text_matches"] else out["chunks"]
            out["tokens_from"] = "reference" if out["text_matches"] else "chunks"
        out["tokens"] = tokens
        out["tps"] = tokens / out["wall"] if out["wall"] > 0 else None
        del out["text"]
        if record:
            self.tps[key][variant].append(out)
        return out

    def ttft_run(self, variant: str, key: str, record: bool = True) -> dict:
        out = self.measure(variant, key, TTFT_MAX_TOKENS)
        del out["text"]
        if record:
            self.ttft[key][variant].append(out)
        return out


def run_bench(p: dict, targets: dict[str, Target], client: ClientProcess) -> Recorder:
    rec = Recorder(client, targets)
    keys = list(targets)
    # the reference text (create_completion, non-streaming) and a warm-up of every path
    for key in keys:
        ref = client.run("inproc_cc", key, targets[key].max_tokens)
        rec.ref[key] = {"text": ref["text"], "completion_tokens": ref["completion_tokens"], "finish_reason": ref["finish_reason"]}
        print(f"  {key}: reference create_completion gave {ref['completion_tokens']} tokens "
              f"(finish_reason {ref['finish_reason']}), {ref['completion_tokens'] / ref['wall']:.0f} tokens/s", flush=True)
        for _ in range(p["warmup"]):
            for v in TPS_VARIANTS:
                rec.tps_run(v, key, record=False)
            for v in TTFT_VARIANTS:
                rec.ttft_run(v, key, record=False)
    pids = [os.getpid(), client.pid, *client.direct_workers.values()]
    for t in targets.values():
        pids += [pid for pid in t.pids(client.pid).values() if pid]
    meter = ForeignMeter(pids)
    rng = random.Random(20261122)
    t0 = time.monotonic()
    for rnd in range(p["rounds"]):
        waited = meter.wait_quiet(p["max_pause_sec"])
        rec.round = rnd
        meter.start()
        order = keys if rnd % 2 == 0 else keys[::-1]
        for key in order:
            variants = list(TPS_VARIANTS)
            rng.shuffle(variants)
            for v in variants:
                rec.tps_run(v, key)
        foreign = meter.stop()
        rec.rounds.append({"round": rnd, "foreign_cores": foreign, "waited_sec": round(waited, 1),
                           "quiet": foreign < QUIET_CORES})
        if foreign >= QUIET_CORES:
            print(f"  round {rnd + 1}: other programs used {foreign:.2f} cores (disturbed)", flush=True)
        if rnd == 0 or (rnd + 1) % 5 == 0 or rnd + 1 == p["rounds"]:
            line = []
            for key in keys:
                base = h.percentile([r["tps"] for r in rec.tps[key]["inproc_cc"]], 50)
                uds = h.percentile([r["tps"] for r in rec.tps[key]["msting_uds_stream"]], 50)
                line.append(f"{key}: create_completion {base:.0f} tok/s, msting uds stream {uds:.0f} tok/s")
            print(f"  round {rnd + 1}/{p['rounds']} ({time.monotonic() - t0:.0f} s): " + "; ".join(line), flush=True)
    t1 = time.monotonic()
    for i in range(p["ttft_requests"]):
        if i % TTFT_BLOCK == 0:
            if i:
                foreign = meter.stop()
                rec.ttft_blocks.append({"block": rec.round, "foreign_cores": foreign, "quiet": foreign < QUIET_CORES})
            meter.wait_quiet(p["max_pause_sec"])
            rec.round = i // TTFT_BLOCK
            meter.start()
        order = keys if i % 2 == 0 else keys[::-1]
        for key in order:
            variants = list(TTFT_VARIANTS)
            rng.shuffle(variants)
            for v in variants:
                rec.ttft_run(v, key)
    foreign = meter.stop()
    rec.ttft_blocks.append({"block": rec.round, "foreign_cores": foreign, "quiet": foreign < QUIET_CORES})
    print(f"  time to first token: {p['ttft_requests']} requests per path and model in {time.monotonic() - t1:.0f} s", flush=True)
    rec.paused_sec = round(meter.paused, 1)
    return rec


# ---------------------------------------------------------------------------------------
# summaries


def cpu_mean(runs: list[dict]) -> dict[str, float | None]:
    """Mean CPU ms per request and process: psutil's CPU times tick every 10 ms, so a
    mean over many requests is meaningful where one request's delta is not."""
    out: dict[str, float | None] = {}
    for name in ("client", "daemon", "worker", "llamasrv"):
        vals = [r["cpu_ms"][name] for r in runs if name in r["cpu_ms"]]
        out[name] = round(sum(vals) / len(vals), 1) if vals else None
    return out


def quiet_set(meta: list[dict], key: str) -> tuple[set[int], bool]:
    """The rounds (or TTFT blocks) to summarize: the quiet ones when at least half of them
    (and at least 3) are quiet, else all of them. Returns (indexes, only_quiet)."""
    every = {m[key] for m in meta}
    quiet = {m[key] for m in meta if m["quiet"]}
    if len(quiet) >= max(3, len(every) / 2):
        return quiet, True
    return every, False


def summarize(rec: Recorder, targets: dict[str, Target]) -> tuple[dict, dict]:
    """(per-model summaries, which rounds were used)."""
    out: dict[str, Any] = {}
    use_rounds, only_quiet = quiet_set(rec.rounds, "round")
    use_blocks, only_quiet_ttft = quiet_set(rec.ttft_blocks, "block")
    selection = {"rounds": len(rec.rounds), "rounds_used": len(use_rounds), "only_quiet_rounds": only_quiet,
                         "ttft_blocks": len(rec.ttft_blocks), "ttft_blocks_used": len(use_blocks),
                         "only_quiet_ttft_blocks": only_quiet_ttft, "quiet_cores": QUIET_CORES,
                         "paused_sec": rec.paused_sec,
                         "foreign_cores": h.spread([m["foreign_cores"] for m in rec.rounds + rec.ttft_blocks], 3),
                         "per_round": rec.rounds, "per_ttft_block": rec.ttft_blocks}
    for key, t in targets.items():
        ref = rec.ref[key]
        runs = {v: [r for r in rs if r["round"] in use_rounds] for v, rs in rec.tps[key].items()}
        med = {v: h.percentile([r["tps"] for r in rs], 50) for v, rs in runs.items()}
        tps = {}
        for v, rs in runs.items():
            stream = TPS_VARIANTS[v][1]
            base_cc = "inproc_cc_stream" if stream else "inproc_cc"
            s = h.spread([r["tps"] for r in rs], 1)
            # paired: each run against the same round's baseline run
            paired = [a["tps"] / b["tps"] for a, b in zip(rs, runs[base_cc])]
            tps[v] = {
                "label": TPS_VARIANTS[v][0], "stream": stream, **{k: s[k] for k in ("n", "median", "min", "max")},
                "wall_ms_median": round(h.percentile([r["wall"] * 1000 for r in rs], 50), 2),
                "completion_tokens": sorted({r["tokens"] for r in rs}),
                "all_max_tokens": all(r["tokens"] == t.max_tokens for r in rs),
                "text_matches_reference": sum(1 for r in rs if r["text_matches"]),
                "tokens_from": sorted({r.get("tokens_from", "usage") for r in rs}),
                "finish_reasons": sorted({str(r.get("finish_reason")) for r in rs}),
                "chunks_median": h.percentile([r["chunks"] for r in rs], 50),
                "baseline_cc": base_cc,
                "ratio_cc": round(med[v] / med[base_cc], 3),
                "ratio_cc_paired": h.spread(paired, 3),
                "ratio_generate": round(med[v] / med["inproc_generate"], 3),
                "ratio_engine": round(med[v] / med["inproc_engine"], 3),
                "ratio_llamasrv": round(med[v] / med["llamasrv_stream" if stream else "llamasrv"], 3),
                "cpu_ms_mean": cpu_mean(rs),
                "values": s["values"],
            }
            if v in MSTING:
                target = TARGET_RATIO_STREAM if stream else TARGET_RATIO_NONSTREAM
                tps[v]["target_ratio"] = target
                tps[v]["met"] = tps[v]["ratio_cc"] >= target
                tps[v]["met_vs_engine"] = tps[v]["ratio_engine"] >= target
        ttft = {}
        for v, rs_all in rec.ttft[key].items():
            rs = [r for r in rs_all if r["round"] in use_blocks]
            ms = [r["ttft"] * 1000.0 for r in rs if r["ttft"] is not None]
            lat = {"n": len(ms), "p50": round(h.percentile(ms, 50), 3), "p95": round(h.percentile(ms, 95), 3),
                   "min": round(min(ms), 3), "max": round(max(ms), 3)} if ms else {"n": 0}
            lat["label"] = TTFT_VARIANTS[v]
            lat["cpu_ms_mean"] = cpu_mean(rs)
            ttft[v] = lat
        base = ttft["inproc_cc_stream"]
        for v, lat in ttft.items():
            if v.startswith(("inproc", "reject")) or not lat.get("n"):
                continue
            lat["added_p50_ms"] = round(lat["p50"] - base["p50"], 3)
            lat["added_p95_ms"] = round(lat["p95"] - base["p95"], 3)
            if v == TTFT_TARGET_PATH:
                lat["target_added_ms"] = TARGET_TTFT_ADDED_MS
                lat["met"] = lat["added_p50_ms"] <= TARGET_TTFT_ADDED_MS and lat["added_p95_ms"] <= TARGET_TTFT_ADDED_MS
                lat["met_p50"] = lat["added_p50_ms"] <= TARGET_TTFT_ADDED_MS
        raw_rt, httpx_rt = ttft["reject_raw"], ttft["reject_httpx"]
        if raw_rt.get("n") and httpx_rt.get("n"):
            ttft["reject_httpx"]["httpx_own_p50_ms"] = round(httpx_rt["p50"] - raw_rt["p50"], 3)
            ttft["reject_httpx"]["httpx_own_p95_ms"] = round(httpx_rt["p95"] - raw_rt["p95"], 3)
        out[key] = {"model": t.info, "title": t.title, "reference": ref, "tps": tps, "ttft": ttft, "max_tokens": t.max_tokens,
                    "daemon_start_sec": round(t.started["wall_sec"], 2)}
    return out, selection


def fmt_num(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def verdict(ok: bool | None, ok_median: bool | None = None) -> str:
    if ok is None:
        return ""
    if ok:
        return "yes"
    return "p50 only" if ok_median else "NO"


def tps_rows(models: dict) -> list[list[str]]:
    rows = []
    for m in models.values():
        name = m["model"]["name"]
        for v, r in m["tps"].items():
            target = f">= {r['target_ratio']:.2f}" if "target_ratio" in r else ""
            rows.append([f"{name}", r["label"], str(r["n"]), fmt_num(r["median"]), fmt_num(r["min"]), fmt_num(r["max"]),
                         f"{r['ratio_cc']:.3f}" + (" (s)" if r["stream"] else ""), f"{r['ratio_generate']:.3f}",
                         f"{r['ratio_engine']:.3f}", f"{r['ratio_llamasrv']:.2f}" if TPS_VARIANTS[v][2] == "msting" else "",
                         target, verdict(r.get("met"))])
    return rows


TPS_HEAD = ["model", "path", "n", "tok/s median", "min", "max", "÷ create_completion", "÷ generate loop", "÷ Engine",
            "÷ llama_cpp.server", "target", "met"]


def ttft_rows(models: dict) -> list[list[str]]:
    rows = []
    for m in models.values():
        name = m["model"]["name"]
        for r in m["ttft"].values():
            added = f"{r['added_p50_ms']:+.2f} / {r['added_p95_ms']:+.2f}" if "added_p50_ms" in r else ""
            if "httpx_own_p50_ms" in r:
                added = f"httpx's own: {r['httpx_own_p50_ms']:+.2f} / {r['httpx_own_p95_ms']:+.2f}"
            target = f"<= +{r['target_added_ms']:g} ms" if "target_added_ms" in r else ""
            rows.append([name, r["label"], str(r["n"]), fmt_num(r.get("p50"), 2), fmt_num(r.get("p95"), 2),
                         fmt_num(r.get("max"), 2), added, target, verdict(r.get("met"), r.get("met_p50"))])
    return rows


TTFT_HEAD = ["model", "path", "n", "p50 ms", "p95 ms", "max ms", "added p50 / p95 ms", "target", "met"]


def cpu_rows(models: dict) -> list[list[str]]:
    rows = []
    for m in models.values():
        name = m["model"]["name"]
        for v, r in m["tps"].items():
            c = r["cpu_ms_mean"]
            where = TPS_VARIANTS[v][2]
            rows.append([name, r["label"], fmt_num(r["wall_ms_median"], 1), fmt_num(c.get("client"), 1),
                         fmt_num(c.get("daemon"), 1) if where == "msting" else "",
                         fmt_num(c.get("worker"), 1) if where in ("msting", "worker") else "",
                         fmt_num(c.get("llamasrv"), 1) if where == "llamasrv" else "",
                         fmt_num(r["chunks_median"])])
    return rows


CPU_HEAD = ["model", "path", "wall ms", "client CPU ms", "daemon CPU ms", "worker CPU ms", "llama_cpp.server CPU ms",
            "chunks"]


def text_table(head: list[str], rows: list[list[str]]) -> str:
    cells = [head] + rows
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(x.ljust(widths[i]) if i < 2 else x.rjust(widths[i]) for i, x in enumerate(c)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    return out


def automatic_notes(res: dict) -> list[str]:
    notes = []
    for m in (res.get("models") or {}).values():
        name = m["model"]["name"]
        ref = m["reference"]
        bad = [r["label"] for r in m["tps"].values() if not r["all_max_tokens"]]
        notes.append(f"{name}: the prompt {PROMPT!r} gives {ref['completion_tokens']} tokens with max_tokens {m.get('max_tokens', MAX_TOKENS)} "
                     f"(finish_reason {ref['finish_reason']}) in create_completion"
                     + (f"; paths with another count: {', '.join(bad)}" if bad else "; every timed request of every path gave "
                        f"completion_tokens == {m.get('max_tokens', MAX_TOKENS)}") + ".")
        mism = [f"{r['label']} ({r['text_matches_reference']}/{r['n']})" for r in m["tps"].values()
                if r["text_matches_reference"] != r["n"]]
        if mism:
            notes.append(f"{name}: text differing from create_completion's (matching runs/all): {', '.join(mism)}.")
        else:
            notes.append(f"{name}: every path returned exactly create_completion's text (greedy, same sampler settings).")
    for fl in (res.get("foreign_load") or {}).values():
        busy = [b for when in ("before", "after") for k in ("busy", "msting_or_pytest") for b in (fl.get(when) or {}).get(k, [])]
        if busy:
            names = sorted({h.short_cmd(b["cmd"]) for b in busy})
            notes.append(f"Other programs were running on this machine around the run ({', '.join(f'`{n}`' for n in names)}): "
                         "its numbers are likely pessimistic and noisier.")
    sel = res.get("selection")
    if sel:
        fc = sel["foreign_cores"]
        notes.append(f"Other programs' CPU use was measured for every decode round and every block of {TTFT_BLOCK} "
                     f"time-to-first-token iterations (machine busy time minus the bench's own processes): median "
                     f"{fc['median']:.2f}, max {fc['max']:.2f} cores. "
                     + f"Summarized: {sel['rounds_used']} of {sel['rounds']} decode rounds"
                     + (" (the quiet ones" if sel["only_quiet_rounds"] else " (all: too few were quiet")
                     + f"), {sel['ttft_blocks_used']} of {sel['ttft_blocks']} TTFT blocks"
                     + (" (the quiet ones)" if sel["only_quiet_ttft_blocks"] else " (all: too few were quiet)")
                     + f"; quiet = other programs under {QUIET_CORES:g} cores"
                     + (f"; the bench paused {sel['paused_sec']:.0f} s in all waiting for quiet." if sel["paused_sec"] else ".")
                     + ("" if sel["only_quiet_rounds"] and sel["only_quiet_ttft_blocks"] else
                        " Numbers from disturbed rounds are pessimistic: re-run on an idle machine."))
    cs = res.get("cpu_stat")
    if cs:
        notes.append(f"During the timed part the machine was {cs['busy_pct']:g} % busy (both cores) and the hypervisor "
                     f"took {cs['steal_pct']:g} % of the CPU time (steal): this is a VM, so single runs vary by tens of "
                     "per cent; compare medians.")
    src = res.get("source") or {}
    if src.get("pythonpath"):
        notes.append(f"PYTHONPATH was set: the daemons, workers and Engine ran msting from `{src.get('msting_module')}`, "
                     f"not from this checkout (git HEAD {src.get('git_head')}).")
    if res.get("stories_missing"):
        notes.append(f"{STORIES} was not found: only the built-in model was measured.")
    for e in res.get("errors", []):
        notes.append(f"Section `{e['section']}` failed: {e['error'].splitlines()[0]}")
    return notes


def markdown(res: dict) -> str:
    m = res["machine"]
    p = res["params"]
    models = res.get("models") or {}
    out = [SECTION_TITLE, ""]
    out.append(f"Measured by `bench/overhead.py` ({res['mode']} run, {res['finished_at']}, {res['duration_sec']:.0f} s) in one "
               "run with interleaved repetitions (every round shuffles the order of the paths; models alternate). "
               "Re-run with `.venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/overhead.py` (`--quick` for a "
               "one-to-two-minute version); the raw numbers are in `bench/results/overhead.json`.")
    out.append("")
    out.append(f"- **Machine:** {m['cpu']}, {m['logical_cores']} logical cores ({m['physical_cores']} physical), "
               f"{m['memory_gib']} GiB RAM, {m['os']}, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}.")
    src = res.get("source") or {}
    code = f"commit `{src.get('git_head')}`" + (" with uncommitted changes under `src/`" if src.get("src_dirty") else "")
    if src.get("pythonpath"):
        code = f"msting from `{src.get('msting_module')}` (PYTHONPATH), checkout at commit `{src.get('git_head')}`"
    out.append(f"- **Code:** {code}.")
    descr = []
    for mm in models.values():
        mi = mm["model"]
        descr.append(f"`{mi['name']}` ({Path(mi['path']).name}, {mi.get('arch')}, "
                     f"{h.human_params(mi.get('n_params'))} params, {(mi.get('size_bytes') or 0) / 1e6:.2f} MB)")
    out.append("- **Models:** " + "; ".join(descr) + f". n_ctx {N_CTX}, 1 thread for decode and for the prompt "
               "(`n_threads=1, n_threads_batch=1` everywhere, as the msting worker runs with `llm.n_threads: 1`), CPU.")
    max_tokens = ", ".join(f"{mm.get('max_tokens', MAX_TOKENS)} ({mm['model']['name']})" for mm in models.values())
    out.append(f"- **Request:** prompt `{PROMPT!r}`, `max_tokens` {max_tokens}, `temperature` 0 (greedy; top_k 40, top_p 0.95, "
               "min_p 0.05, repeat_penalty 1.0: create_completion's defaults, sent explicitly to llama_cpp.server whose "
               "repeat_penalty default is 1.1). tokens/s = completion_tokens / wall time of the request, from sending it "
               "to the last byte (in process: of the call). Streaming requests to msting ask for "
               "`stream_options.include_usage`; for the other streams the token count is that of the identical "
               "non-streaming reference text.")
    out.append(f"- **Repetitions:** {p['warmup']} warm-up runs of every path, then {p['rounds']} rounds of every path per "
               f"model; time to first token: {p['ttft_requests']} streaming requests with `max_tokens` {TTFT_MAX_TOKENS} "
               "per path and model (read to the end; the first SSE chunk carrying text counts).")
    out.append("- **Paths:** in process, `llama_cpp.Llama(model, n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)` "
               "with `create_completion` (the main baseline: what a user calls), a bare `Llama.generate` loop (sampling "
               "only, detokenized once at the end: the ceiling), and msting's `Engine.generate` (the worker's own loop, "
               "so the ratio to it is the pure serving overhead); a msting worker process alone (`python -m msting.worker`, "
               "driven by the client over its socketpair with the daemon's own `generate` frames: the worker's share of the "
               "overhead, without the daemon); the msting daemon (`llm.n_threads: 1`, shipped "
               "settings otherwise) on `POST /v1/completions` over its Unix socket and over TCP `127.0.0.1` with a "
               "persistent `httpx.Client`; `python -m llama_cpp.server --model M --n_threads 1 --n_threads_batch 1 "
               "--port P` (its other settings default) on the same route with the same client.")
    out.append("- **Client and CPU contention:** every timed call runs in one dedicated client process that the harness "
               "spawns once; the harness only sends it a command over a pipe and blocks, and reads each process's CPU "
               "time (psutil) before and after the call, outside the timed region. With 2 cores, the worker's decode "
               "thread takes one core while the daemon's event loop and the client share the other, as they would for "
               "any local client; the in-process baselines pay none of that.")
    out.append(f"- **Targets:** tokens/s ≥ {TARGET_RATIO_NONSTREAM:.2f} × in-process (non-streaming) and ≥ "
               f"{TARGET_RATIO_STREAM:.2f} × (streaming), judged on the ratio of medians to create_completion in the same "
               f"stream mode; time to first token over the Unix socket adds ≤ {TARGET_TTFT_ADDED_MS:g} ms to in-process "
               "create_completion(stream=True), at p50 and p95, judged on the raw socket client (the daemon's share: "
               "one write for the request, bytes read as they come). httpx adds its own per-request work on top, for "
               "any server; the two \"POST answered 400 at once\" rows measure it in the same run (httpx minus raw).")
    out.append("")
    out.append("**Decode tokens/s.** Ratios are of medians, each against the path named in the column "
               "(create_completion and llama_cpp.server in the same stream mode as the row; \"(s)\" marks the streaming "
               "rows); the per-round paired ratios are in the JSON. The target is judged on \"÷ create_completion\".")
    out.append("")
    out.extend(md_table(TPS_HEAD, tps_rows(models)))
    out.append("")
    out.append(f"**Time to first token** (streaming, `max_tokens` {TTFT_MAX_TOKENS}; added = this path minus in-process "
               "create_completion(stream=True), at p50 and at p95; the last two rows per model are round trips of a POST "
               "the daemon rejects with 400, no worker involved):")
    out.append("")
    out.extend(md_table(TTFT_HEAD, ttft_rows(models)))
    out.append("")
    out.append(f"**CPU per request** (means over the decode runs, `max_tokens` {max_tokens}; \"chunks\": pieces of text the "
               "client received):")
    out.append("")
    out.extend(md_table(CPU_HEAD, cpu_rows(models)))
    out.append("")
    out.extend(h.notes_block(res.get("notes") or []))
    return "\n".join(out)


ANALYSIS_START = "<!-- overhead-analysis: written by hand, kept when bench/overhead.py rewrites this section -->"
ANALYSIS_END = "<!-- /overhead-analysis -->"


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (one to two minutes)")
    ap.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help=f"JSON results (default {DEFAULT_JSON.relative_to(ROOT)})")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds until no other pytest/msting/busy program runs")
    ap.add_argument("--keep-homes", action="store_true", help="keep the temporary MSTING_HOMEs and server logs")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=PATH[@MAX_TOKENS]",
                    help="measure this GGUF instead of the default pair (stories260K and msting-tiny); repeatable; "
                         "PATH 'large' is the generated bench model (bench/harness.py large_model())")
    ap.add_argument("--profile", choices=sorted(PROFILES), default=None, help=argparse.SUPPRESS)  # bench/run.py's own
    args = ap.parse_args(argv)

    h.install_signal_handlers()
    mode = args.profile or ("quick" if args.quick else "full")
    p = PROFILES[mode]
    t_start = time.time()
    res: dict[str, Any] = {"mode": mode, "params": {**p, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                                                    "ttft_max_tokens": TTFT_MAX_TOKENS, "n_ctx": N_CTX, "n_threads": 1,
                                                    "n_threads_batch": 1, "temperature": 0.0},
                           "machine": h.machine(), "source": source_info(), "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
                           "targets": {"ratio_nonstream": TARGET_RATIO_NONSTREAM, "ratio_stream": TARGET_RATIO_STREAM,
                                       "ttft_added_ms": TARGET_TTFT_ADDED_MS}, "errors": []}
    m = res["machine"]
    print(f"msting serving-overhead bench ({mode}) on {m['cpu']}, {m['logical_cores']} cores, {m['memory_gib']} GiB", flush=True)
    if args.wait_quiet:
        waited = h.wait_quiet(args.wait_quiet)
        if waited > 5:
            print(f"  waited {waited:.0f} s for other programs to finish", flush=True)
    tmp_models = Path(tempfile.mkdtemp(prefix="msbtiny"))
    from msting.models.builtin import ensure_builtin_model

    models: list[tuple[str, str, str, int]] = []
    for spec in args.model:
        key, _, rest = spec.partition("=")
        path, _, n = rest.partition("@")
        if path == "large":
            path = str(h.large_model())
        if not Path(path).is_file():
            if Path(path) == STORIES:
                res["stories_missing"] = True
                continue
            ap.error(f"--model {spec}: no such file")
        models.append((key, Path(path).name, path, int(n) if n else MAX_TOKENS))
    if not args.model:
        if STORIES.exists():
            models.append(("stories260K", "stories260K.gguf", str(STORIES), MAX_TOKENS))
        else:
            res["stories_missing"] = True
        models.append(("msting-tiny", "built-in msting-tiny", str(ensure_builtin_model(tmp_models)), MAX_TOKENS))

    targets: dict[str, Target] = {}
    client: ClientProcess | None = None
    try:
        for key, title, path, max_tokens in models:
            t = Target(key, title, path, max_tokens)
            targets[key] = t
            print(f"  {key}: daemon ready in {t.started['wall_sec']:.2f} s (pid {t.daemon_pid}, worker {t.worker_pid}), "
                  f"llama_cpp.server pid {t.server.pid} on port {t.server.port}", flush=True)
        client = ClientProcess({"prompt": PROMPT, "models": {k: t.spec for k, t in targets.items()}})
        before = foreign_load()
        res["foreign_load"] = {"bench": {"before": before}}
        if before["busy"] or before["msting_or_pytest"]:
            print(f"  WARNING: other programs are running: "
                  f"{sorted({h.short_cmd(b['cmd']) for b in before['busy'] + before['msting_or_pytest']})}", flush=True)
        stat0 = cpu_stat()
        try:
            rec = run_bench(p, targets, client)
            res["models"], res["selection"] = summarize(rec, targets)
            res["raw"] = {k: {"tps": rec.tps[k], "ttft": rec.ttft[k]} for k in targets}
        except (h.BenchError, httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
            traceback.print_exc()
            res["errors"].append({"section": "bench", "error": str(exc)})
        res["cpu_stat"] = steal_share(stat0, cpu_stat())
        after = foreign_load()
        res["foreign_load"]["bench"]["after"] = after
        if after["busy"] or after["msting_or_pytest"]:
            print(f"  WARNING: other programs are running: "
                  f"{sorted({h.short_cmd(b['cmd']) for b in after['busy'] + after['msting_or_pytest']})}", flush=True)
    finally:
        if client is not None:
            client.close()
        kept = [str(home.path) for home in h.HOMES] + [str(s.dir) for s in h.SERVERS]
        leftovers = h.cleanup_all(args.keep_homes)
        if leftovers:
            print(f"killed leftover processes: {leftovers}", file=sys.stderr)
        res["leftover_pids_killed"] = leftovers
        import shutil

        shutil.rmtree(tmp_models, ignore_errors=True)
        if args.keep_homes:
            print("kept: " + " ".join(kept), file=sys.stderr)

    res["finished_at"] = _dt.datetime.now().isoformat(timespec="seconds")
    res["duration_sec"] = round(time.time() - t_start, 1)
    res["notes"] = automatic_notes(res)
    models_out = res.get("models") or {}
    print()
    print(text_table(TPS_HEAD, tps_rows(models_out)))
    print()
    print(text_table(TTFT_HEAD, ttft_rows(models_out)))
    print()
    print(text_table(CPU_HEAD, cpu_rows(models_out)))
    for n in res["notes"]:
        print(f"- {n}")
    print(f"\n{mode} run took {res['duration_sec']:.0f} s")
    h.dump_json(args.json_out, res)
    print(f"wrote {args.json_out}")
    if not args.no_docs:
        h.write_docs(markdown(res), SECTION_TITLE, keep=(ANALYSIS_START, ANALYSIS_END))
        print(f"updated {DOCS} ({SECTION_TITLE[3:]})")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
