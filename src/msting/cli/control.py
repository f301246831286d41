"""Starting, stopping and waiting for the daemon: the logic behind ``start``, ``stop``,
``restart``, ``wait`` and the daemon step of ``install``.

The flock held by the daemon (``msting.daemon.instance``) is the truth about whether a
daemon runs; the pidfile only says which process it is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from msting.cli.common import Env
from msting.cli.exit_codes import ExitCode
from msting.daemon.exit_codes import DaemonExit
from msting.cli.output import CommandError, Terminal, log_tails

POLL_SEC = 0.1
#: A request to a daemon that is up answers in milliseconds; this only bounds a hang.
PROBE_TIMEOUT = 2.0


class LogMarks:
    """Where the daemon's log files ended before this start, so failures show only
    what this start wrote."""

    def __init__(self, env: Env) -> None:
        self.files = [("daemon log", env.log_file), ("daemon stdout/stderr", env.boot_log)]
        self.offsets = {path: _size(path) for _, path in self.files}

    def tails(self) -> dict[str, list[str]]:
        marks = []
        for label, path in self.files:
            start = self.offsets.get(path, 0)
            if _size(path) < start:  # rotated or truncated since: show from the top
                start = 0
            marks.append((label, path, start))
        return log_tails(marks)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------- start


def spawn_daemon(env: Env) -> subprocess.Popen[bytes]:
    """Start ``python -m msting.daemon`` fully detached from this terminal.

    Its stdout/stderr are appended to ``<log_dir>/daemon.out`` so that a traceback
    from before the daemon's logging is set up is never lost.
    """
    env.boot_log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "msting.daemon"]
    with open(env.boot_log, "ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"=== {stamp} msting llm start: {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session: no SIGHUP/SIGINT from this terminal
            close_fds=True,
            env=dict(os.environ),
        )


def start_daemon(term: Terminal, env: Env, timeout: float) -> dict[str, Any]:
    """Make sure a daemon runs and is ready. Idempotent. Raises CommandError."""
    from msting.daemon import instance

    env.paths.ensure()
    try:
        instance.check_socket_path(env.socket_path)
    except instance.SocketPathError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None

    started = time.monotonic()
    marks = LogMarks(env)
    proc: subprocess.Popen[bytes] | None = None
    already = env.is_running()
    if already:
        pid = env.running_pid()
        shown = f" (pid {pid})" if pid else ""
        term.info(f"msting daemon already running{shown}; waiting until it is ready")
    else:
        for path in instance.remove_stale(env.paths.pidfile, env.socket_path, env.paths.lockfile):
            term.dim(f"removed stale {path}")
        proc = spawn_daemon(env)
        term.info(f"started msting daemon (pid {proc.pid}); waiting until it is ready (up to {timeout:g} s)")

    health = wait_ready(term, env, timeout, proc=proc, marks=marks, watch_exit=True)
    elapsed = time.monotonic() - started
    pid = health.get("pid") or env.running_pid() or (proc.pid if proc else None)
    return {
        "ok": True,
        "running": True,
        "ready": True,
        "already_running": already,
        "pid": pid,
        "socket": str(env.socket_path),
        "url": env.url,
        "startup_sec": round(elapsed, 3),
        "default_model": health.get("default_model"),
        "readiness": health.get("readiness"),
    }


def wait_ready(
    term: Terminal,
    env: Env,
    timeout: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    marks: LogMarks | None = None,
    watch_exit: bool = False,
) -> dict[str, Any]:
    """Poll until ``/health/ready`` is 200, or reports ``idle`` (no model is to be
    loaded: every model of the profile loads on its first request); return the last
    ``/health`` body.

    A model that went FATAL (readiness ``failed``) ends the wait at once, exit 1, with
    the daemon's reason and what it will do next, instead of waiting out the timeout.
    With ``proc`` (a daemon this process spawned), its early exit is reported with its
    exit code and log tails. With ``watch_exit``, a running daemon that exits ends the
    wait at once too (``wait`` alone also waits for a daemon that is not up yet).
    """
    from msting.client import DaemonUnavailable, MstingClient, MstingError

    deadline = time.monotonic() + timeout
    client = MstingClient(socket_path=env.socket_path, timeout=PROBE_TIMEOUT)
    # While we wait for our own child, the lock is not held yet; afterwards (or for a
    # daemon that already ran) a released lock means the daemon is gone.
    watch_lock = watch_exit and proc is None
    health: dict[str, Any] | None = None
    last_reason = "the daemon is not running"
    shown: tuple[Any, Any] | None = None
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                code = proc.returncode
                if code == DaemonExit.ALREADY_RUNNING:
                    term.info("another msting daemon started meanwhile; waiting for that one")
                    proc, watch_lock = None, True
                else:
                    raise _child_exit_error(code, marks)
            elif watch_lock and not env.is_running():
                raise CommandError(
                    "the msting daemon exited while starting" + (f" ({last_reason})" if health else ""),
                    ExitCode.FAILED,
                    logs=marks.tails() if marks else {},
                )

            try:
                if health is None:
                    health = client.health()
                    term.dim(f"daemon is up (pid {health.get('pid')}, version {health.get('version')})")
                ok, body = client.ready()
                status, reason = body.get("status"), body.get("reason")
                if ok or status == "idle":
                    health = client.health()
                    return health
                last_reason = f"{status}: {reason}" if reason else str(status)
                if (status, reason) != shown:
                    shown = (status, reason)
                    term.dim(f"readiness: {last_reason}")
                if status == "failed":
                    raise CommandError(
                        f"the daemon cannot become ready: {last_reason}",
                        ExitCode.FAILED,
                        hint="the daemon keeps running, reports this in `msting llm status` and tries again as said; "
                        "fix the model file or config, or run `msting llm load NAME` to try now "
                        "(or `msting llm install --model PATH`)",
                        logs=marks.tails() if marks else {},
                        data={"readiness": last_reason},
                    )
            except DaemonUnavailable:
                last_reason = "the daemon is not answering on its socket yet" if (proc or env.is_running()) else "the daemon is not running"
            except MstingError as exc:
                last_reason = str(exc)

            if time.monotonic() >= deadline:
                raise CommandError(
                    f"timed out after {timeout:g} s waiting for the daemon to be ready; last state: {last_reason}",
                    ExitCode.TIMEOUT,
                    logs=marks.tails() if marks else {},
                    data={"readiness": last_reason},
                )
            time.sleep(POLL_SEC)
    finally:
        client.close()


def _child_exit_error(code: int, marks: LogMarks | None) -> CommandError:
    logs = marks.tails() if marks else {}
    if code == DaemonExit.CONFIG:
        return CommandError(
            "the daemon rejected its configuration (exit code 78)", ExitCode.USAGE, logs=logs, data={"daemon_exit_code": code}
        )
    if code < 0:
        try:
            what = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"was killed by signal {-code}"
    else:
        what = f"exited with code {code}"
    return CommandError(f"the daemon {what} during start-up", ExitCode.FAILED, logs=logs, data={"daemon_exit_code": code})


def run_foreground() -> int:
    """Run the daemon in this process (for init systems); returns its exit code."""
    from msting.daemon.main import main as daemon_main

    return int(daemon_main([]) or 0)


# ----------------------------------------------------------------------------- stop


def stop_daemon(term: Terminal, env: Env, timeout: float, force: bool = False) -> dict[str, Any]:
    """Stop the daemon and everything it started; idempotent. Raises CommandError when
    something survives."""
    from msting.daemon import instance

    sock = env.socket_path
    if not env.is_running():
        removed = instance.remove_stale(env.paths.pidfile, sock, env.paths.lockfile)
        for path in removed:
            term.dim(f"removed stale {path}")
        return {"ok": True, "was_running": False, "pid": None, "forced": False, "removed": [str(p) for p in removed], "remaining": []}

    pid = _pid_of_lock_holder(env)
    if pid is None:
        raise CommandError(
            f"a process holds the lock {env.paths.lockfile} but the pidfile {env.paths.pidfile} names no process; "
            "cannot tell which process to stop",
            ExitCode.FAILED,
        )

    tree = _process_tree(pid)
    pgid = _pgid(pid)
    forced = force
    if not force:
        term.info(f"stopping msting daemon (pid {pid}); waiting up to {timeout:g} s")
        _signal(pid, signal.SIGTERM)
        if not _wait_for(lambda: not env.is_running(), timeout):
            term.warn(f"the daemon did not stop within {timeout:g} s; killing it")
            forced = True
    if forced:
        tree = _merge(tree, _process_tree(pid))  # workers may have been spawned meanwhile
        if force:
            term.info(f"killing msting daemon (pid {pid}) and its workers")
        # The daemon is a session leader and its workers share its process group; only
        # kill a group that is the daemon's own (never ours, e.g. under --foreground).
        if pgid is not None and pgid == pid and pgid != os.getpgrp():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in tree:
            _kill(proc)
        _wait_for(lambda: not env.is_running(), 5.0)

    # After a clean exit the workers are gone already; give stragglers a moment, then kill.
    alive = _alive(tree, wait=3.0)
    if alive:
        term.warn("killing leftover processes: " + ", ".join(str(p.pid) for p in alive))
        for proc in alive:
            _kill(proc)
        alive = _alive(alive, wait=3.0)

    removed = instance.remove_stale(env.paths.pidfile, sock, env.paths.lockfile)
    remaining = [f"process {p.pid} ({_name(p)})" for p in alive]
    if env.is_running():
        remaining.append(f"lock {env.paths.lockfile} is still held")
    for path in (env.paths.pidfile, sock):
        if path.exists():
            remaining.append(str(path))
    result = {
        "ok": not remaining,
        "was_running": True,
        "pid": pid,
        "forced": forced,
        "removed": [str(p) for p in removed],
        "remaining": remaining,
    }
    if remaining:
        raise CommandError(
            "the daemon was stopped but these remain: " + "; ".join(remaining), ExitCode.FAILED, data=result
        )
    return result


def _pid_of_lock_holder(env: Env) -> int | None:
    # The daemon takes the lock a moment before it writes the pidfile.
    deadline = time.monotonic() + 2.0
    while True:
        pid = env.running_pid()
        if pid is not None or not env.is_running() or time.monotonic() >= deadline:
            return pid
        time.sleep(0.05)


def _process_tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _merge(a: list[Any], b: list[Any]) -> list[Any]:
    seen = {p.pid for p in a}
    return a + [p for p in b if p.pid not in seen]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill(proc: Any) -> None:
    import psutil

    try:
        proc.kill()  # psutil checks the pid still belongs to the same process
    except psutil.Error:
        pass


def _is_alive(proc: Any) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _alive(procs: list[Any], wait: float) -> list[Any]:
    _wait_for(lambda: not any(_is_alive(p) for p in procs), wait)
    return [p for p in procs if _is_alive(p)]


def _name(proc: Any) -> str:
    try:
        return proc.name()
    except Exception:
        return "?"


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SEC)
