"""What every bench here shares: statistics, daemon homes (``tests/daemon_home.py``), a
hand-written HTTP/1.1 client (``RawConn``), ``GET /health`` sampled from another process, the
peer servers, the machine. Every process started is registered (``HOMES``, ``SERVERS``), so
that one ``cleanup_all()`` in a ``finally`` stops it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from daemon_home import DaemonError, DaemonHome, free_port, merge, msting_command  # noqa: E402,F401

RESULTS = ROOT / "bench" / "results"  # raw JSON, gitignored
CACHE = ROOT / "bench" / ".cache"  # generated models, gitignored
STORIES = (ROOT / ".." / "shared" / "models" / "stories260K.gguf").resolve()
STORIES_SHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
BENCH_CONFIG: dict = {"logging": {"file_level": "INFO"}}  # the shipped defaults otherwise
HEALTH_INTERVAL_S = 0.005  # pause between two /health samples
BenchError = DaemonError
KEEP = False  # --keep-homes: leave the homes and server logs for inspection


# ---- statistics ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def spread(values: list[float], digits: int = 1) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(vals), "median": round(percentile(vals, 50), digits), "min": round(min(vals), digits),
            "max": round(max(vals), digits), "values": [round(v, digits) for v in vals]}


def latency(values_ms: list[float]) -> dict:
    if not values_ms:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {"n": len(values_ms), "p50": round(percentile(values_ms, 50), 3), "p99": round(percentile(values_ms, 99), 3),
            "max": round(max(values_ms), 3), "mean": round(sum(values_ms) / len(values_ms), 3)}


# ---- daemons and peers -----------------------------------------------------------------

HOMES: list[DaemonHome] = []
SERVERS: list[LlamaServer] = []


def home(label: str, extra: dict | None = None) -> DaemonHome:
    """A fresh home with BENCH_CONFIG, its port and `extra` written; stopped by cleanup_all()."""
    dh = DaemonHome(base=BENCH_CONFIG, label=label)
    HOMES.append(dh)
    dh.write_config(merge({"llm_service": {"port": dh.port}}, extra or {}))
    return dh


def start(dh: DaemonHome) -> dict:
    """`msting llm start --json`: its report, with the wall time in ``wall_sec``."""
    proc = dh.start("--json")
    return {**json.loads(proc.stdout), "wall_sec": proc.wall_sec}


def status(client: httpx.Client) -> dict:
    return client.get("/v1/status").json()


def model_info(c: httpx.Client, status_keys: tuple, info_keys: tuple, st: dict | None = None, **extra: Any) -> dict:
    """The first model as /v1/status shows it (`st`, else fetched), with `extra` and the GGUF facts /models/load reports.
    `worker_threads`: the thread count each of its workers decodes with (the spec's `n_threads` is null when the
    workers measure it)."""
    m = (st or status(c))["models"][0]
    info = c.post("/models/load", json={"model": "default"}).json().get("info") or {}
    threads = [w.get("n_threads") for w in m.get("workers") or [] if w.get("n_threads") is not None]
    return {**{k: m.get(k) for k in status_keys}, "worker_threads": threads, **extra, **{k: info.get(k) for k in info_keys}}


def ready_worker(client: httpx.Client, not_pid: int | None = None) -> dict | None:
    """The first model's worker if it is ready and verified (and its pid is not `not_pid`)."""
    model = status(client)["models"][0]
    w = model["workers"][0]
    if model["state"] == "ready" and w["verified"] and w["pid"] and w["pid"] != not_pid and w["state"] in ("READY", "BUSY"):
        return {**w, "load_ms": model["load_ms"]}
    return None


def up(c: httpx.Client) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return c.get("/v1/models").status_code == 200
    return False


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port, its log in a temp folder."""

    name = "llama_cpp.server"

    def __init__(self, model: str, n_ctx: int = 2048, n_threads: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="msbsrv"))
        SERVERS.append(self)
        with open(self.dir / "server.log", "wb") as out:
            self.proc = subprocess.Popen(self.command(model, n_ctx, n_threads), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5, trust_env=False) as c:
            while not up(c):
                if self.proc.poll() is not None or time.monotonic() > t0 + 90:
                    raise BenchError(f"{self.name} " + (f"exited {self.proc.returncode}" if self.proc.poll() is not None else "did not answer within 90 s")
                                     + f":\n{self.tail()}")
                time.sleep(0.1)
        self.started_sec = time.monotonic() - t0

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(n_threads),
                "--n_threads_batch", str(n_threads), "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--port", str(self.port)]

    def tail(self) -> str:
        try:
            return "\n".join((self.dir / "server.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self, keep: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class CppLlamaServer(LlamaServer):
    """llama.cpp's own ``llama-server`` (C++), when one is on PATH; the same OpenAI routes."""

    name = "llama-server (C++)"

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        return [shutil.which("llama-server") or "llama-server", "-m", model, "-t", str(n_threads), "-tb", str(n_threads),
                "-c", str(n_ctx), "--host", "127.0.0.1", "--port", str(self.port)]


def cleanup_all(keep: bool | None = None) -> list[int]:
    """Stop every server and daemon this process started; the leftover pids killed."""
    keep = KEEP if keep is None else keep
    for server in SERVERS:
        try:
            server.stop(keep)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"stopping {server.name} pid {server.pid} failed: {exc}", file=sys.stderr)
    SERVERS.clear()
    leftovers = [pid for dh in HOMES for pid in dh.cleanup(keep)]
    if keep:
        print("kept: " + " ".join(str(dh.home) for dh in HOMES), file=sys.stderr)
    HOMES.clear()
    return leftovers


def install_signal_handlers(handler: Callable | None = None) -> None:
    """SIGTERM / SIGHUP unwind through the `finally` blocks that stop what the bench started."""
    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler or on_signal)


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def attempt(fn: Callable[[], Any], errors: list, **where: Any) -> tuple[bool, Any]:
    """(True, fn()), or (False, None) with the exception added to `errors`: one failed part must not lose the others."""
    try:
        return True, fn()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        errors.append({**where, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return False, None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)


def write_profiles(dh: DaemonHome, profiles: dict[str, dict]) -> dict[str, dict]:
    folder = dh.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in profiles.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return profiles


# ---- hand-written HTTP/1.1 -------------------------------------------------------------


class Dropped(Exception):
    """The connection ended before the reply was complete."""


@dataclass
class Reply:
    status: int | None = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the whole message arrived, as its framing says
    error: str | None = None  # connect | timeout | dropped | reset | send
    sent_at: float = 0.0  # perf_counter() just before the request's first byte was written

    def json(self) -> Any:
        return json.loads(self.body)


class RawConn:
    """One keep-alive connection with HTTP/1.1 written by hand (the request in one write,
    the reply read as it comes), to a Unix socket ``("unix", path)`` or to TCP
    ``("tcp", "127.0.0.1", port)``: no client library's own cost or behaviour in the way."""

    IDLE_REUSE_SEC = 20.0  # uvicorn closes idle keep-alive connections after 30 s

    def __init__(self, target: tuple, timeout: float = 60.0):
        self.target = target
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.last_used = 0.0
        self.host = "msting" if target[0] == "unix" else f"127.0.0.1:{target[2]}"

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock, self.buf = None, b""

    def _connect(self) -> None:
        if self.sock is not None and (time.monotonic() - self.last_used > self.IDLE_REUSE_SEC
                                      or select.select([self.sock], [], [], 0)[0]):  # idle too long, or closed by the server
            self.close()
        if self.sock is None:
            if self.target[0] == "unix":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(self.target[1])
            else:
                s = socket.create_connection((self.target[1], self.target[2]), timeout=5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = s
            self.buf = b""

    def request(self, method: str, path: str, body: bytes | None = None, *, timeout: float | None = None,
                chunked: bool = False, on_chunk: Any = None) -> Reply:
        """`on_chunk(bytes)` is called with each chunk of a chunked reply as it arrives."""
        reply = Reply()
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            self._connect()
        except OSError as exc:
            self.close()
            reply.error = f"connect: {type(exc).__name__}"
            return reply
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n" + ("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
            head += "\r\n"
        data = (head + "\r\n").encode("latin-1", "replace")
        send_error = None
        sock = self.sock
        assert sock is not None
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            reply.sent_at = time.perf_counter()
            if not chunked:
                sock.sendall(data + (body or b""))
            else:
                sock.sendall(data + b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                                             for i in range(0, len(body), 65536)) + b"0\r\n\r\n")
        except socket.timeout:
            send_error = "timeout"
        except OSError as exc:  # the server answered (413) and closed before reading it all: read that answer
            send_error = f"send: {type(exc).__name__}"
        try:
            self._read(reply, deadline, on_chunk)
        except socket.timeout:
            reply.error = "timeout"
        except (Dropped, OSError) as exc:
            reply.error = send_error or ("dropped" if isinstance(exc, Dropped) else f"reset: {type(exc).__name__}")
        self.last_used = time.monotonic()
        if reply.error or not reply.complete or reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    def post(self, path: str, body: Any, timeout: float | None = None) -> Reply:
        return self.request("POST", path, json.dumps(body).encode(), timeout=timeout)

    def _recv(self, deadline: float) -> None:
        assert self.sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise Dropped()
        self.buf += chunk

    def _read(self, reply: Reply, deadline: float, on_chunk: Any) -> None:
        while b"\r\n\r\n" not in self.buf:
            self._recv(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        reply.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            reply.headers[k.strip().lower()] = v.strip()
        if "content-length" in reply.headers:
            n = int(reply.headers["content-length"])
            while len(self.buf) < n:
                self._recv(deadline)
            reply.body, self.buf = self.buf[:n], self.buf[n:]
        elif reply.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            try:
                while True:
                    while b"\r\n" not in self.buf:
                        self._recv(deadline)
                    size_line, self.buf = self.buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(self.buf) < size + 2:
                        self._recv(deadline)
                    parts.append(self.buf[:size])
                    if size and on_chunk is not None:
                        on_chunk(parts[-1])
                    self.buf = self.buf[size + 2:]
                    if size == 0:
                        break
            finally:
                reply.body = b"".join(parts)
        else:  # no length: until the server closes
            try:
                while True:
                    self._recv(deadline)
            except Dropped:
                pass
            reply.body, self.buf = self.buf, b""
            self.close()
        reply.complete = True


# ---- GET /health from another process --------------------------------------------------


def _reference_server(sock_path: str, body: bytes, started: Any) -> None:
    """A stand-in for the daemon that does nothing but answer every request on its Unix
    socket with the same 200 and `body` (a real /health answer): sampled with httpx under
    the same load, it shows the client's own floor."""
    import asyncio

    answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GET: no body
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path=sock_path)
        started.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _sampler(conn: Any, sock_path: str, reference_path: str) -> None:
    """Samples GET /health on command, in its own process (the bench's threads never hold its GIL)."""
    def via(c: httpx.Client) -> str:
        r = c.get("/health")
        return r.json().get("readiness", "?") if r.status_code == 200 else f"http {r.status_code}"

    def raw_get() -> str:
        r = raw.request("GET", "/health", timeout=10)
        if r.status is None:
            raise ConnectionError(r.error)
        return r.json().get("readiness", "?")

    clients = [httpx.Client(transport=httpx.HTTPTransport(uds=p), base_url="http://msting", timeout=10, trust_env=False)
               for p in (sock_path, reference_path)]
    raw = RawConn(("unix", sock_path), 10)
    getters = {"httpx": lambda: via(clients[0]), "raw": raw_get, "httpx_reference": lambda: via(clients[1])}
    try:
        while True:
            cmd = conn.recv()
            if cmd[0] != "run":
                return
            _, duration, kind = cmd
            get = getters[kind]
            for _ in range(5):  # (re)connect and warm up; not counted
                try:
                    get()
                except (httpx.HTTPError, OSError, ValueError):
                    raw.close()
            out: list[tuple[float, str, float]] = []
            deadline = None if duration is None else time.perf_counter() + duration
            while len(out) < 200_000:
                if deadline is None:
                    if conn.poll():
                        conn.recv()
                        break
                elif time.perf_counter() >= deadline:
                    break
                t0 = time.perf_counter()
                try:
                    readiness = get()
                except (httpx.HTTPError, OSError, ValueError):
                    raw.close()
                    readiness = "error"
                out.append(((time.perf_counter() - t0) * 1000.0, readiness, t0))
                time.sleep(HEALTH_INTERVAL_S)
            conn.send(out)
    finally:
        for c in clients:
            c.close()
        raw.close()


class Child:
    """A spawned process running `target(conn, *args)`, driven over a pipe."""

    def __init__(self, target: Callable, *args: Any, name: str | None = None):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        child.close()

    def answer(self, timeout: float, what: str) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"{what} gave no answer within {timeout:g}s")
        return self.conn.recv()

    def close(self, wait: float = 5) -> None:
        """Ask it to close, wait `wait` s, then kill it."""
        with contextlib.suppress(OSError):
            self.conn.send(("close",))
        self.proc.join(wait)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class HealthSampler(Child):
    """GET /health from a child process with one persistent httpx client ("httpx"); for
    reference, "raw" (hand-written HTTP: the daemon's own share) and "httpx_reference"
    (httpx against a do-nothing server: the client's floor). Samples are (ms, reported
    readiness, perf_counter() at the start); perf_counter is CLOCK_MONOTONIC, so the
    child's times compare with the parent's."""

    def __init__(self, dh: DaemonHome):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with dh.client(timeout=10) as c:
            body = c.get("/health").content
        reference_path = str(dh.home / "reference.sock")
        started = ctx.Event()
        self.server = ctx.Process(target=_reference_server, args=(reference_path, body, started), daemon=True)
        self.server.start()
        if not started.wait(30):
            raise BenchError("the reference /health server did not start")
        super().__init__(_sampler, str(dh.socket), reference_path)

    def run(self, duration: float, kind: str = "httpx") -> list[tuple[float, str, float]]:
        self.conn.send(("run", duration, kind))
        return self.answer(duration + 60, "the /health sampler")

    def start(self, kind: str = "httpx") -> None:
        """Sample until stop()."""
        self.conn.send(("run", None, kind))

    def stop(self) -> list[tuple[float, str, float]]:
        self.conn.send(("stop",))
        return self.answer(60, "the /health sampler")

    def close(self, wait: float = 5) -> None:
        super().close(wait)
        self.server.kill()
        self.server.join(5)


# ---- the machine -----------------------------------------------------------------------

FOREIGN_MARKERS = ("pytest", "msting.daemon", "msting.worker", "-m msting", "bin/msting", "llama_cpp", "pip install")


def short_cmd(cmd: str) -> str:
    """'/x/.venv/bin/python -m msting.worker --fd 15 ...' -> 'python -m msting.worker'."""
    parts = cmd.split() or ["?"]
    words = [parts[0].rsplit("/", 1)[-1]]
    if len(parts) > 2 and parts[1] == "-m":
        words += parts[1:3]
    elif len(parts) > 1 and not parts[1].startswith("-"):
        words.append(parts[1].rsplit("/", 1)[-1])
    return " ".join(words)


def foreign_load(window: float = 0.5, threshold: float = 15.0) -> dict:
    """Other programs busy on the CPU right now, and test suites or other msting daemons
    (bursty: counted even when idle this instant); not this bench, its children, its
    daemons, its ancestors or its process group. On a small machine they distort every
    number, so the reports say so."""
    me = psutil.Process()
    ours = {me.pid} | {c.pid for c in me.children(recursive=True)} | {p.pid for p in me.parents()}
    group = os.getpgid(0)
    homes = {str(dh.home) for dh in HOMES}
    procs = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid in ours or os.getpgid(proc.pid) == group:
                continue
            proc.cpu_percent(None)
            procs.append(proc)
        except (psutil.Error, OSError):
            continue
    time.sleep(window)
    busy, present = [], []
    for proc in procs:
        try:
            if proc.environ().get("MSTING_HOME") in homes:
                continue
        except (psutil.Error, OSError):
            pass
        try:
            cmd = " ".join(proc.cmdline())
            pct = proc.cpu_percent(None)
            if pct >= threshold:
                busy.append({"pid": proc.pid, "cpu_percent": round(pct), "cmd": cmd[:120]})
            if proc.name() not in ("grep", "pgrep") and any(m in cmd for m in FOREIGN_MARKERS):
                present.append({"pid": proc.pid, "cmd": cmd[:120]})
        except (psutil.Error, OSError):
            continue
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "busy": busy, "msting_or_pytest": present}


def foreign_names(found: Any) -> list[str]:
    """The short commands of every foreign program in a (nested) result of foreign_load()."""
    if isinstance(found, dict):
        own = [b["cmd"] for k in ("busy", "msting_or_pytest") for b in found.get(k) or []]
        return sorted({short_cmd(c) for c in own} | {n for v in found.values() if isinstance(v, dict) for n in foreign_names(v)})
    return []


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` s until nothing foreign is busy or running; the seconds waited."""
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit and quiet < 3:
        fl = foreign_load(1.0)
        quiet = 0 if fl["busy"] or fl["msting_or_pytest"] else quiet + 1
        if quiet < 3:
            time.sleep(2)
    return time.monotonic() - t0


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    """The machine, the package versions, and which msting the daemons run (PYTHONPATH may point
    at another source tree) at which commit."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    dirty, spec = git("status", "--porcelain", "--", "src"), importlib.util.find_spec("msting")
    return {"git_head": git("rev-parse", "--short", "HEAD"), "src_uncommitted_changes": None if dirty is None else len(dirty.splitlines()),
            "cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "msting": ver("msting"), "llama_cpp_python": ver("llama-cpp-python"),
            "msting_module": str(Path(spec.origin).parent) if spec and spec.origin else None, "pythonpath": os.environ.get("PYTHONPATH")}


def cpu_stat() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> dict | None:
    """Share of the machine's CPU time stolen by the hypervisor, and busy, between two cpu_stat()s."""
    if not before or not after or len(before) < 8:
        return None
    d = [a - b for a, b in zip(after, before)]
    total = sum(d[:8]) or 1
    return {"steal_pct": round(100.0 * d[7] / total, 2), "busy_pct": round(100.0 * (total - d[3] - d[4]) / total, 1)}


def cpu_seconds(pid: int | None) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except (psutil.Error, TypeError, ValueError):
        return None


def memory_of(pid: int) -> dict | None:
    """RSS, USS, PSS and shared bytes of one process (psutil's memory_full_info: USS is what
    only this process holds, PSS splits shared pages among their sharers)."""
    try:
        proc = psutil.Process(pid)
        full = proc.memory_full_info()
        cmd = short_cmd(" ".join(proc.cmdline()))
    except (psutil.Error, OSError):
        return None
    return {"pid": pid, "cmd": cmd, "rss": full.rss, "uss": getattr(full, "uss", None), "pss": getattr(full, "pss", None),
            "shared": getattr(full, "shared", None)}


def compile_msting() -> None:
    """As pip install does: an editable checkout run with PYTHONDONTWRITEBYTECODE=1 would
    otherwise recompile every msting module in every CLI call, daemon and worker start."""
    import compileall

    import msting

    compileall.compile_dir(str(Path(msting.__file__).parent), quiet=1)


# ---- models ------------------------------------------------------------------------------

# A larger generated model where the engine dominates: msting-tiny's recipe (vocabulary,
# tokenizer, deterministic F32 weights) at 512 wide and 8 layers: about 26M parameters, 104 MB.
LARGE_DIMS = {"n_embd": 512, "n_layer": 8, "n_head": 8, "n_head_kv": 8, "n_ff": 1376}
LARGE_NAME = "msting-bench-26m"
# A model of realistic size, where decoding is memory-bound as with the 1-8B models users run:
# the same recipe at 1024 wide and 12 layers, stored in F16 (its matrices; the norms stay F32):
# about 184M parameters, 350 MiB.
REALISTIC_DIMS = {"n_embd": 1024, "n_layer": 12, "n_head": 16, "n_head_kv": 16, "n_ff": 3584}
REALISTIC_NAME = "msting-bench-180m"


def large_model(folder: Path = CACHE) -> Path:
    """The generated 26M bench model, written once into bench/.cache (the same bytes every time)."""
    return generated_model(LARGE_NAME, LARGE_DIMS, folder=folder)


def realistic_model(folder: Path = CACHE) -> Path:
    """The generated 180M F16 bench model, written once into bench/.cache."""
    return generated_model(REALISTIC_NAME, REALISTIC_DIMS, f16=True, folder=folder)


def generated_model(name: str, dims: dict, f16: bool = False, folder: Path = CACHE) -> Path:
    """msting-tiny's recipe at `dims` (random weights, msting-tiny's vocabulary), in F32 or,
    with `f16`, converted to F16; written once into `folder` (the same bytes every time)."""
    from msting.models.builtin import BUILTIN_VERSION, write_tiny_model

    target = folder / f"{name}{'-f16' if f16 else ''}-v{BUILTIN_VERSION}.gguf"
    if not (target.is_file() and target.stat().st_size > 0):
        folder.mkdir(parents=True, exist_ok=True)
        tmp, f32 = target.with_suffix(".tmp"), target.with_suffix(".f32.tmp")
        try:
            write_tiny_model(f32 if f16 else tmp, **dims, name=name,
                             description="msting benchmark model: msting-tiny's recipe, larger (random weights)")
            if f16:
                to_f16(f32, tmp)
            os.replace(tmp, target)
        finally:
            for leftover in (tmp, f32):
                leftover.unlink(missing_ok=True)
    return target


def to_f16(src: Path, dst: Path) -> None:
    """Copy the GGUF `src` to `dst` with its matrices in F16 (1-D tensors stay F32, as
    llama.cpp's converters keep them), every metadata key kept but the file type."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    try:
        for f in reader.fields.values():
            if f.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or f.name.startswith("GGUF."):
                continue
            vtype = f.types[0]
            writer.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        for t in reader.tensors:
            data = np.asarray(t.data)
            writer.add_tensor(t.name, data.astype(np.float16) if data.ndim >= 2 else data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def human_params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


class Load:
    """`clients` threads, each running `loop(i, load)`: back-to-back requests while
    ``load.running()``, each result handed to ``load.add()``. Bounded in time and count."""

    def __init__(self, clients: int, loop: Any, max_sec: float, max_requests: int = 1_000_000):
        self.stop_event = threading.Event()
        self.deadline = time.monotonic() + max_sec
        self.max_requests = max_requests
        self.records: list = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=loop, args=(i, self), name=f"load-{i}", daemon=True) for i in range(clients)]

    @classmethod
    def of(cls, dh: DaemonHome, clients: int, send: Callable[[httpx.Client], Any], max_sec: float, max_requests: int) -> Load:
        """Each client on its own httpx client of `dh`, adding what `send(client)` returns."""
        def loop(i: int, load: Load) -> None:
            with dh.client(timeout=60) as c:
                while load.running():
                    load.add(send(c))

        return cls(clients, loop, max_sec, max_requests)

    def running(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() < self.deadline and len(self.records) < self.max_requests

    def add(self, record: Any) -> None:
        with self.lock:
            self.records.append(record)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 120) -> list:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            raise BenchError(f"load threads did not stop: {alive}")
        return self.records
