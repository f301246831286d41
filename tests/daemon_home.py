"""A real daemon under a temporary MSTING_HOME: the harness of the end-to-end tests (fixture
``daemon_home``) and of bench/. A home is a short temporary directory (Unix socket paths are
limited to 108 bytes) with a free TCP port and a config file; every process started here gets
the explicit environment of ``tests/child_env.py``, never ``os.environ``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import yaml
from child_env import child_env

SOCKET_LIMIT = 107  # bytes in sun_path, without the terminating NUL
# The tests' config: short supervision intervals, so crash and hang tests finish quickly.
FAST_SUPERVISION = {
    "llm_service": {
        "health_interval_sec": 1,
        "startup_timeout_sec": 60,
        "hang_timeout_sec": 3,
        "drain_grace_sec": 10,
        "stop_timeout_sec": 5,
        "restart": {"backoff_initial_sec": 0.1, "backoff_max_sec": 1, "stable_after_sec": 5, "max_crashes": 5, "crash_window_sec": 60},
    },
    "logging": {"file_level": "DEBUG"},
}


class DaemonError(AssertionError):
    """A CLI call failed or a wait timed out (an AssertionError: pytest reports a failure)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def msting_command() -> list[str]:
    """The console script beside the interpreter (what a user runs), else ``python -m msting``."""
    exe = Path(sys.executable).parent / "msting"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "msting"]


class DaemonHome:
    def __init__(self, home: Path | None = None, base: dict = FAST_SUPERVISION, label: str = "daemon"):
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="ms"))
        self.label = label
        self.base = base
        self.config: dict = {}
        self.cleaned = False
        if len(str(self.socket).encode()) > SOCKET_LIMIT:
            raise DaemonError(f"socket path {self.socket} is over {SOCKET_LIMIT} bytes: set TMPDIR to a shorter directory")
        self.port = free_port()
        # Not os.environ: the developer's own LLM_API_KEY, MSTING_*, NOTIFY_SOCKET ...
        # must not reach the daemon (tests/child_env.py).
        self.env = child_env(MSTING_HOME=str(self.home), MSTING_LLM_PORT=str(self.port))

    @property
    def socket(self) -> Path:
        return self.home / "run" / "msting.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "run" / "msting.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, extra: dict | None = None) -> Path:
        """config/config.yaml = the base config with `extra` merged in (replacing what was written before)."""
        self.config = merge(self.base, extra or {})
        path = self.home / "config" / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return path

    def cli(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """`msting ARGS` under this home; the wall time is in the result's ``wall_sec``."""
        t0 = time.perf_counter()
        proc = subprocess.run([*msting_command(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        proc.wall_sec = time.perf_counter() - t0  # type: ignore[attr-defined]
        if check and proc.returncode != 0:
            raise DaemonError(f"[{self.label}] msting {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                              f"stderr:\n{proc.stderr[-3000:]}\nlog:\n{self.log_tail()}")
        return proc

    def cli_json(self, *args: str, timeout: float = 120) -> tuple[dict, float]:
        """(the JSON a successful `msting ARGS` printed, its wall time)."""
        proc = self.cli(*args, timeout=timeout, check=True)
        return json.loads(proc.stdout), proc.wall_sec  # type: ignore[attr-defined]

    def start(self, *extra: str) -> subprocess.CompletedProcess:
        return self.cli("llm", "start", "--timeout", "90", *extra, check=True)

    def status(self) -> dict:
        return json.loads(self.cli("llm", "status", "--json").stdout)

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://msting", timeout=timeout,
                            trust_env=False)

    def tcp_client(self, timeout: float = 60) -> httpx.Client:
        # trust_env=False: a developer's HTTP_PROXY/ALL_PROXY would otherwise carry it
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def worker_pids(self) -> list[int]:
        with self.client() as c:
            body = c.get("/v1/status").json()
        return [w["pid"] for m in body["models"] for w in m["workers"] if w["pid"]]

    def wait_for(self, predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
        """The first true value of `predicate()`; HTTP, OS and lookup errors count as false."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except (httpx.HTTPError, OSError, KeyError, IndexError, ValueError) as exc:
                last = exc
            time.sleep(interval)
        raise DaemonError(f"[{self.label}] timed out after {timeout:g}s waiting for {what}; last value {last!r}\nlog:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no daemon log)"

    def our_processes(self) -> list[psutil.Process]:
        """Every live process started with this MSTING_HOME (the daemon and its workers)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if proc.pid != os.getpid() and proc.environ().get("MSTING_HOME") == str(self.home) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def stop(self) -> list[int]:
        """`msting llm stop --force`, then SIGKILL whatever still carries this home; the pids killed."""
        try:
            self.cli("llm", "stop", "--force", "--timeout", "10", timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"[{self.label}] msting llm stop --force failed: {exc}", file=sys.stderr)
        leftovers = self.our_processes()
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        psutil.wait_procs(leftovers, timeout=5)
        return [p.pid for p in leftovers]

    def cleanup(self, keep: bool = False) -> list[int]:
        """stop(), then remove the home (unless `keep`); once only."""
        if self.cleaned:
            return []
        self.cleaned = True
        killed = self.stop()
        if not keep:
            shutil.rmtree(self.home, ignore_errors=True)
        return killed
