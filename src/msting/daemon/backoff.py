"""Restart policy: exponential backoff with jitter, a stability window, and a crash budget.

The clock and the random source are injected, so tests run the policy without sleeping.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from msting.config.schema import RestartPolicy


@dataclass
class RestartTracker:
    policy: RestartPolicy
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0  # consecutive unstable crashes: the exponent of the next delay
    ready_since: float | None = None
    _crashes: deque = field(default_factory=deque)

    def on_ready(self) -> None:
        self.ready_since = self.clock()

    def on_crash(self) -> float | None:
        """Record a crash. Return the delay before the next start, or None to give up (FATAL)."""
        now = self.clock()
        p = self.policy
        # Backoff resets only once the worker had stayed READY for the stability window:
        # a worker that crashes seconds after each start keeps backing off.
        if self.ready_since is not None and now - self.ready_since >= p.stable_after_sec:
            self.attempt = 0
        self.ready_since = None
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > p.crash_window_sec:
            self._crashes.popleft()
        if len(self._crashes) >= p.max_crashes:
            return None
        delay = min(p.backoff_max_sec, p.backoff_initial_sec * p.backoff_multiplier**self.attempt)
        self.attempt += 1
        if p.jitter:
            delay *= 1.0 + self.rng.uniform(-p.jitter, p.jitter)
        return max(0.0, delay)

    @property
    def recent_crashes(self) -> int:
        return len(self._crashes)

    def reset(self) -> None:
        """Forget the history: an operator asked for a fresh start (for example a reload after FATAL)."""
        self.attempt = 0
        self.ready_since = None
        self._crashes.clear()
