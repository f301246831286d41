"""Restart policy: exponential backoff with jitter, a stability window, and a crash budget.

Two kinds of crash are told apart:

- a worker that dies before it became ready (a start failure) counts toward the crash
  budget: ``max_crashes`` of them within ``crash_window_sec`` make the worker FATAL,
  because a model that cannot even start would otherwise restart forever;
- a worker that had become ready (and passed its verify generate) proved the model
  works, so its death (a kill, the OOM killer, a llama.cpp crash on one request) only
  grows the backoff. The requests it held are bounded separately (a request that was in
  flight in two dying workers is failed, not retried), so no input can loop forever.

The backoff resets once a worker has stayed READY for ``stable_after_sec``. While
requests wait for the model, a restart is never delayed by more than
``waiting_backoff_max_sec``: a long backoff only applies to a model nobody waits for.

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
    _start_failures: deque = field(default_factory=deque)

    def on_ready(self) -> None:
        self.ready_since = self.clock()

    def on_crash(self) -> float | None:
        """Record a crash. Return the delay before the next start, or None to give up (FATAL)."""
        now = self.clock()
        p = self.policy
        was_ready = self.ready_since is not None
        # Backoff resets only once the worker had stayed READY for the stability window:
        # a worker that crashes seconds after each start keeps backing off.
        if was_ready and now - self.ready_since >= p.stable_after_sec:
            self.attempt = 0
        self.ready_since = None
        while self._start_failures and now - self._start_failures[0] > p.crash_window_sec:
            self._start_failures.popleft()
        if not was_ready:
            self._start_failures.append(now)
            if len(self._start_failures) >= p.max_crashes:
                return None
        delay = min(p.backoff_max_sec, p.backoff_initial_sec * p.backoff_multiplier**self.attempt)
        self.attempt += 1
        if p.jitter:
            delay *= 1.0 + self.rng.uniform(-p.jitter, p.jitter)
        return max(0.0, delay)

    def waiting_cap(self) -> float:
        """The longest a restart may wait while requests wait for the model."""
        return self.policy.waiting_backoff_max_sec

    @property
    def recent_crashes(self) -> int:
        """Start failures within the crash window (what the budget counts)."""
        return len(self._start_failures)

    def reset(self) -> None:
        """Forget the history: a fresh start (a retry after FATAL, or an operator's load)."""
        self.attempt = 0
        self.ready_since = None
        self._start_failures.clear()
