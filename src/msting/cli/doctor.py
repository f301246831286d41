"""``msting llm doctor``: what is wrong, and how to fix it.

Checks, in order, each with its result and a fix hint: the Python version; llama_cpp
(importable, its version, the compiled backends and the GPUs it sees: in a child
process, msting.hardware); the config; the profiles; the model files (readable, real
GGUF, the checksum of a ``<file>.sha256`` beside it); memory against the active profile;
the TCP port (free, or our daemon's); the runtime files (socket mode and owner, a stale
pidfile or socket); disk space for models and logs; the log's writability; each remote
service's URLs; the daemon's readiness. A check that needs an earlier one (the config)
is skipped when that failed. Exit 1 when any check fails; warnings do not.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import Terminal, fmt_ms

MIN_PYTHON = (3, 10)
#: Free space below which a filesystem fails the disk check, and below which it warns.
DISK_FAIL_BYTES = 256 * 2**20
DISK_WARN_BYTES = 2 * 2**30
URL_TIMEOUT = 3.0
DAEMON_TIMEOUT = 5.0


@dataclass
class Check:
    name: str
    title: str
    status: str = "ok"  #: ok, warn, fail, skip
    detail: str = ""
    hint: str | None = None
    ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status, "ok": self.status != "fail",
                "detail": self.detail, "hint": self.hint, "ms": None if self.ms is None else round(self.ms, 1), "data": self.data}


class Found(Exception):
    """A check's outcome other than ok: raised with its status, detail and hint."""

    def __init__(self, status: str, detail: str, hint: str | None = None, **data: Any):
        super().__init__(detail)
        self.status, self.detail, self.hint, self.data = status, detail, hint, data


def fail(detail: str, hint: str | None = None, **data: Any) -> Found:
    return Found("fail", detail, hint, **data)


def warn(detail: str, hint: str | None = None, **data: Any) -> Found:
    return Found("warn", detail, hint, **data)


class Context:
    """What the checks share: the paths, the config once it loaded, the active profile."""

    def __init__(self) -> None:
        from msting.config.paths import resolve_paths

        self.paths = resolve_paths()
        self.config: Any = None
        self.profile: Any = None
        self.infos: dict[str, Any] = {}  #: GGUF headers of the profile's good files
        self.health: dict[str, Any] | None = None  #: the running daemon's /health, if it answers

    def env(self) -> Any:
        from msting.cli.common import Env

        return Env(self.paths, self.config)


# ------------------------------------------------------------------------- the checks


def check_python(ctx: Context) -> tuple[str, dict[str, Any]]:
    version = ".".join(map(str, sys.version_info[:3]))
    data = {"version": version, "executable": sys.executable}
    if sys.version_info < MIN_PYTHON:
        raise fail(f"Python {version} is older than {'.'.join(map(str, MIN_PYTHON))}",
                   "install a newer Python and re-run ./install.sh with PYTHON=/path/to/python3", **data)
    return f"{version} ({sys.executable})", data


def check_llama_cpp(ctx: Context) -> tuple[str, dict[str, Any]]:
    from msting import hardware

    llama = hardware.probe()
    if not llama.get("importable"):
        raise fail(f"llama_cpp cannot be imported: {llama.get('error')}",
                   f"install it: {sys.executable} -m pip install llama-cpp-python (or `msting llm install`, which does it)",
                   llama=llama)
    n_gpu_layers = 0
    try:
        from msting.cli.common import load_env

        n_gpu_layers = int(load_env().config.llm.n_gpu_layers)
    except Exception:  # a bad config is the next check's business
        pass
    gpu = hardware.describe(llama, hardware.gpu_hardware(), n_gpu_layers)
    detail = f"llama-cpp-python {llama.get('version')}; backend {gpu['line']}"
    data = {"llama": llama, "gpu": gpu}
    if gpu["level"] == "warn":
        raise warn(detail, gpu["hint"], **data)
    return detail, data


def check_config(ctx: Context) -> tuple[str, dict[str, Any]]:
    from msting.config.errors import ConfigError
    from msting.config.paths import HOME_ENV_VAR
    from msting.config.schema import load_config

    for folder in (ctx.paths.config_dir, ctx.paths.data_dir, ctx.paths.log_dir, ctx.paths.runtime_dir):
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if not existing.is_dir():
            where = f"{HOME_ENV_VAR}={os.environ[HOME_ENV_VAR]}" if os.environ.get(HOME_ENV_VAR) else str(folder)
            raise fail(f"{existing} is not a directory, so msting cannot keep {folder} ({where})",
                       f"point {HOME_ENV_VAR} at a directory (or unset it for the default folders)")
    try:
        ctx.config = load_config(ctx.paths)
    except ConfigError as exc:
        problems = [str(p) for p in getattr(exc, "problems", [])] or [str(exc)]
        where = getattr(exc, "source", None) or ctx.paths.config_file
        raise fail(f"{where}: " + "; ".join(problems),
                   f"fix these lines in {where} (or move it aside: `msting llm install` writes a fresh one)",
                   problems=problems) from None
    source = ctx.config.source or "the built-in defaults (no config file)"
    return f"valid: {source}", {"file": str(ctx.config.source) if ctx.config.source else None}


def check_profiles(ctx: Context) -> tuple[str, dict[str, Any]]:
    from msting.config.errors import ConfigError
    from msting.config.profiles.discovery import list_profiles, load_named_profile

    entries = list_profiles(ctx.paths)
    bad = [e for e in entries if not e.ok]
    active = _active_profile(ctx)
    try:
        ctx.profile = load_named_profile(ctx.paths, ctx.config, active)
    except ConfigError as exc:
        raise fail(f"the active profile {active!r} cannot be read: {exc}",
                   "fix its file, or switch to another: `msting llm switch-profile default`", active=active) from None
    data = {"active": active, "profiles": [e.name for e in entries], "invalid": {e.name: [str(p) for p in e.problems] for e in bad}}
    detail = f"active {active!r} ({len(ctx.profile.models)} model(s)); {len(entries)} profile(s) found"
    if bad:
        listed = "; ".join(f"{e.name} ({e.path}): {e.problems[0]}" for e in bad)
        raise warn(f"{detail}; invalid: {listed}", "fix or remove the invalid profile files (`msting llm profiles` lists them)", **data)
    return detail, data


def _active_profile(ctx: Context) -> str:
    """The running daemon's profile, else the one stored for its next start, else default."""
    if ctx.health and ctx.health.get("profile"):
        return str(ctx.health["profile"])
    import sqlite3

    db = ctx.paths.state_db
    if db.exists():
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'active_profile'").fetchone()
            finally:
                con.close()
            if row and row[0]:
                return str(row[0])
        except sqlite3.Error:
            pass
    return "default"


def check_models(ctx: Context) -> tuple[str, dict[str, Any]]:
    from msting.config.profiles.checks import inspect_files

    infos, problems = inspect_files(ctx.profile, ctx.paths.models_dir)
    ctx.infos = infos
    if problems:
        raise fail("; ".join(str(p) for p in problems),
                   "put a GGUF file at that path, or point the model's source (llm.model in config.yaml) at one",
                   problems=[str(p) for p in problems])
    lines, data = [], {}
    for name, info in infos.items():
        verdict = _checksum(Path(info.path))
        data[name] = {"path": str(info.path), "size_bytes": info.size_bytes, "arch": info.arch, "checksum": verdict}
        if verdict.startswith("mismatch"):
            raise fail(f"{name}: {info.path}: sha256 {verdict}",
                       "the file is damaged or not the one expected: download it again", models=data)
        lines.append(f"{name} ({info.arch or 'unknown arch'}, {info.size_bytes / 1e6:.1f} MB, sha256 {verdict})")
    return "; ".join(lines), {"models": data}


def _checksum(path: Path) -> str:
    """Against ``<file>.sha256`` (sha256sum's format) when there is one."""
    import hashlib

    sidecar = path.with_name(path.name + ".sha256")
    try:
        expected = sidecar.read_text().split()[0].lower()
    except (OSError, IndexError):
        return "not known (no .sha256 file beside it)"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    got = digest.hexdigest()
    return "matches" if got == expected else f"mismatch: {got}, {sidecar.name} says {expected}"


def check_memory(ctx: Context) -> tuple[str, dict[str, Any]]:
    from msting.config.profiles.checks import estimate_models
    from msting.models.memory import preflight

    estimates = list(estimate_models(ctx.profile, ctx.infos).values())
    import psutil

    # a running daemon's workers hold their memory already: count it as available
    held = 0
    if ctx.health:
        try:
            daemon = psutil.Process(int(ctx.health["pid"]))
            held = sum(p.memory_info().rss for p in daemon.children(recursive=True))
        except (psutil.Error, KeyError, TypeError, ValueError):
            held = 0
    result = preflight(estimates, available_bytes=int(psutil.virtual_memory().available) + held,
                       budget_bytes=ctx.profile.memory_budget_bytes)
    if not result.ok:
        raise fail(f"profile {ctx.profile.name!r}: {result.message}",
                   "use a smaller model or n_ctx, fewer replicas, or free memory (other programs, or `msting llm unload`)")
    return f"profile {ctx.profile.name!r}: {result.message}", {}


def check_port(ctx: Context) -> tuple[str, dict[str, Any]]:
    import socket

    host, port = ctx.config.llm_service.host, ctx.config.llm_service.port
    if ctx.health:
        url = ctx.config.url
        try:
            import httpx

            with httpx.Client(timeout=DAEMON_TIMEOUT, trust_env=False) as c:
                pid = c.get(f"{url}/health").json().get("pid")
        except Exception as exc:
            raise fail(f"our daemon (pid {ctx.health.get('pid')}) runs, but {url} does not answer: {exc}",
                       "another process may hold the port on another address; `msting llm restart`") from None
        if pid == ctx.health.get("pid"):
            return f"{host}:{port} is our daemon's (pid {pid})", {"owner": pid}
        raise fail(f"{host}:{port} answers for another msting daemon (pid {pid})",
                   "two homes share the port: give each its own llm_service.port (or MSTING_LLM_PORT)")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        owner = _port_owner(port)
        raise fail(f"{host}:{port} is taken by another process{owner}: {exc.strerror}",
                   "stop that process, or give msting another port: llm_service.port in config.yaml or MSTING_LLM_PORT",
                   port=port) from None
    finally:
        sock.close()
    return f"{host}:{port} is free (the daemon binds it when it starts)", {"port": port}


def _port_owner(port: int) -> str:
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" (pid {conn.pid}, {psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def check_runtime(ctx: Context) -> tuple[str, dict[str, Any]]:
    import stat

    from msting.daemon import instance

    env = ctx.env()
    sock, pidfile, lock = env.socket_path, ctx.paths.pidfile, ctx.paths.lockfile
    running = instance.lock_is_held(lock)
    fix = "`msting llm stop` removes them (`msting llm start` does too)"
    if not running:
        stale = []
        pid = instance.read_pidfile(pidfile)
        if pidfile.exists():
            stale.append(f"pidfile {pidfile}" + (f" names pid {pid}, but no daemon holds the lock" if pid else " is unreadable"))
        if sock.exists() or sock.is_symlink():
            stale.append(f"socket {sock} is left over (no daemon holds the lock)")
        if stale:
            raise fail("stale: " + "; ".join(stale), fix, stale=stale)
        return f"no daemon; no stale pidfile or socket in {sock.parent}", {}
    try:
        st = os.stat(sock)
    except OSError as exc:
        raise fail(f"a daemon holds the lock but its socket {sock} is missing: {exc.strerror}",
                   "`msting llm restart` recreates it") from None
    problems = []
    if not stat.S_ISSOCK(st.st_mode):
        problems.append(f"{sock} is not a socket")
    if st.st_mode & 0o777 != 0o600:
        problems.append(f"{sock} has mode {oct(st.st_mode & 0o777)}, not 0600")
    if st.st_uid != os.getuid():
        problems.append(f"{sock} belongs to uid {st.st_uid}, not to you ({os.getuid()})")
    if problems:
        raise fail("; ".join(problems), "`msting llm restart` recreates the socket with mode 0600 (run msting as the daemon's user)")
    return f"socket {sock} (0600, yours); pidfile names pid {instance.read_pidfile(pidfile)}", {}


def check_disk(ctx: Context) -> tuple[str, dict[str, Any]]:
    import shutil

    from msting.models.memory import format_bytes

    seen: dict[int, tuple[str, int]] = {}
    for label, path in (("models", ctx.paths.models_dir), ("logs", ctx.env().log_file.parent)):
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        dev = probe.stat().st_dev
        if dev not in seen:
            seen[dev] = (f"{label} ({path})", shutil.disk_usage(probe).free)
        else:
            seen[dev] = (f"{seen[dev][0]} and {label}", seen[dev][1])
    parts = [f"{format_bytes(free)} free for {what}" for what, free in seen.values()]
    low = min(free for _, free in seen.values())
    data = {"free_bytes": {what: free for what, free in seen.values()}}
    if low < DISK_FAIL_BYTES:
        raise fail("; ".join(parts), "free disk space: models and logs need room (old logs rotate; remove unused models)", **data)
    if low < DISK_WARN_BYTES:
        raise warn("; ".join(parts), "less than 2 GiB free: a model download or the logs may fill it", **data)
    return "; ".join(parts), data


def check_log(ctx: Context) -> tuple[str, dict[str, Any]]:
    log_file = ctx.env().log_file
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise fail(f"cannot write {log_file}: {exc.strerror}",
                   f"make {log_file.parent} writable for you, or set logging.file to a writable path") from None
    return f"{log_file} is writable", {"file": str(log_file)}


def check_providers(ctx: Context) -> tuple[str, dict[str, Any]]:
    import httpx

    services = ctx.config.llm.services
    if not services:
        return "no remote services configured (llm.services)", {}
    results, down = {}, []
    with httpx.Client(timeout=URL_TIMEOUT, trust_env=False) as client:
        for svc in services:
            for url in svc.urls:
                try:
                    status = client.get(url).status_code
                    results[f"{svc.name} {url}"] = f"HTTP {status}"
                except httpx.HTTPError as exc:
                    results[f"{svc.name} {url}"] = f"unreachable: {exc or type(exc).__name__}"
                    down.append(f"{svc.name}: {url} ({exc or type(exc).__name__})")
    detail = "; ".join(f"{k}: {v}" for k, v in results.items())
    if down:
        total = sum(len(s.urls) for s in services)
        hint = "check the URL in llm.services and that the server runs; `msting llm ping SERVICE` checks through the daemon"
        if len(down) == total:
            raise fail(detail, hint, urls=results)
        raise warn(detail, hint, urls=results)
    return detail, {"urls": results}


def check_daemon(ctx: Context) -> tuple[str, dict[str, Any]]:
    from msting.client import MstingClient, MstingError

    env = ctx.env()
    if not env.is_running():
        raise warn("the daemon is not running", "start it: `msting llm start` (or scripts/start.sh)")
    client = MstingClient(socket_path=env.socket_path, timeout=DAEMON_TIMEOUT)
    try:
        ok, body = client.ready()
    except MstingError as exc:
        raise fail(f"the daemon runs but does not answer on {env.socket_path}: {exc}",
                   "`msting llm logs` shows why; `msting llm restart`") from None
    finally:
        client.close()
    status, reason = body.get("status"), body.get("reason")
    if ok:
        return "ready: the default model has generated", {"readiness": status}
    if status in ("loading", "idle"):
        raise warn(f"{status}: {reason}", "`msting llm wait` waits for ready", readiness=status)
    raise fail(f"{status}: {reason}", "`msting llm status` and `msting llm logs` say more; fix the model or config, then "
               "`msting llm load NAME` or `msting llm restart`", readiness=status)


#: (name, title, check, needs the config)
CHECKS: tuple[tuple[str, str, Callable[[Context], tuple[str, dict[str, Any]]], bool], ...] = (
    ("python", "Python version", check_python, False),
    ("llama_cpp", "llama_cpp, its backends and GPUs", check_llama_cpp, False),
    ("config", "configuration", check_config, False),
    ("profiles", "profiles", check_profiles, True),
    ("models", "model files", check_models, True),
    ("memory", "memory for the active profile", check_memory, True),
    ("port", "TCP port", check_port, True),
    ("runtime", "socket, pidfile", check_runtime, True),
    ("disk", "disk space for models and logs", check_disk, True),
    ("log", "log file", check_log, True),
    ("providers", "remote services' URLs", check_providers, True),
    ("daemon", "daemon readiness", check_daemon, True),
)
#: A check skipped when one of these failed before it.
NEEDS = {"models": "profiles", "memory": "models"}


def run(term: Terminal | None) -> list[Check]:
    ctx = Context()
    results: list[Check] = []
    failed: set[str] = set()
    for name, title, fn, needs_config in CHECKS:
        check = Check(name, title)
        blocked = "config" if needs_config and ctx.config is None else NEEDS.get(name) if NEEDS.get(name) in failed else None
        if blocked:
            check.status, check.detail = "skip", f"skipped: the {blocked} check failed"
        else:
            if name == "profiles":
                ctx.health = _health(ctx)
            started = time.perf_counter()
            try:
                check.detail, check.data = fn(ctx)
            except Found as found:
                check.status, check.detail, check.hint, check.data = found.status, found.detail, found.hint, found.data
            except Exception as exc:  # a check that breaks is a failed check, never a traceback
                check.status, check.detail = "fail", f"the check itself failed: {type(exc).__name__}: {exc}"
            check.ms = (time.perf_counter() - started) * 1000
        if check.status == "fail":
            failed.add(name)
        results.append(check)
        if term is not None:
            _print(term, check)
    return results


def _health(ctx: Context) -> dict[str, Any] | None:
    """The running daemon's /health (its pid and profile), or None."""
    from msting.client import MstingClient, MstingError

    env = ctx.env()
    try:
        if not env.is_running():
            return None
    except OSError:  # the runtime folder is unusable: the runtime check says so
        return None
    client = MstingClient(socket_path=env.socket_path, timeout=DAEMON_TIMEOUT)
    try:
        return client.health()
    except MstingError:
        return None
    finally:
        client.close()


MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red"), "skip": ("-", "dim")}


def _print(term: Terminal, check: Check) -> None:
    from rich.text import Text

    mark, style = MARKS[check.status]
    text = Text()
    text.append(f"{mark} ", style=style)
    text.append(f"{check.title}: ", style="bold")
    text.append(check.detail)
    if check.ms is not None and check.ms >= 100:
        text.append(f" [{fmt_ms(check.ms)}]", style="dim")
    term.print(text)
    if check.hint and check.status in ("fail", "warn"):
        term.print(Text(f"    fix: {check.hint}", style=style))


def doctor(json_: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")] = False) -> None:
    """Check what msting needs, in order, each with a fix hint: Python, llama_cpp and GPUs, config, profiles, model files, memory, port, socket and pidfile, disk, log, remote services, readiness.

    Exit 0 when no check fails (warnings are fine), 1 when one does.
    """
    term = Terminal(json_)
    checks = run(None if json_ else term)
    failed = [c.name for c in checks if c.status == "fail"]
    warned = [c.name for c in checks if c.status == "warn"]
    if json_:
        term.emit_json({"ok": not failed, "failed": failed, "warnings": warned, "checks": [c.as_dict() for c in checks]})
    elif failed:
        term.error(f"{len(failed)} check(s) failed: {', '.join(failed)}")
    else:
        term.success("no problem found" + (f" ({len(warned)} warning(s))" if warned else ""))
    raise typer.Exit(ExitCode.FAILED if failed else ExitCode.OK)
