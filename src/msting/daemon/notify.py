"""Telling an init system how the daemon is doing: systemd's notification protocol.

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET`` naming a Unix datagram
socket (a path, or ``@name`` in the abstract namespace), and reads newline-separated
``KEY=value`` lines from it:

- ``READY=1``: start-up is complete (here: the daemon is ready in the readiness sense,
  every always-ready model has generated; or idle, when the profile has none);
- ``STATUS=...``: one line for ``systemctl status``;
- ``WATCHDOG=1``: the service is alive; with ``WatchdogSec=`` systemd sets
  ``$WATCHDOG_USEC`` and kills a service that stays silent that long. The daemon sends
  it from its event loop, so a stuck loop stops the pings;
- ``STOPPING=1``: the service is shutting down (draining);
- ``RELOADING=1``: the service restarts in place (the daemon's own restart, an exec in
  the same pid); the new image's ``READY=1`` ends it. STOPPING=1 there would make
  systemd wait for an exit that never comes, then kill the daemon.

A few lines on a socket; no dependency. Without ``$NOTIFY_SOCKET`` every call is a
no-op, so the daemon calls these unconditionally. Sends never block: a datagram socket
whose reader is behind (its queue holds net.unix.max_dgram_qlen datagrams, 10 by
default) would otherwise stall the event loop; such a message is dropped, and the
readiness line is sent again until it goes through.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

#: How often readiness is looked at: until the first READY=1, then after it.
STARTING_POLL_SEC = 0.1
RUNNING_POLL_SEC = 1.0
#: systemd reads at most this much of one datagram (its NOTIFY_BUFFER_MAX is 4 KiB).
MAX_STATUS_CHARS = 1000


class Notifier:
    """One process's end of ``$NOTIFY_SOCKET``; inert when there is none."""

    def __init__(self, address: str | None, watchdog_usec: int = 0):
        self.address = _socket_address(address)
        self.watchdog_usec = watchdog_usec if self.address is not None else 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier the init system asked for in `environ` (default ``os.environ``).
        ``$WATCHDOG_USEC`` counts only when ``$WATCHDOG_PID`` is unset or names this
        process (as in sd_watchdog_enabled)."""
        env = os.environ if environ is None else environ
        usec = _int(env.get("WATCHDOG_USEC"))
        pid = env.get("WATCHDOG_PID")
        if pid and _int(pid) != os.getpid():
            usec = 0
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two WATCHDOG=1: half the init system's timeout, or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec > 0 else None

    def send(self, *lines: str) -> bool:
        """Send one datagram of `lines`; False when there is no socket, its queue is full
        or it failed (a notification never blocks or takes the daemon down)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # not inherited by workers (PEP 446)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode("utf-8", errors="replace"), self.address)
            return True
        except OSError:
            return False

    def status(self, text: str) -> bool:
        return self.send(status_line(text))

    def ready(self, text: str) -> bool:
        return self.send("READY=1", status_line(text))

    def stopping(self, text: str) -> bool:
        return self.send("STOPPING=1", status_line(text))

    def reloading(self, text: str) -> bool:
        # MONOTONIC_USEC: newer systemd matches the reload with it (required for Type=notify-reload)
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}", status_line(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(text: str) -> str:
    """``STATUS=`` with `text` on one line (the protocol is line-based)."""
    flat = " ".join(text.split())
    if len(flat) > MAX_STATUS_CHARS:
        flat = flat[: MAX_STATUS_CHARS - 3] + "..."
    return f"STATUS={flat}"


def _socket_address(address: str | None) -> str | None:
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]  # the abstract namespace
    if address.startswith("/"):
        return address
    return None  # vsock: and other transports are not spoken here


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


# ---- the daemon's two tasks ---------------------------------------------------------


async def follow_readiness(notifier: Notifier, milestone: Callable[[], tuple[str, str]]) -> None:
    """Send ``STATUS=`` whenever `milestone()` (readiness status, a line describing it)
    changes, with ``READY=1`` the first time the status is ``ready`` or ``idle``; a
    line that could not be sent is sent again."""
    if not notifier.enabled:
        return
    shown: tuple[str, str] | None = None
    ready = False
    while True:
        status, text = milestone()
        if (status, text) != shown:
            if not ready and status in ("ready", "idle"):
                ready = sent = notifier.ready(text)
            else:
                sent = notifier.status(text)
            if sent:
                shown = (status, text)
        await asyncio.sleep(RUNNING_POLL_SEC if ready else STARTING_POLL_SEC)


async def keep_watchdog(notifier: Notifier) -> None:
    """``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, from the event loop."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)
