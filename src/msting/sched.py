"""The scheduler time slice of a thread: short for the daemon's event loop (Linux ≥ 6.12).

The event loop does little per request (a /health answer is ~0.3 ms of CPU) but it
shares the cores with workers that decode, load models or import llama_cpp. Under the
EEVDF scheduler a thread that wakes up waits until its virtual deadline comes first,
and that deadline is one *slice* (default ~1.4–3 ms) away, so a woken loop thread could
sit behind a busy worker for a few milliseconds before it answers. Linux 6.12 lets any
thread ask for a shorter slice (``sched_attr.sched_runtime`` for SCHED_OTHER, no
privilege needed, clamped to 0.1–100 ms): the thread then gets an earlier deadline and
is picked sooner when it wakes, while its share of the CPU stays the same.

`set_time_slice` asks for it for the calling thread and says what happened; on other
systems it changes nothing. Threads and processes started later inherit the slice, so a
worker process puts its own back to the default (`set_time_slice(None)`): a decode
thread that runs for seconds is better off with long slices.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from pathlib import Path

SLICE_US = 100  # the kernel's minimum
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "riscv64": 274}  # the generic table: 274
_SCHED_OTHER = 0


def set_time_slice(slice_us: int | None = SLICE_US) -> str:
    """Ask for a `slice_us` time slice (None: the kernel's default) for the calling
    thread. Returns a short description of the outcome for the log; never raises."""
    if sys.platform != "linux":
        return "not Linux: default time slice"
    nr = _SYS_SCHED_SETATTR.get(platform.machine())
    if nr is None:
        return f"unknown syscall number on {platform.machine()}: default time slice"
    if os.sched_getscheduler(0) != _SCHED_OTHER:
        return "not SCHED_OTHER (set by the operator): left as it is"
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    # struct sched_attr (version 0, 48 bytes): size, policy, flags, nice, priority,
    # runtime (the slice for SCHED_OTHER), deadline, period. The current nice value
    # is passed back unchanged.
    runtime_ns = 0 if slice_us is None else slice_us * 1000
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQ", 48, _SCHED_OTHER, 0, nice, 0, runtime_ns, 0, 0))
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
