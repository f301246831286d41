"""A stand-in for systemd's end of the notification protocol: a Unix datagram socket,
by path or in the abstract namespace, read at once (as systemd reads it) by a thread
that records what the daemon sends."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
import uuid


class NotifySocket:
    """What systemd listens on: a Unix datagram socket, by path or in the abstract namespace."""

    def __init__(self, home, abstract: bool):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"msting-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(home / "notify.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []  #: every message handed out by next(), in order
        self._inbox: queue.Queue[str] = queue.Queue()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self._inbox.put(self.sock.recv(8192).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def next(self, timeout: float = 60) -> str:
        message = self._inbox.get(timeout=timeout)  # queue.Empty: nothing came in time
        self.messages.append(message)
        return message

    def until(self, predicate, timeout: float = 90) -> str:
        """Read until a message matches; fails (queue.Empty) if none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if predicate(message):
                return message

    def close(self):
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def killed_at_exit(proc):
    """`proc` (a daemon as an init system started it), killed if a test leaves it running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
