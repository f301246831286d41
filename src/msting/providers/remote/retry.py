"""The one retry loop: every attempt a remote service makes goes through `attempt_loop`.

An attempt goes to the URL the pool chooses (msting.providers.remote.pool). A failed
attempt that may succeed elsewhere or later (connect error, timeout, 5xx, 429) is
retried, up to `max_attempts`, within the request's deadline:
- on another URL at once when there is one, else on the same URL after an
  exponential backoff with full jitter;
- never on a URL before its Retry-After has passed (the URL's circuit is open until
  then), and when every circuit is open the loop sleeps until the earliest one lets a
  probe through, instead of failing at once, if that comes within `max_wait_sec` (the
  first-token timeout: failing over never costs more) and before the deadline. URLs
  whose health check failed are down: not waited for, so a dead service hands its
  requests to the fallback chain at once.
A failure that says the request itself is wrong (400, 404, 413) ends the loop at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from msting.api.errors import MstingError, Unavailable
from msting.api.events import Attempt
from msting.providers.remote.pool import UrlPool, UrlState
from msting.providers.remote.upstream import AttemptFailed, Deadline

T = TypeVar("T")
PROBE_POLL_SEC = 0.02  # while another request's probe is out: how often to look again


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_initial_sec: float
    backoff_max_sec: float
    max_wait_sec: float  # the longest wait for a cooling URL

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**(retry-1))]."""
        ceiling = min(self.backoff_max_sec, self.backoff_initial_sec * 2 ** (retry - 1))
        return rng.uniform(0, ceiling)


class AttemptsFailed(Exception):
    """Every attempt of one service failed; `error` is the last one's, `attempts` all of them."""

    def __init__(self, error: MstingError, attempts: list[Attempt], retryable: bool):
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.retryable = retryable


async def attempt_loop(service: str, pool: UrlPool, policy: RetryPolicy, deadline: Deadline,
                       attempt: Callable[[UrlState], Awaitable[T]], attempts: list[Attempt],
                       rng: random.Random) -> tuple[T, UrlState]:
    """The result of the first attempt that succeeds, and its URL, still counted in
    flight: the caller releases it (`pool.release`) once it is done with the reply (a
    stream holds it until it ends). Each attempt is appended to `attempts`. Raises
    AttemptsFailed when none succeeds."""
    last: UrlState | None = None
    failure: AttemptFailed | None = None
    tries = 0
    waiting_since: float | None = None  # when this wait for a circuit began
    while True:
        now = time.monotonic()
        url = pool.choose(now, avoid=last)
        if url is None:
            ready = pool.next_ready_at()
            if ready is not None and ready <= now:
                # Only a probe is out (another request's half-open probe): its outcome
                # decides, at no known time. Look again shortly, not in a tight loop,
                # and within max_wait_sec of the start of this wait, not for as long as
                # the probe takes.
                ready = now + PROBE_POLL_SEC
            if waiting_since is None:
                waiting_since = now
            if ready is None or ready >= deadline.at or ready - waiting_since > policy.max_wait_sec:
                raise _give_up(service, failure, attempts, deadline=deadline, ready_in=None if ready is None else ready - now,
                               pool=pool)
            await asyncio.sleep(max(0.0, ready - now) + 0.001)
            continue
        waiting_since = None
        if tries and url is last:
            pause = policy.backoff(tries, rng)
            if time.monotonic() + pause >= deadline.at:
                raise _give_up(service, failure, attempts, deadline=deadline)
            await asyncio.sleep(pause)
            if not url.breaker.available(time.monotonic()):
                continue  # it opened meanwhile (a health check): choose again
        tries += 1
        started = time.monotonic()
        pool.take(url, started)
        try:
            result = await attempt(url)
        except AttemptFailed as exc:
            pool.release(url)
            now = time.monotonic()
            url.failed += 1
            url.record_error(exc.error.message)
            if exc.retryable:
                url.breaker.failed(now, retry_after=exc.retry_after)
            else:
                url.breaker.succeeded()  # it answered, sanely: the request was the problem
            attempts.append(Attempt(service, url.url, exc.error.message, (now - started) * 1000))
            failure = exc
            if not exc.retryable or tries >= policy.max_attempts or now >= deadline.at:
                raise _give_up(service, failure, attempts, deadline=deadline) from None
            last = url
            continue
        except BaseException:  # cancelled (the client left): not the URL's failure, but a probe it held is free again
            pool.release(url)
            url.breaker.probing = False
            raise
        url.served += 1
        url.breaker.succeeded()
        attempts.append(Attempt(service, url.url, None, (time.monotonic() - started) * 1000))
        return result, url


def _give_up(service: str, failure: AttemptFailed | None, attempts: list[Attempt], *, deadline: Deadline,
             ready_in: float | None = -1.0, pool: UrlPool | None = None) -> AttemptsFailed:
    """`ready_in` is given when no URL could be tried: seconds until one can (None: every
    URL is down). When this request tried none, each URL is listed in `attempts` as not
    tried, with its state and its last error: the client sees which URL and why."""
    if failure is None or (ready_in != -1.0 and failure.retryable):
        if ready_in is None:
            message = f"every URL of {service} is down (its health check failed)"
        else:
            message = (f"every URL of {service} is cooling down (its circuit breakers are open) for longer than this "
                       "request may wait (the first-token timeout, or its deadline)")
        if failure is not None:
            message += f"; the last error: {failure.error.message}"
        elif pool is not None:
            now = time.monotonic()
            untried = [Attempt(service, u.url, f"not tried ({u.state_name(now)}): {u.last_error or u.breaker.reason}", 0.0)
                       for u in pool.urls]
            attempts.extend(untried)
            message += ": " + "; ".join(f"{a.url} {a.error}" for a in untried)
        retry_after = max(1, round(ready_in)) if isinstance(ready_in, float) and ready_in > 0 else 1
        return AttemptsFailed(Unavailable("upstream_unavailable", message, retry_after=retry_after), attempts, retryable=True)
    return AttemptsFailed(failure.error, attempts, failure.retryable)
