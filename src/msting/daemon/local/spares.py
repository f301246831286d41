"""Worker processes: how they are started, and the warm spare.

Starting a worker costs an interpreter start plus ``import llama_cpp`` (about 0.4 s on
two cores) before the model even begins to load, and requests wait through it on a
crash restart, a profile switch or an on-demand load. So the daemon keeps one *spare*:
a worker process started with ``--spare`` that has already imported the engine and
waits, silent, for a ``load`` frame. `WorkerLauncher.launch` hands it to the next
worker start (which then pays only the model load) and starts a new spare once the
daemon is settled again (no worker starting or loading for 0.2 s), so the spare's own
start never competes with a load for the cores.

``llm_service.warm_spare: false`` turns it off; every worker then starts from scratch.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable

from msting.daemon.local.procs import ChildProcess

log = logging.getLogger("msting.daemon.spares")

SETTLE_SEC = 0.2  # the daemon has had no worker starting or loading for this long
_POLL_SEC = 0.1


class LaunchError(Exception):
    """A worker process could not be started."""


@dataclass
class Launched:
    """A started worker process and the daemon's end of its socketpair."""

    proc: ChildProcess
    sock: socket.socket
    spare: bool  # True: it waits for a ``load`` frame with its spec


async def _spawn(args: list[str]) -> Launched:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = await ChildProcess.start(
            [sys.executable, "-m", "msting.worker", "--fd", str(child.fileno()), *args], pass_fds=(child.fileno(),))
    except OSError as exc:
        parent.close()
        raise LaunchError(f"cannot start the worker process: {exc}") from None
    finally:
        child.close()  # only the worker holds its end, so its death is our EOF
    return Launched(proc, parent, spare="--spare" in args)


class WorkerLauncher:
    """Starts worker processes, from the warm spare when there is one.

    `settled` tells whether no worker is starting or loading right now; a new spare
    is only started when it has been true for `SETTLE_SEC`. `on_serving(n)` hears how
    many of the processes it handed out (spares waiting not counted) are alive, each
    time that changes.
    """

    def __init__(self, enabled: bool, settled: Callable[[], bool] = lambda: True,
                 on_serving: Callable[[int], None] | None = None):
        self.enabled = enabled
        self.settled = settled
        self.on_serving = on_serving
        self.serving = 0  # processes handed out to serve a model, still alive
        self.handed_out = 0  # worker starts served by a spare
        self._spare: Launched | None = None
        self._spare_since: float | None = None
        self._wanted = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    # ---- used by WorkerSupervisor ---------------------------------------------------

    async def launch(self, spec_json: str) -> Launched:
        """A worker process for the spec: the spare if one is alive, else a new one."""
        launched = self._take() or await _spawn(["--spec", spec_json])
        self._serving_changed(+1)
        launched.proc.on_exit(lambda: self._serving_changed(-1))
        return launched

    def _serving_changed(self, by: int) -> None:
        self.serving += by
        if self.on_serving is not None:
            self.on_serving(self.serving)

    def _take(self) -> Launched | None:
        spare, self._spare = self._spare, None
        self._spare_since = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self.enabled and not self._closed:
            self._wanted.set()
        if spare is None:
            return None
        if spare.proc.returncode is not None:  # died while waiting; start from scratch
            log.warning("warm spare worker pid %d had exited (%s); starting a new worker", spare.proc.pid, spare.proc.returncode)
            spare.sock.close()
            return None
        self.handed_out += 1
        return spare

    # ---- the spare's own life cycle -------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._wanted.set()
            self._task = asyncio.create_task(self._keep_spare(), name="warm spare")

    async def _keep_spare(self) -> None:
        while not self._closed:
            await self._wanted.wait()
            self._wanted.clear()
            if self._spare is not None and self._spare.proc.returncode is None:
                continue
            settled_since: float | None = None
            while settled_since is None or time.monotonic() - settled_since < SETTLE_SEC:
                await asyncio.sleep(_POLL_SEC)
                if self.settled():
                    settled_since = settled_since or time.monotonic()
                else:
                    settled_since = None
            if self._closed or self._spare is not None:
                continue
            try:
                spare = await _spawn(["--spare"])
            except LaunchError as exc:
                log.warning("warm spare: %s", exc)
                continue
            if self._closed:
                await _stop(spare)
                return
            self._spare, self._spare_since = spare, time.time()
            log.info("warm spare worker started, pid %d", spare.proc.pid)
            self._watcher = asyncio.create_task(self._watch(spare), name=f"spare {spare.proc.pid}")

    async def _watch(self, spare: Launched) -> None:
        """Replace the spare if it dies while it waits (cancelled when it is taken)."""
        await spare.proc.wait()
        if self._spare is not spare:
            return
        log.warning("warm spare worker pid %d exited (%s); starting another", spare.proc.pid, spare.proc.returncode)
        self._spare = None
        spare.sock.close()
        if not self._closed:
            await asyncio.sleep(1.0)  # do not spin on a spare that cannot start
            self._wanted.set()

    def snapshot(self) -> dict:
        spare = self._spare
        alive = spare is not None and spare.proc.returncode is None
        return {
            "enabled": self.enabled,
            "pid": spare.proc.pid if alive else None,
            "since": self._spare_since if alive else None,
            "handed_out": self.handed_out,
        }

    @property
    def pid(self) -> int | None:
        spare = self._spare
        return spare.proc.pid if spare is not None and spare.proc.returncode is None else None

    async def close(self) -> None:
        self._closed = True
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            await _stop(spare)

    def kill(self) -> None:
        """Forced shutdown: kill the spare at once."""
        self._closed = True
        spare = self._spare
        if spare is not None:
            spare.proc.kill()


async def stop_process(proc: ChildProcess, grace: float, term_wait: float) -> None:
    """Wait `grace` seconds for `proc` to exit by itself (it was asked to: a shutdown
    frame, EOF), then SIGTERM and wait `term_wait`, then SIGKILL."""
    for sig, wait in ((None, grace), (signal.SIGTERM, term_wait), (signal.SIGKILL, 5.0)):
        if proc.returncode is not None:
            return
        if sig is not None:
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout=wait)
            return
        except asyncio.TimeoutError:
            continue


async def _stop(spare: Launched) -> None:
    """EOF on its socket ends a spare that waits; SIGTERM one still importing."""
    spare.sock.close()
    await stop_process(spare.proc, 1.0, 2.0)
