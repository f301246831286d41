"""Child processes started off the event loop.

``asyncio.create_subprocess_exec`` forks and execs on the event loop's thread: measured
here, that stalls every other request for about 4 ms per worker start (and the child
watcher adds a thread per process on Python 3.11). `ChildProcess.start` runs the
``Popen`` in a thread instead, then watches for the exit through a pidfd on the loop
(Linux), or a small waiter thread where there are no pidfds. It offers the part of
``asyncio.subprocess.Process`` the daemon uses: ``pid``, ``returncode``, ``wait()``,
``send_signal()``, ``kill()`` and ``stderr`` as a StreamReader.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading


class ChildProcess:
    def __init__(self, popen: subprocess.Popen, loop: asyncio.AbstractEventLoop):
        self._popen = popen
        self._loop = loop
        self._exited: asyncio.Future[int] = loop.create_future()
        self.pid = popen.pid
        self.stderr: asyncio.StreamReader | None = None

    @classmethod
    async def start(cls, argv: list[str], pass_fds: tuple[int, ...] = ()) -> "ChildProcess":
        """Start `argv` with stdin and stdout on /dev/null and stderr piped.
        Raises OSError when it cannot be started."""
        loop = asyncio.get_running_loop()
        spawned = loop.run_in_executor(None, lambda: subprocess.Popen(
            argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        try:
            popen = await asyncio.shield(spawned)
        except asyncio.CancelledError:
            spawned.add_done_callback(_kill_orphan)  # nobody will own it: do not leak it
            raise
        child = cls(popen, loop)
        child._watch_exit()
        reader = asyncio.StreamReader(loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), popen.stderr)
        child.stderr = reader
        return child

    @property
    def returncode(self) -> int | None:
        """None while it runs; the exit status, or minus the signal, once it has been reaped."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def on_exit(self, callback) -> None:
        """Call `callback()` on the event loop once the process has exited (soon, if it has)."""
        self._exited.add_done_callback(lambda _: callback())

    def send_signal(self, sig: int) -> None:
        if not self._exited.done():
            self._popen.send_signal(sig)  # not reaped yet, so the pid is still ours

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    # ---- exit watching --------------------------------------------------------------

    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
            threading.Thread(target=self._wait_in_thread, name=f"wait {self.pid}", daemon=True).start()
            return
        self._loop.add_reader(pidfd, self._on_pidfd, pidfd)

    def _on_pidfd(self, pidfd: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        rc = self._popen.poll()
        if rc is None:  # cannot happen: a readable pidfd means it has exited
            threading.Thread(target=self._wait_in_thread, name=f"wait {self.pid}", daemon=True).start()
            return
        self._set_exited(rc)

    def _wait_in_thread(self) -> None:
        rc = self._popen.wait()
        self._loop.call_soon_threadsafe(self._set_exited, rc)

    def _set_exited(self, rc: int) -> None:
        if not self._exited.done():
            self._exited.set_result(rc)


def _kill_orphan(spawned: asyncio.Future) -> None:
    if spawned.cancelled() or spawned.exception() is not None:
        return
    popen: subprocess.Popen = spawned.result()
    popen.kill()
    popen.stderr.close()
    threading.Thread(target=popen.wait, daemon=True).start()
