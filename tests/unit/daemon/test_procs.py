"""msting.daemon.local.procs.ChildProcess: real child processes started off the event loop,
their exit seen through a pidfd (or the waiter thread where there is none), stderr as
a stream, signals, and no orphan when the start is cancelled."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import psutil
import pytest

from msting.daemon.local import procs
from msting.daemon.local.procs import ChildProcess

PY = sys.executable


@pytest.fixture(params=["pidfd", "thread"])
def exit_watch(request, monkeypatch):
    if request.param == "pidfd" and not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this platform")
    if request.param == "thread":
        monkeypatch.delattr(procs.os, "pidfd_open", raising=False)
    return request.param


def test_exit_status_and_stderr(exit_watch) -> None:
    async def main():
        child = await ChildProcess.start([PY, "-c", "import sys; sys.stderr.write('one\\ntwo\\n'); sys.exit(3)"])
        assert child.pid > 0
        lines = [await child.stderr.readline(), await child.stderr.readline(), await child.stderr.readline()]
        assert await asyncio.wait_for(child.wait(), 30) == 3
        return child, lines

    child, lines = asyncio.run(main())
    assert lines == [b"one\n", b"two\n", b""]
    assert child.returncode == 3
    assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE


def test_signals_and_timeouts(exit_watch) -> None:
    async def main():
        child = await ChildProcess.start([PY, "-c", "import time; time.sleep(60)"])
        assert child.returncode is None
        with pytest.raises(asyncio.TimeoutError):  # a cancelled wait leaves the exit watch intact
            await asyncio.wait_for(child.wait(), 0.2)
        child.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(child.wait(), 30)
        child.kill()  # after the exit: a no-op, never another process's pid
        return rc, child.returncode

    assert asyncio.run(main()) == (-signal.SIGTERM, -signal.SIGTERM)


def test_passed_fd_reaches_the_child() -> None:
    async def main():
        r, w = os.pipe()
        try:
            child = await ChildProcess.start([PY, "-c", f"import os; os.write({w}, b'hi')"], pass_fds=(w,))
        finally:
            os.close(w)
        assert await asyncio.wait_for(child.wait(), 30) == 0
        data = os.read(r, 10)
        os.close(r)
        return data

    assert asyncio.run(main()) == b"hi"


def test_cannot_start_raises_oserror() -> None:
    async def main():
        await ChildProcess.start(["/nonexistent/msting-no-such-binary"])

    with pytest.raises(OSError):
        asyncio.run(main())


def test_cancelled_start_leaves_no_orphan() -> None:
    marker = f"msting-orphan-check-{os.getpid()}-{time.monotonic_ns()}"

    async def main():
        task = asyncio.create_task(ChildProcess.start([PY, "-c", "import time, sys; time.sleep(60)", marker]))
        await asyncio.sleep(0)  # the Popen is running in its thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["cmdline", "status"])
                 if marker in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.1)
    assert alive == []


def test_on_exit_calls_back_once_the_process_has_exited_and_at_once_after(exit_watch) -> None:
    async def main():
        seen: list[str] = []
        child = await ChildProcess.start([PY, "-c", "import time; time.sleep(0.2)"])
        child.on_exit(lambda: seen.append(f"first {child.returncode}"))
        assert seen == []
        await asyncio.wait_for(child.wait(), 30)
        await asyncio.sleep(0)
        child.on_exit(lambda: seen.append("late"))  # registered after the exit: called soon all the same
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(main()) == ["first 0", "late"]
