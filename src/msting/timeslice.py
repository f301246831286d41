"""Scheduler time slices (Linux ≥ 6.12): short for the daemon's event loop, long for a
worker's job thread.

Under the EEVDF scheduler each thread has a virtual deadline one *time slice* ahead of
it. A thread that wakes up on a busy core preempts the running thread at once when its
own slice is shorter (and its deadline earlier); otherwise it often waits until the running
thread's slice is used up, which the kernel checks at its next tick (4 ms at 250 Hz).
Linux 6.12 lets any thread ask for its own slice (``sched_attr.sched_runtime`` for
SCHED_OTHER, no privilege needed, clamped to 0.1–100 ms); its share of the CPU stays
the same, only when it runs changes.

- The daemon's event loop does little per request (a /health answer is ~0.3 ms of CPU)
  but shares the cores with workers: while any of its local workers is up it asks for
  the shortest slice (`SLICE_US`), so it is picked soon after it wakes (`LoopSlice`).
  While none is, it keeps the kernel's default: then the programs it would preempt are
  someone else's, such as an engine on the same machine that it fronts as a remote
  service, whose tokens it forwards (measured in docs/benchmarks.md: 8 streams through
  the daemon from llama_cpp.server on two cores, 0.97 of direct with the shortest slice,
  1.02 with the default).
- A worker's job thread computes for as long as a generation lasts. It asks for a long
  slice (`JOB_SLICE_US`), longer than the default one every other program runs with
  (0.7–2.8 ms, by core count). A thread with a shorter slice that wakes up on its core,
  such as the client reading the stream or the worker's own frame reader, then runs
  at once instead of waiting up to a tick behind the decode. On a 2-core machine that
  wait was the p95 of time to first token: the client sat behind the decode of the
  next tokens for 2–3 ms (docs/benchmarks.md).

`set_time_slice` asks for a slice for the calling thread and says what happened; on
other systems it changes nothing. A slice shorter than any default is for that thread
alone: it is asked with ``SCHED_FLAG_RESET_ON_FORK``, so every thread and process the
thread starts afterwards begins with the kernel's default. The daemon's executor
threads, and the worker processes they fork, never run with the event loop's slice,
not even for the interpreter start before a worker's ``main()``. (The flag also puts
a negative nice value back to 0 in children, so a thread with one asks without it;
its children then inherit the short slice, and a worker's main thread still resets
itself with ``set_time_slice(None)``.) A longer slice is inherited: the compute
threads a job thread starts on its first decode (OpenMP's) run with it too.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from pathlib import Path
from typing import Callable

SLICE_US = 100  # the kernel's minimum: the daemon's event loop
JOB_SLICE_US = 10_000  # a worker's job thread: longer than any default slice (at most 2.8 ms)
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "riscv64": 274}  # the generic table: 274
_SCHED_OTHER = 0
_SCHED_FLAG_RESET_ON_FORK = 0x01  # sched_attr.sched_flags
_SCHED_RESET_ON_FORK = 0x40000000  # the same, as sched_getscheduler() shows it
_SHORTER_THAN_ANY_DEFAULT_US = 700  # the kernel's default: 0.7 ms × (1 + log2 of the cores, counted up to 8)


def set_time_slice(slice_us: int | None = SLICE_US) -> str:
    """Ask for a `slice_us` time slice (None: the kernel's default) for the calling
    thread. Returns a short description of the outcome for the log; never raises."""
    if sys.platform != "linux":
        return "not Linux: default time slice"
    nr = _SYS_SCHED_SETATTR.get(platform.machine())
    if nr is None:
        return f"unknown syscall number on {platform.machine()}: default time slice"
    policy = os.sched_getscheduler(0)
    if policy & ~_SCHED_RESET_ON_FORK != _SCHED_OTHER:
        return "not SCHED_OTHER (set by the operator): left as it is"
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # Linux: the calling thread's
    short = slice_us is not None and slice_us < _SHORTER_THAN_ANY_DEFAULT_US
    # Reset on fork: what this thread starts begins with the default slice (and a
    # negative nice value back at 0, hence not then). Once set, an unprivileged thread
    # cannot clear it (EPERM), so a thread that has it keeps it.
    alone = (short and nice >= 0) or bool(policy & _SCHED_RESET_ON_FORK)
    # struct sched_attr (version 0, 48 bytes): size, policy, flags, nice, priority,
    # runtime (the slice for SCHED_OTHER), deadline, period. The current nice value
    # is passed back unchanged.
    flags = _SCHED_FLAG_RESET_ON_FORK if alone else 0
    runtime_ns = 0 if slice_us is None else slice_us * 1000
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQ", 48, _SCHED_OTHER, flags, nice, 0, runtime_ns, 0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, 0, attr, 0) != 0:
        return f"sched_setattr failed ({os.strerror(ctypes.get_errno())}): time slice unchanged"
    got = current_slice_ns()
    if slice_us is None:
        return "default time slice" if got is None else f"default time slice ({got / 1000:g} µs)"
    if got is None:
        return f"asked for a {slice_us} µs time slice (the kernel does not show it)"
    if got != slice_us * 1000:
        return f"the kernel kept a {got / 1000:g} µs time slice (custom slices need Linux 6.12)"
    if short and alone:
        return f"{slice_us} µs time slice, for this thread only"
    if short:
        return f"{slice_us} µs time slice, inherited (reset on fork would set children's nice {nice} to 0)"
    return f"{slice_us} µs time slice"


def current_slice_ns(pid: int | None = None, tid: int | None = None) -> int | None:
    """The time slice of the calling thread, or of process `pid`'s thread `tid` (its
    main thread by default), from /proc; None where the kernel does not show it."""
    if pid is None:
        path = Path("/proc/thread-self/sched")
    else:
        path = Path(f"/proc/{pid}/task/{tid or pid}/sched")
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


class LoopSlice:
    """The event loop thread's slice, following how many local worker processes are
    up (`serving`, called on the loop's own thread): the shortest while any is, the
    kernel's default while none is. `report` hears each change, in set_time_slice's words."""

    def __init__(self, report: Callable[[str], None]):
        self.report = report
        self.short = False

    def serving(self, workers: int) -> None:
        short = workers > 0
        if short != self.short:
            self.short = short
            self.report(set_time_slice(SLICE_US if short else None))
