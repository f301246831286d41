"""Hang detection for one worker process: pings while idle, token progress while busy.

Each process is judged on its own clock: every incarnation starts with a fresh
`Liveness`, so a replacement is never blamed for its predecessor's silence. The
watchdog only kills; the supervisor cleans up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from msting.config.schema import ServiceConfig


@dataclass
class Liveness:
    """What the watchdog knows about one worker process (one incarnation)."""

    last_progress: float
    last_ping: float
    ping_sent_at: float | None = None


async def watch(live: Liveness, s: ServiceConfig, clock: Callable[[], float], is_busy: Callable[[], bool], ping: Callable[[], None],
                kill: Callable[[str], None]) -> None:
    """Kill the process (through `kill`) once it is hung; `s`: the llm_service section."""
    tick = max(0.05, min(1.0, s.health_interval_sec, s.hang_timeout_sec / 4))
    busy_ping = max(0.05, min(s.health_interval_sec, s.hang_timeout_sec / 4))
    while True:
        now = clock()
        busy = is_busy()
        if busy and now - live.last_progress > s.hang_timeout_sec:
            kill(f"hung: no token progress for {now - live.last_progress:.1f}s (llm_service.hang_timeout_sec={s.hang_timeout_sec:g})")
            return
        if live.ping_sent_at is not None and now - live.ping_sent_at > s.hang_timeout_sec:
            kill(f"hung: no answer to a ping for {now - live.ping_sent_at:.1f}s (llm_service.hang_timeout_sec={s.hang_timeout_sec:g})")
            return
        interval = busy_ping if busy else s.health_interval_sec
        if live.ping_sent_at is None and now - live.last_ping >= interval:
            live.last_ping = live.ping_sent_at = now
            ping()
        # Wake at the next deadline, not on a coarse tick: a hang is seen within a few
        # milliseconds of hang_timeout_sec (the tick bounds how late a change of state,
        # idle to busy, is noticed).
        due = live.last_ping + interval if live.ping_sent_at is None else live.ping_sent_at + s.hang_timeout_sec
        if busy:
            due = min(due, live.last_progress + s.hang_timeout_sec)
        await asyncio.sleep(min(tick, max(0.005, due - now + 0.002)))
