"""A service's URLs: which one takes the next request, and what each has been doing.

Among the URLs whose circuit lets a request through, the one with the fewest requests
in flight wins; URLs tied on that and within LATENCY_TIE of the fastest (or within
LATENCY_FLOOR_MS of it) take turns, so two equal servers share even a sequential load.
Each URL keeps its circuit (msting.providers.remote.breaker), a smoothed latency, its
last error and counters, which `status` shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from msting.providers.remote.breaker import HEALTH, Breaker, Circuit

LATENCY_TIE = 1.25  # latencies within 25 % of the fastest count as equal
# Differences below this are noise: a new connection, a pause of the event loop. (A bound
# of "fastest x 1.25" alone let one slow sample, the first request on a cold connection,
# keep an equal server out of a sequential load: its latency is refreshed only by what it
# is given, and health checks.)
LATENCY_FLOOR_MS = 50.0
SMOOTHING = 0.3  # weight of a new latency sample


@dataclass
class UrlState:
    url: str
    breaker: Breaker
    in_flight: int = 0
    latency_ms: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None  # unix time
    last_checked: float | None = None  # unix time of the last health check
    served: int = 0
    failed: int = 0
    picked: int = field(default=0, repr=False)  # turn-taking among ties

    def observe_latency(self, ms: float) -> None:
        self.latency_ms = ms if self.latency_ms is None else (1 - SMOOTHING) * self.latency_ms + SMOOTHING * ms

    def record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    def state_name(self, now: float) -> str:
        """up | down | cooling_down | probing, as status shows it."""
        state = self.breaker.state
        if state is Circuit.CLOSED:
            return "up"
        if state is Circuit.HALF_OPEN:
            return "probing"
        if now >= self.breaker.open_until:
            return "probing"  # the next request is the probe
        return "down" if self.breaker.reason == HEALTH else "cooling_down"

    def as_dict(self, now: float) -> dict:
        state = self.state_name(now)
        until = None
        if state in ("down", "cooling_down"):
            until = round(time.time() + (self.breaker.open_until - now), 3)
        return {"url": self.url, "state": state, "cooling_until": until, "reason": self.breaker.reason,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
                "in_flight": self.in_flight, "served": self.served, "failed": self.failed,
                "last_error": self.last_error, "last_error_at": self.last_error_at, "last_checked": self.last_checked}


class UrlPool:
    def __init__(self, urls: tuple[str, ...], *, failures: int, window_sec: float, cooldown_sec: float):
        self.urls = [UrlState(u, Breaker(failures, window_sec, cooldown_sec)) for u in urls]

    def choose(self, now: float, avoid: UrlState | None = None) -> UrlState | None:
        """The URL for the next request, or None when every circuit is open. `avoid`
        (the URL that just failed) is passed over when another is available."""
        open_ = [u for u in self.urls if u.breaker.available(now)]
        if avoid is not None and len(open_) > 1:
            open_ = [u for u in open_ if u is not avoid] or open_
        if not open_:
            return None
        fewest = min(u.in_flight for u in open_)
        tied = [u for u in open_ if u.in_flight == fewest]
        if len(tied) > 1:
            known = [u.latency_ms for u in tied if u.latency_ms is not None]
            if known:
                fastest = min(known)
                bound = max(fastest * LATENCY_TIE, fastest + LATENCY_FLOOR_MS)
                tied = [u for u in tied if u.latency_ms is None or u.latency_ms <= bound]
        return min(tied, key=lambda u: (u.picked, self.urls.index(u)))

    def next_ready_at(self) -> float | None:
        """When the earliest circuit worth waiting for lets a request through again: one
        cooling down after failed requests or a Retry-After. None when every URL is
        down (its health check failed)."""
        times = [u.breaker.ready_at() for u in self.urls if not u.breaker.down]
        return min(times) if times else None

    def take(self, url: UrlState, now: float) -> None:
        url.breaker.take(now)
        url.in_flight += 1
        url.picked += 1

    def release(self, url: UrlState) -> None:
        url.in_flight -= 1

    def states(self, now: float) -> list[dict]:
        return [u.as_dict(now) for u in self.urls]

    def up_count(self, now: float) -> int:
        """URLs known to answer (a probing one has yet to prove it)."""
        return sum(1 for u in self.urls if u.state_name(now) == "up")

    def probing_count(self, now: float) -> int:
        return sum(1 for u in self.urls if u.state_name(now) == "probing")
