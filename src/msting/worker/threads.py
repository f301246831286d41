"""How many threads a worker decodes with, when its spec leaves ``n_threads`` unset.

At load the engine decodes a few generation-shaped steps (one token, one sequence)
at each thread count from 1 to :func:`usable_cores` and hands the speeds to
:func:`choose`. More threads are kept only when they are clearly faster
(:data:`MARGIN`): the daemon and its clients run on the same cores, and a thread
that buys a few percent of decode speed takes a core from them. An explicit
``n_threads`` always wins (source ``spec``). Dependency-free except ``psutil``
(imported when asked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MARGIN = 0.10  # a larger thread count is kept when it decodes at least 10 % faster


@dataclass(frozen=True)
class ThreadChoice:
    chosen: int
    source: str  # "spec" | "measured"
    reason: str
    measured: dict[int, float] = field(default_factory=dict)  # threads -> decode tok/s

    def as_metadata(self) -> dict:
        return {
            "source": self.source,
            "chosen": self.chosen,
            "measured": {str(n): round(v, 1) for n, v in sorted(self.measured.items())},
            "reason": self.reason,
        }


def usable_cores() -> int:
    """Physical cores (psutil), bounded by the CPUs this process may run on."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:
        physical = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = physical
    return max(1, min(physical, allowed))


def from_spec(n_threads: int) -> ThreadChoice:
    return ThreadChoice(n_threads, "spec", f"n_threads {n_threads} set for this model")


def choose(measured: dict[int, float], margin: float = MARGIN) -> ThreadChoice:
    """The thread count to keep, given decode speeds (tok/s) by thread count: the
    fewest threads, unless more are at least *margin* faster than the best so far."""
    if not measured:
        raise ValueError("no measurement to choose from")
    counts = sorted(measured)
    best = counts[0]
    for n in counts[1:]:
        here, kept = measured[n], measured[best]
        if here > 0 and (kept <= 0 or here / kept >= 1.0 + margin - 1e-9):
            best = n
    if len(counts) == 1:
        reason = f"1 usable core: {best} thread{'s' if best > 1 else ''} ({measured[best]:.1f} tok/s)"
        return ThreadChoice(best, "measured", reason, dict(measured))
    others = [n for n in counts if n != best]
    rival = max(others, key=lambda n: measured[n])
    if rival > best:
        reason = (
            f"{_threads(best)} decoded {measured[best]:.1f} tok/s against {measured[rival]:.1f} with {rival}: "
            f"more threads were not at least {margin:.0%} faster, and the daemon and its clients share the cores"
        )
    else:
        reason = (
            f"{_threads(best)} decoded {measured[best]:.1f} tok/s against {measured[rival]:.1f} with {rival} "
            f"(at least {margin:.0%} faster, worth a core the daemon and its clients share)"
        )
    return ThreadChoice(best, "measured", reason, dict(measured))


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"
