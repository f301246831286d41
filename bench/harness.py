"""Shared harness of the benchmarks in this folder (``bench/run.py`` and the sections it runs:
``service.py``, ``overhead.py``, ``switch.py``, ``suite.py``).

- statistics: ``percentile``, ``spread`` (median/min/max), ``latency`` (p50/p99);
- a daemon under a fresh short temporary MSTING_HOME (``Home``), and the helpers around
  ``GET /v1/status``;
- ``GET /health`` sampled from a separate process (``HealthSampler``);
- peers started by the bench: ``LlamaServer`` (``python -m llama_cpp.server``) and
  ``CppLlamaServer`` (llama.cpp's ``llama-server`` when one is on PATH);
- the machine (``machine``), other programs running on it (``foreign_load``,
  ``wait_quiet``), CPU counters;
- memory of a process tree (``memory_of``: RSS, USS, PSS, shared);
- ``write_docs``: replaces one section of ``docs/benchmarks.md``;
- ``cleanup_all``: stops every daemon home and server the bench started.

Every process the bench starts is registered here (``HOMES``, ``SERVERS``) so that one
``cleanup_all()`` in a ``finally`` stops it. This file must not import from ``tests/``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from child_env import child_env  # noqa: E402  the same explicit environment as the tests

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"
STORIES = (ROOT / ".." / "shared" / "models" / "stories260K.gguf").resolve()
STORIES_SHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
SOCKET_LIMIT = 107  # bytes in sun_path, without the terminating NUL
BASE_CONFIG: dict = {"logging": {"file_level": "INFO"}}
HEALTH_INTERVAL_S = 0.005  # pause between two /health samples


# ---------------------------------------------------------------------------------------
# statistics


# ---------------------------------------------------------------------------------------
# statistics


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


# ---------------------------------------------------------------------------------------
# one daemon home

HOMES: list[Home] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def msting_command() -> list[str]:
    exe = Path(sys.executable).parent / "msting"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "msting"]


class BenchError(RuntimeError):
    pass


class Home:
    """A fresh MSTING_HOME with a free port and a written config; remembers itself for cleanup."""

    def __init__(self, label: str, extra: dict | None = None):
        self.label = label
        self.path = Path(tempfile.mkdtemp(prefix="msb"))
        HOMES.append(self)
        if len(str(self.socket).encode()) > SOCKET_LIMIT:
            raise BenchError(f"socket path {self.socket} is over {SOCKET_LIMIT} bytes: set TMPDIR to a shorter directory")
        self.port = free_port()
        # An explicit environment, as in the tests: a developer's LLM_API_KEY, MSTING_*
        # or proxy variables must not change what the bench measures.
        self.env = child_env(MSTING_HOME=str(self.path), MSTING_LLM_PORT=str(self.port))
        self.config = merge(merge(BASE_CONFIG, {"llm_service": {"port": self.port}}), extra or {})
        cfg = self.path / "config" / "config.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.cleaned = False

    @property
    def socket(self) -> Path:
        return self.path / "run" / "msting.sock"

    @property
    def log_file(self) -> Path:
        return self.path / "logs" / "daemon.log"

    def cli(self, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
        t0 = time.perf_counter()
        proc = subprocess.run([*msting_command(), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        return proc, time.perf_counter() - t0

    def cli_json(self, *args: str, timeout: float = 120) -> tuple[dict, float]:
        proc, dt = self.cli(*args, timeout=timeout)
        try:
            body = json.loads(proc.stdout)
        except ValueError:
            body = {}
        if proc.returncode != 0:
            raise BenchError(f"[{self.label}] msting {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}\nlog:\n{self.log_tail()}")
        return body, dt

    def start(self) -> dict:
        body, dt = self.cli_json("llm", "start", "--json", "--timeout", "90")
        body["wall_sec"] = dt
        return body

    def spawn_idle(self, timeout: float = 60) -> dict:
        """Start the daemon (``python -m msting.daemon``, detached, as ``msting llm start``
        does) without waiting for a model: for a config that loads none at start
        (``llm_service.always_ready: false``), where ``msting llm start`` would wait for a
        readiness that never comes. Returns the first /health body with a pid."""
        log = self.path / "logs" / "daemon.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(log, "ab") as out:
            subprocess.Popen([sys.executable, "-m", "msting.daemon"], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=self.env)
        with self.client(timeout=2) as c:
            body = wait_until(lambda: (c.get("/health").json() or {}) if self.socket.exists() else None,
                              timeout, 0.02, f"[{self.label}] the daemon's /health")
        body["wall_sec"] = time.perf_counter() - t0
        return body

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://msting", timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no daemon log)"

    def processes(self) -> list[psutil.Process]:
        """Every live process started with this MSTING_HOME (the daemon and its workers)."""
        found = []
        me = os.getpid()
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != me and proc.environ().get("MSTING_HOME") == str(self.path) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def stop(self) -> list[int]:
        """`msting llm stop --force`, then SIGKILL whatever still carries this home. Returns the pids killed."""
        try:
            self.cli("llm", "stop", "--force", "--timeout", "10", timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"[{self.label}] msting llm stop --force failed: {exc}", file=sys.stderr)
        leftovers = self.processes()
        for proc in leftovers:
            try:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=5)
        return [p.pid for p in leftovers]

    def cleanup(self, keep: bool = False) -> list[int]:
        if self.cleaned:
            return []
        killed = self.stop()
        self.cleaned = True
        if not keep:
            shutil.rmtree(self.path, ignore_errors=True)
        return killed


def status(client: httpx.Client) -> dict:
    return client.get("/v1/status").json()


def worker_of(st: dict) -> dict:
    return st["models"][0]["workers"][0]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.01, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except (httpx.HTTPError, OSError, KeyError, IndexError, ValueError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what} (last error: {last_exc!r})")


def ready_worker(client: httpx.Client, not_pid: int | None = None) -> dict | None:
    """The worker snapshot if the model is ready and verified (and its pid is not `not_pid`)."""
    st = status(client)
    model = st["models"][0]
    w = worker_of(st)
    if model["state"] == "ready" and w["verified"] and w["pid"] and w["pid"] != not_pid and w["state"] in ("READY", "BUSY"):
        return {**w, "load_ms": model["load_ms"]}
    return None


def _reference_server_process(sock_path: str, body: bytes, started: Any) -> None:
    """A stand-in for the daemon that does nothing but answer: every request on its
    Unix socket gets the same 200 and `body` (a copy of a real /health answer). Sampled
    with httpx under the same load, it shows the client's own floor: what an httpx
    /health would take against a server that costs nothing."""
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


def _sampler_process(conn: Any, sock_path: str, reference_path: str) -> None:
    """Runs in its own process (so that the bench's other threads never hold its GIL):
    samples GET /health on command and sends the samples back."""
    client = httpx.Client(transport=httpx.HTTPTransport(uds=sock_path), base_url="http://msting", timeout=10)
    reference = httpx.Client(transport=httpx.HTTPTransport(uds=reference_path), base_url="http://msting", timeout=10)
    raw = RawHealth(sock_path)

    def via(c: httpx.Client) -> str:
        r = c.get("/health")
        return r.json().get("readiness", "?") if r.status_code == 200 else f"http {r.status_code}"

    getters = {"httpx": lambda: via(client), "raw": raw.get, "httpx_reference": lambda: via(reference)}

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
        client.close()
        reference.close()
        raw.close()


def close_child(conn: Any, proc: Any, wait: float) -> None:
    """Stop a pipe-driven child process (multiprocessing): ask it to close, wait
    `wait` seconds, then kill it."""
    try:
        conn.send(("close",))
    except OSError:
        pass
    proc.join(wait)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    conn.close()


class HealthSampler:
    """GET /health from a dedicated child process, with one persistent httpx client.
    For reference, two other kinds: "raw", hand-written HTTP on a raw socket (the
    daemon's own share), and "httpx_reference", httpx against a do-nothing server in
    its own process (the client's floor). Samples are (latency ms, reported readiness,
    time.perf_counter() at the start); perf_counter is CLOCK_MONOTONIC, so the child's
    times compare with the parent's."""

    def __init__(self, home: Home):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(home.socket)), base_url="http://msting", timeout=10) as c:
            body = c.get("/health").content
        reference_path = str(home.path / "reference.sock")
        started = ctx.Event()
        self.server = ctx.Process(target=_reference_server_process, args=(reference_path, body, started),
                                  name="health-reference", daemon=True)
        self.server.start()
        if not started.wait(30):
            raise BenchError("the reference /health server did not start")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_sampler_process, args=(child, str(home.socket), reference_path),
                                name="health-sampler", daemon=True)
        self.proc.start()
        child.close()

    def run(self, duration: float, kind: str = "httpx") -> list[tuple[float, str, float]]:
        self.conn.send(("run", duration, kind))
        return self._result(duration + 60)

    def start(self, kind: str = "httpx") -> None:
        """Sample until stop()."""
        self.conn.send(("run", None, kind))

    def stop(self) -> list[tuple[float, str, float]]:
        self.conn.send(("stop",))
        return self._result(60)

    def _result(self, timeout: float) -> list[tuple[float, str, float]]:
        if not self.conn.poll(timeout):
            raise BenchError(f"the /health sampler process gave no answer within {timeout:g}s")
        return self.conn.recv()

    def close(self) -> None:
        close_child(self.conn, self.proc, 5)
        self.server.kill()
        self.server.join(5)


class RawHealth:
    """Reference only: GET /health written by hand on one persistent Unix-socket connection,
    so that the client's own cost (httpx) can be told apart from the daemon's."""

    def __init__(self, path: str):
        self.path = path
        self.sock: socket.socket | None = None

    def get(self) -> str:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(self.path)
        self.sock.sendall(b"GET /health HTTP/1.1\r\nHost: msting\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self._recv()
        head, body = buf.split(b"\r\n\r\n", 1)
        lengths = [int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
        if not lengths:
            raise ValueError("no Content-Length in the answer")
        while len(body) < lengths[0]:
            body += self._recv()
        return json.loads(body).get("readiness", "?")

    def _recv(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


FOREIGN_MARKERS = ("pytest", "msting.daemon", "msting.worker", "-m msting", "bin/msting", "llama_cpp", "pip install")


def foreign_load(window: float = 0.5, threshold: float = 15.0) -> dict:
    """Other programs busy on the CPU right now (not this bench, its children, or its daemons):
    on a small machine they distort every number here, so the report says so."""
    me = psutil.Process()
    ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
    homes = {str(h.path) for h in HOMES}
    procs = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid in ours:
                continue
            proc.cpu_percent(None)
            procs.append(proc)
        except psutil.Error:
            continue
    time.sleep(window)
    busy = []
    for proc in procs:
        try:
            pct = proc.cpu_percent(None)
            if pct < threshold:
                continue
            try:
                if proc.environ().get("MSTING_HOME") in homes:
                    continue
            except (psutil.Error, OSError):
                pass
            busy.append({"pid": proc.pid, "cpu_percent": round(pct), "cmd": " ".join(proc.cmdline())[:120]})
        except psutil.Error:
            continue
    # test suites and other msting daemons are bursty: count them even when idle this instant
    present = []
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
            if (proc.name() not in ("grep", "pgrep") and any(m in cmd for m in FOREIGN_MARKERS)
                    and proc.environ().get("MSTING_HOME") not in homes):
                present.append({"pid": proc.pid, "cmd": cmd[:120]})
        except (psutil.Error, OSError):
            continue
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "busy": busy, "msting_or_pytest": present}


def short_cmd(cmd: str) -> str:
    """'/x/.venv/bin/python -m msting.worker --fd 15 ...' -> 'python -m msting.worker'."""
    parts = cmd.split()
    if not parts:
        return "?"
    words = [parts[0].rsplit("/", 1)[-1]]
    if len(parts) > 1 and parts[1] == "-m" and len(parts) > 2:
        words += parts[1:3]
    elif len(parts) > 1 and not parts[1].startswith("-"):
        words.append(parts[1].rsplit("/", 1)[-1])
    return " ".join(words)


def wait_quiet(limit: float) -> float:
    """Wait up to `limit` seconds until nothing foreign is busy or running; returns the seconds waited."""
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit:
        fl = foreign_load(1.0)
        quiet = 0 if fl["busy"] or fl["msting_or_pytest"] else quiet + 1
        if quiet >= 3:
            break
        time.sleep(2)
    return time.monotonic() - t0


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "src")
    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "src_uncommitted_changes": None if dirty is None else len(dirty.splitlines()),
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "msting": ver("msting"),
        "llama_cpp_python": ver("llama-cpp-python"),
    }


def write_docs(section: str, title: str, keep: tuple[str, str] | None = None) -> None:
    """Replace the section headed `title` in docs/benchmarks.md (re-read right before
    writing), keeping the other sections. With `keep` = (start, end) marker lines, a
    hand-written block between them inside the old section is carried over. Shared by
    every bench in this folder."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        if keep is not None:
            old = lines[start:end]
            a = next((i for i, ln in enumerate(old) if ln.strip() == keep[0]), None)
            b = next((i for i, ln in enumerate(old) if ln.strip() == keep[1]), None)
            if a is not None and b is not None and b > a:
                section = section.rstrip("\n") + "\n\n" + "\n".join(old[a:b + 1]) + "\n"
        before = "\n".join(lines[:start]).rstrip("\n")
        after = "\n".join(lines[end:])
        new = (before + "\n\n" if before else "") + section.rstrip("\n") + "\n" + ("\n" + after.rstrip("\n") + "\n" if after.strip() else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(new)


def on_signal(signum, frame):
    """SIGTERM / SIGHUP: unwind through the `finally` blocks that stop what the bench started."""
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


# ---------------------------------------------------------------------------------------
# CPU counters


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
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def source_info() -> dict:
    """Which msting the daemons run (PYTHONPATH may point at another source tree) and the git state."""
    import importlib.util

    spec = importlib.util.find_spec("msting")
    info: dict[str, Any] = {"msting_module": str(Path(spec.origin).parent) if spec and spec.origin else None,
                            "pythonpath": os.environ.get("PYTHONPATH")}
    try:
        info["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True, timeout=10, check=False).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        info["src_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def foreign_load_not_ours() -> dict:
    """foreign_load(), leaving out this bench's own ancestors (a `timeout` or shell wrapping
    it) and its process group (e.g. `... | tail` beside it)."""
    fl = foreign_load()
    ancestors = {proc.pid for proc in psutil.Process().parents()}
    group = os.getpgid(0)

    def ours(pid: int) -> bool:
        try:
            return pid in ancestors or os.getpgid(pid) == group
        except OSError:
            return False

    for k in ("busy", "msting_or_pytest"):
        fl[k] = [b for b in fl.get(k, []) if not ours(b["pid"])]
    return fl


def foreign_names(fl: dict) -> list[str]:
    return sorted({short_cmd(b["cmd"]) for b in fl.get("busy", []) + fl.get("msting_or_pytest", [])})


# ---------------------------------------------------------------------------------------
# memory


def memory_of(pid: int) -> dict | None:
    """RSS, USS, PSS and shared bytes of one process (psutil's memory_full_info: USS is
    what only this process holds, PSS splits shared pages among their sharers, so the
    PSS of two replicas sum to about one copy of the mmapped weights)."""
    try:
        proc = psutil.Process(pid)
        full = proc.memory_full_info()
    except (psutil.Error, OSError):
        return None
    return {"pid": pid, "cmd": short_cmd(" ".join(proc.cmdline())), "rss": full.rss, "uss": getattr(full, "uss", None),
            "pss": getattr(full, "pss", None), "shared": getattr(full, "shared", None)}


# ---------------------------------------------------------------------------------------
# peer servers started by the bench

SERVERS: list[Any] = []


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port, with its log in a temp file."""

    name = "llama_cpp.server"

    def __init__(self, key: str, model: str, n_ctx: int = 2048, n_threads: int = 1, extra: list[str] | None = None):
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="msbsrv"))
        self.log = self.dir / "server.log"
        self.cmd = self.command(model, n_ctx, n_threads) + list(extra or [])
        SERVERS.append(self)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self.started_sec = self.wait_ready(90)

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(n_threads),
                "--n_threads_batch", str(n_threads), "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--port", str(self.port)]

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
                try:
                    if c.get("/v1/models").status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name} did not answer within {timeout:g} s:\n{self.tail()}")
                time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
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


def cpp_llama_server() -> str | None:
    """llama.cpp's C++ server, when one is on PATH."""
    return shutil.which("llama-server")


class CppLlamaServer(LlamaServer):
    """llama.cpp's own ``llama-server`` (C++), when one is on PATH; same OpenAI routes."""

    name = "llama-server (C++)"

    def command(self, model: str, n_ctx: int, n_threads: int) -> list[str]:
        exe = cpp_llama_server()
        if exe is None:
            raise BenchError("llama-server is not on PATH")
        return [exe, "-m", model, "-t", str(n_threads), "-tb", str(n_threads), "-c", str(n_ctx),
                "--host", "127.0.0.1", "--port", str(self.port)]


def cleanup_all(keep: bool = False) -> list[int]:
    """Stop every server and every daemon home this process started; returns leftover pids killed."""
    for server in SERVERS:
        try:
            server.stop(keep)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"stopping {server.name} pid {server.pid} failed: {exc}", file=sys.stderr)
    SERVERS.clear()
    leftovers: list[int] = []
    for home in HOMES:
        leftovers += home.cleanup(keep)
    return leftovers


# ---------------------------------------------------------------------------------------
# tables


def md_table(head: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """A markdown table; the first `left` columns are left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(x).replace("|", "\\|") for x in r) + " |")
    return out


def text_table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    cells = [head] + [[str(x) for x in r] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("  ".join(x.ljust(widths[i]) if i < left else x.rjust(widths[i]) for i, x in enumerate(c)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['logical_cores']} logical cores ({m['physical_cores']} physical), {m['memory_gib']} GiB RAM, "
            f"{m['os']}, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}")


def dump_json(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")


def save_results(res: dict, json_out: Path) -> Path:
    """Write a bench's JSON; a run with errors goes to ``*.failed.json`` instead, so it
    never overwrites the results of a good one. Returns the path written."""
    out = json_out if not res.get("errors") else json_out.with_name(json_out.stem + ".failed.json")
    dump_json(out, res)
    print(f"wrote {out}")
    return out


def notes_block(notes: list[str]) -> list[str]:
    """The "Notes:" list closing a section of docs/benchmarks.md (nothing without notes)."""
    if not notes:
        return []
    return ["Notes:", "", *(f"- {n}" for n in notes), ""]


# ---------------------------------------------------------------------------------------
# models

CACHE = ROOT / "bench" / ".cache"  # generated models; gitignored, never committed
# A larger generated model where the engine dominates: msting-tiny's recipe (vocabulary,
# tokenizer, deterministic F32 weights) at 512 wide and 8 layers: about 26M parameters, 104 MB.
LARGE_DIMS = {"n_embd": 512, "n_layer": 8, "n_head": 8, "n_head_kv": 8, "n_ff": 1376}
LARGE_NAME = "msting-bench-26m"


def large_model(folder: Path = CACHE) -> Path:
    """The generated bench model, written once into bench/.cache (deterministic: the same bytes
    every time, so a cached file is reused)."""
    from msting.models.builtin import BUILTIN_VERSION, write_tiny_model

    target = folder / f"{LARGE_NAME}-v{BUILTIN_VERSION}.gguf"
    if target.is_file() and target.stat().st_size > 0:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    write_tiny_model(tmp, **LARGE_DIMS, name=LARGE_NAME,
                     description="msting benchmark model: msting-tiny's recipe, larger (random weights)")
    os.replace(tmp, target)
    return target


def human_params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
