"""A circuit breaker for one upstream URL.

CLOSED takes traffic. `breaker_failures` failures within `breaker_window_sec` open it
(OPEN: no traffic until `open_until`); so does one failed health check, and so does a
`Retry-After` (the upstream said "not before then"). Once `open_until` has passed, the
circuit lets exactly one request through as a probe (HALF_OPEN): its success closes
the circuit, its failure opens it again for another cooldown.

No I/O and no clock of its own: every call takes `now` (time.monotonic()), so the
tests drive it step by step.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from msting.transitions import Transitions


class Circuit(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_MOVE = Transitions("circuit", {
    Circuit.CLOSED: frozenset({Circuit.OPEN}),
    Circuit.OPEN: frozenset({Circuit.HALF_OPEN, Circuit.CLOSED}),
    Circuit.HALF_OPEN: frozenset({Circuit.CLOSED, Circuit.OPEN}),
})

# Why a circuit is open, as `status` shows it.
FAILURES = "requests failed"
HEALTH = "health check failed"
RETRY_AFTER = "the upstream asked to wait (Retry-After)"


class Breaker:
    def __init__(self, failures: int, window_sec: float, cooldown_sec: float):
        self.threshold = failures
        self.window = window_sec
        self.cooldown = cooldown_sec
        self.state = Circuit.CLOSED
        self.open_until = 0.0
        self.reason: str | None = None
        self.probing = False  # HALF_OPEN: the one probe is out
        self._failures: deque[float] = deque()

    def _move(self, target: Circuit) -> None:
        if target is not self.state:
            self.state = _MOVE(self.state, target)

    def available(self, now: float) -> bool:
        """May a request go to this URL now? (An OPEN circuit past its cooldown becomes
        HALF_OPEN here: the next request is its probe.)"""
        if self.state is Circuit.OPEN and now >= self.open_until:
            self._move(Circuit.HALF_OPEN)
            self.probing = False
        if self.state is Circuit.HALF_OPEN:
            return not self.probing
        return self.state is Circuit.CLOSED

    def take(self, now: float) -> None:
        """A request goes to this URL (call after `available`)."""
        if self.state is Circuit.HALF_OPEN:
            self.probing = True

    def ready_at(self) -> float:
        """When an unavailable URL may take a request again (0: now)."""
        return self.open_until if self.state is Circuit.OPEN else 0.0

    @property
    def down(self) -> bool:
        """Open because the URL did not answer its health check: known dead, not worth
        waiting for."""
        return self.state is Circuit.OPEN and self.reason == HEALTH

    def succeeded(self) -> None:
        self._failures.clear()
        self.probing = False
        self.reason = None
        self._move(Circuit.CLOSED)

    def failed(self, now: float, *, retry_after: float | None = None, health: bool = False) -> None:
        """A request (or, with `health`, a health check) to this URL failed."""
        self.probing = False
        if retry_after is not None and retry_after > 0:
            self._open(now, retry_after, RETRY_AFTER)
            return
        if health:
            self._open(now, self.cooldown, HEALTH)
            return
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.window:
            self._failures.popleft()
        if self.state is Circuit.HALF_OPEN or len(self._failures) >= self.threshold:
            self._open(now, self.cooldown, FAILURES)

    def health_ok(self, now: float) -> None:
        """A health check answered. It closes a circuit its own kind opened, or one whose
        cooldown has passed; a circuit opened by failed requests stays open until then
        (a model list that answers says little about generation)."""
        if self.state is Circuit.CLOSED:
            return
        if self.reason == HEALTH or now >= self.open_until:
            self.succeeded()

    def _open(self, now: float, seconds: float, reason: str) -> None:
        if self.state is Circuit.OPEN:
            # Already open. A Retry-After may push the end further. A failed health
            # check before the end changes nothing but the reason (else a dead URL's
            # frequent checks would keep pushing its end, past any probe); one after
            # the end starts a new cooldown: the probe time came and it is still dead.
            if reason == RETRY_AFTER:
                self.open_until = max(self.open_until, now + seconds)
                self.reason = reason
            elif reason == HEALTH and not (self.reason == RETRY_AFTER and now < self.open_until):
                if now >= self.open_until:
                    self.open_until = now + seconds
                self.reason = reason  # known dead now: down, not waited for
            return
        self._move(Circuit.OPEN)
        self.open_until = now + seconds
        self.reason = reason
        self._failures.clear()
