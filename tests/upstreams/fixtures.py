"""Starting and steering upstream servers from a test: `StandIn` (a ``python -m upstreams``
process) and `LlamaCppServer` (llama-cpp-python's own ``python -m llama_cpp.server``). Both
are context managers; the processes get the explicit environment of ``tests/child_env.py``,
never ``os.environ``, and their output goes to a log file (``log_tail()``).

    with StandIn.start("ollama", models=["m"]) as up:
        up.fault("status", status=503, retry_after=2, count=1)
        ...  # a client of up.api_base sees one 503, then answers
        assert up.requests()[-1]["path"] == "/api/chat"

A refused connection is a port nothing listens on (`free_port()`), or a stand-in after
`kill()` / `stop()` (`restart()` brings it back on the same port).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import httpx
from child_env import child_env

from .app import API_KEY_ENV

TESTS_DIR = Path(__file__).resolve().parent.parent
# Where tests/conftest.py finds it (its `stories_model_path` fixture checks the sha256).
STORIES_PATH = TESTS_DIR.parent.parent / "shared" / "models" / "stories260K.gguf"
API_BASES = {"openai": "/v1", "ollama": "", "anthropic": ""}


class UpstreamError(AssertionError):
    """A server did not start, or a control request failed (an AssertionError: pytest reports a failure)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_env() -> dict[str, str]:
    """child_env, with tests/ first on PYTHONPATH (``python -m upstreams`` must find the package
    whatever the working directory; PYTHONSAFEPATH may be set)."""
    inherited = os.environ.get("PYTHONPATH")
    return child_env(PYTHONPATH=os.pathsep.join([str(TESTS_DIR), *([inherited] if inherited else [])]))


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class _Process:
    """A child process with a log file in a private temporary directory."""

    label = "server"

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="upstream-"))
        self.log_file = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines)

    def _popen(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_file, "ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(list(argv), env={**_python_env(), **(env or {})}, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)

    def _fail(self, what: str) -> UpstreamError:
        self.kill()
        return UpstreamError(f"[{self.label}] {what}\nlog:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, and reap it: its port refuses connections from now on."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL after `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        """stop(), then remove the temporary directory (log included)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StandIn(_Process):
    """A ``python -m upstreams`` process: `StandIn.start(api, ...)` returns it listening."""

    def __init__(self, api: str, *, models: Iterable[str] | None = None, token_delay: float = 0.0,
                 api_key: str | None = None, reply_words: int | None = None):
        if api not in API_BASES:
            raise ValueError(f"api must be one of {sorted(API_BASES)}, not {api!r}")
        super().__init__()
        self.api = api
        self.label = f"standin:{api}"
        self.initial_models = list(models) if models is not None else None
        self.token_delay = token_delay
        self.api_key = api_key
        self.reply_words = reply_words

    @classmethod
    def start(cls, api: str, *, models: Iterable[str] | None = None, token_delay: float = 0.0,
              api_key: str | None = None, reply_words: int | None = None, port: int = 0,
              timeout: float = 20.0) -> "StandIn":
        """A stand-in of `api` ("openai" | "ollama" | "anthropic") listening on 127.0.0.1:`port`
        (0: a free one). `models` default to ["standin"] (Ollama lists it as "standin:latest")."""
        standin = cls(api, models=models, token_delay=token_delay, api_key=api_key, reply_words=reply_words)
        try:
            standin._spawn(port, timeout)
        except BaseException:
            standin.close()
            raise
        return standin

    @property
    def api_base(self) -> str:
        """The base URL a client of this protocol is given (OpenAI: .../v1; Ollama, Anthropic: the root)."""
        return self.url + API_BASES[self.api]

    def _spawn(self, port: int, timeout: float) -> None:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "upstreams", "--api", self.api, "--port", str(port), "--port-file", str(port_file),
                "--token-delay", str(self.token_delay)]
        if self.initial_models is not None:
            argv += ["--models", ",".join(self.initial_models)]
        if self.reply_words is not None:
            argv += ["--reply-words", str(self.reply_words)]
        # the credential goes in the environment, as a real one would: never on a command line `ps` shows
        self._popen(argv, env=None if self.api_key is None else {API_KEY_ENV: self.api_key})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                self.port = int(port_file.read_text().strip())
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise self._fail(f"exited {self.proc.returncode} before listening")
            time.sleep(0.02)
        raise self._fail(f"did not write {port_file} within {timeout:g}s")

    def restart(self, timeout: float = 20.0) -> "StandIn":
        """Stop it if it runs, and start it again on the same port (a fresh state: the initial
        models, no fault, an empty request log)."""
        if self.port is None:
            raise UpstreamError(f"[{self.label}] was never started")
        self.stop()
        self._spawn(self.port, timeout)
        return self

    # ------------------------------------------------------------ the control API
    def _control(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = httpx.request(method, self.url + path, json=body, timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"[{self.label}] {method} {path} failed: {exc!r}\nlog:\n{self.log_tail()}") from exc
        if response.status_code != 200:
            raise UpstreamError(f"[{self.label}] {method} {path} answered {response.status_code}: {response.text}")
        return response.json()

    def fault(self, mode: str, *, status: int | None = None, retry_after: float | None = None,
              count: int | None = None, after_chunks: int | None = None, delay: float | None = None,
              paths: Sequence[str] | None = None, health: bool | None = None, message: str | None = None) -> dict:
        """Set the fault (replacing the one before); the fault as the stand-in holds it. Modes and
        fields: upstreams/faults.py."""
        body = {"mode": mode, "status": status, "retry_after": retry_after, "count": count, "after_chunks": after_chunks,
                "delay": delay, "paths": list(paths) if paths is not None else None, "health": health, "message": message}
        return self._control("POST", "/_control/fault", {k: v for k, v in body.items() if v is not None})["fault"]

    def current_fault(self) -> dict | None:
        """The fault still set (None once cleared or its count used up)."""
        return self._control("GET", "/_control/fault")["fault"]

    def clear(self) -> None:
        """No fault from now on."""
        self._control("DELETE", "/_control/fault")

    def models(self) -> list[str]:
        return self._control("GET", "/_control/models")["models"]

    def set_models(self, add: Iterable[str] = (), remove: Iterable[str] = (), *, replace: Iterable[str] | None = None) -> list[str]:
        """Change the model list live (`replace`: the whole list, before `add` and `remove`); the new list."""
        body: dict = {"add": list(add), "remove": list(remove)}
        if replace is not None:
            body["set"] = list(replace)
        return self._control("POST", "/_control/models", body)["models"]

    def requests(self, path: str | None = None) -> list[dict]:
        """The received requests (all but /_control/*), oldest first, optionally only those to
        `path`: seq, monotonic (time.monotonic(), comparable with this process's on Linux),
        time, method, path, query, body (JSON decoded when it is JSON), auth (whether a credential
        header was present), headers (the others), fault (the mode it got, or None)."""
        log = self._control("GET", "/_control/requests")["requests"]
        return [r for r in log if path is None or r["path"] == path]

    def clear_requests(self) -> None:
        self._control("DELETE", "/_control/requests")

    def reset(self) -> None:
        """Back to the state it started with: its initial models, no fault, an empty request log,
        nothing loaded (Ollama's /api/ps)."""
        self._control("POST", "/_control/reset")

    def info(self) -> dict:
        return self._control("GET", "/_control/info")


class LlamaCppServer(_Process):
    """llama-cpp-python's OpenAI-compatible server on `model_path`, as ``python -m
    llama_cpp.server --model M --host 127.0.0.1 --port N --n_ctx 512`` (plus ``--model_alias``
    when `alias` is given: the model id its /v1/models lists and requests name)."""

    label = "llama_cpp.server"

    def __init__(self, model_path: Path | str = STORIES_PATH, *, port: int | None = None, n_ctx: int = 512,
                 alias: str | None = "stories260K", extra_args: Sequence[str] = ()):
        super().__init__()
        self.model_path = Path(model_path)
        self.port = port
        self.n_ctx = n_ctx
        self.alias = alias
        self.extra_args = list(extra_args)

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    @property
    def model(self) -> str:
        """The model id requests give."""
        return self.alias or str(self.model_path)

    def start(self, timeout: float = 90.0) -> "LlamaCppServer":
        """Start it and wait until GET /v1/models answers 200."""
        if not self.model_path.is_file():
            raise UpstreamError(f"[{self.label}] no model at {self.model_path}")
        if self.port is None:
            self.port = free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--host", "127.0.0.1",
                "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
        if self.alias:
            argv += ["--model_alias", self.alias]
        self._popen(argv + self.extra_args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise self._fail(f"exited {self.proc.returncode} before answering")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.api_base + "/models", timeout=2, trust_env=False).status_code == 200:
                    return self
            time.sleep(0.1)
        raise self._fail(f"GET /v1/models did not answer within {timeout:g}s")

    def __enter__(self) -> "LlamaCppServer":
        return self if self.alive else self.start()
