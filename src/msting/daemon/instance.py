"""Single-instance machinery shared by the daemon and the CLI: lock, pidfile, sockets.

The flock on the lock file is the truth about whether a daemon runs: the kernel drops
it when the daemon dies, even by SIGKILL, so a stale pidfile can never fool us. The
pidfile only says *which* process holds the lock. This module stays light (no
starlette, no uvicorn) because the CLI imports it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

# AF_UNIX paths are limited to 108 bytes on Linux (104 on macOS), NUL included.
MAX_SOCKET_PATH = 104


class RuntimeErrorWithHint(Exception):
    """A start-up problem with a message meant for the operator."""


class AlreadyRunning(RuntimeErrorWithHint):
    def __init__(self, pid: int | None, where: str):
        self.pid = pid
        pid_text = f" (pid {pid})" if pid else ""
        super().__init__(f"another msting daemon is already running{pid_text}: {where}")


class PortInUse(RuntimeErrorWithHint):
    pass


class SocketPathError(RuntimeErrorWithHint):
    pass


class DaemonLock:
    """An exclusive, non-blocking flock held for the daemon's whole life."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait_sec: float = 1.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_sec
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                # A CLI probing the lock holds it for microseconds; retry briefly
                # before concluding that another daemon owns it.
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise AlreadyRunning(read_pidfile(self.path.with_suffix(".pid")), str(self.path)) from None
                time.sleep(0.02)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_is_held(path: Path) -> bool:
    """True when some process holds the daemon lock (that is, a daemon is alive)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def write_pidfile(path: Path, pid: int) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(text) if text.isdigit() else None


def running_daemon_pid(pidfile: Path, lockfile: Path) -> int | None:
    """The pid of the live daemon, or None. A pidfile without a held lock is stale."""
    if not lock_is_held(lockfile):
        return None
    return read_pidfile(pidfile)


def remove_stale(pidfile: Path, socket_path: Path, lockfile: Path) -> list[Path]:
    """Remove the pidfile and socket a dead daemon left behind. Returns what was removed.

    Does nothing while a daemon holds the lock. The socket is removed only after a
    connection to it fails, so a live listener is never unlinked.
    """
    if lock_is_held(lockfile):
        return []
    removed = []
    if pidfile.exists():
        pidfile.unlink(missing_ok=True)
        removed.append(pidfile)
    if socket_path.exists() and not socket_accepts(socket_path):
        socket_path.unlink(missing_ok=True)
        removed.append(socket_path)
    return removed


def socket_accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) >= MAX_SOCKET_PATH:
        raise SocketPathError(
            f"socket path is {len(str(path))} bytes, over the {MAX_SOCKET_PATH - 1}-byte limit of Unix "
            f"sockets: {path}. Set llm_service.socket to a shorter path, or use a shorter MSTING_HOME."
        )


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind the daemon's Unix socket with mode 0600 from the first instant."""
    check_socket_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if socket_accepts(path):
            raise AlreadyRunning(None, f"something already listens on {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is group/world accessible
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(256)
    sock.setblocking(False)
    return sock


def bind_tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets created with it,
    # and without TCP_NODELAY every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is already in use{_port_owner(port)}. Stop that program, or set "
                f"llm_service.port in the config (or MSTING_LLM_PORT) to a free port."
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PortInUse(f"cannot bind {host}:{port}: the address is not on this machine") from None
        raise
    sock.listen(256)
    sock.setblocking(False)
    return sock


def _port_owner(port: int) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except Exception:  # ownership is a hint only; permissions may hide it
        pass
    return ""
