"""End-to-end harness: a real daemon and real workers under a temporary MSTING_HOME.

Each test gets its own short home directory (Unix socket paths are limited to 108
bytes), a free TCP port, and a config with short supervision intervals so crash and
hang tests finish quickly. Teardown kills anything the test left running.
"""

from __future__ import annotations

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
import pytest
import yaml
from child_env import child_env

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DaemonHome:
    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        # Not os.environ: the developer's own LLM_API_KEY, MSTING_*, NOTIFY_SOCKET ...
        # must not reach the daemon (tests/child_env.py).
        self.env = child_env(MSTING_HOME=str(home), MSTING_LLM_PORT=str(self.port))

    # paths --------------------------------------------------------------------------
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

    # config -------------------------------------------------------------------------
    def write_config(self, extra: dict | None = None) -> Path:
        path = self.home / "config" / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(_merge(FAST_SUPERVISION, extra or {})))
        return path

    # processes ----------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "msting", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"msting {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nlog:\n{self.log_tail()}")
        return proc

    def start(self, *extra: str) -> subprocess.CompletedProcess:
        return self.cli("llm", "start", "--timeout", "90", *extra, check=True)

    def status(self) -> dict:
        proc = self.cli("llm", "status", "--json")
        return json.loads(proc.stdout)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def worker_pids(self) -> list[int]:
        body = self.client().get("/v1/status").json()
        return [w["pid"] for m in body["models"] for w in m["workers"] if w["pid"]]

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://msting", timeout=timeout,
                            trust_env=False)

    def tcp_client(self, timeout: float = 60) -> httpx.Client:
        # trust_env=False: a developer's HTTP_PROXY/ALL_PROXY would otherwise carry it
        return httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def wait_for(self, predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except (httpx.HTTPError, OSError, KeyError, ValueError):
                pass
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}\nlog:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no daemon log)"

    def our_processes(self) -> list[psutil.Process]:
        """Every live process started with this MSTING_HOME (the daemon and its workers)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and proc.environ().get("MSTING_HOME") == str(self.home):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def cleanup(self) -> None:
        try:
            self.cli("llm", "stop", "--force", "--timeout", "10", timeout=30)
        except Exception:
            pass
        for proc in self.our_processes():
            try:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            except psutil.Error:
                pass


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """The tests only talk to their own daemons (127.0.0.1 and Unix sockets). The clients
    they use in this process (httpx, the openai package, websockets, curl) would send
    that through a developer's proxy settings."""
    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def daemon_home():
    home = Path(tempfile.mkdtemp(prefix="ms"))
    dh = DaemonHome(home)
    dh.write_config()
    yield dh
    dh.cleanup()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def corrupt_gguf(tmp_path) -> Path:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(4096))
    return path
