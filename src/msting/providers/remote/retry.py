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

A generation's attempt is hedged: one that has produced nothing by `hedge_after`
(shortly before its first-token timeout) is raced by an attempt on another URL, and
the first to open its reply wins (`_Race`).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

from msting.api.errors import MstingError, Timeout, Unavailable
from msting.api.events import Attempt
from msting.providers.remote.pool import UrlPool, UrlState
from msting.providers.remote.upstream import AttemptFailed, Deadline

T = TypeVar("T")
R = TypeVar("R")
PROBE_POLL_SEC = 0.02  # while another request's probe is out: how often to look again
HEDGE_LEAD_SEC = 0.05  # a generation with no first content this long before its first-token timeout asks another URL too
HEDGE_LEAD_SHARE = 0.1  # (at most this share of the timeout)


def hedge_after(first_token_timeout_sec: float) -> float:
    """When a generation's attempt is raced by one on another URL: shortly before its
    first-token timeout, so failing over from a URL that hangs costs less than one timeout."""
    return first_token_timeout_sec - min(HEDGE_LEAD_SEC, first_token_timeout_sec * HEDGE_LEAD_SHARE)


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
                       rng: random.Random, *, hedge_after: float | None = None,
                       finish: Callable[[T], Awaitable[R]] | None = None,
                       discard: Callable[[T], Awaitable[None]] | None = None) -> tuple[Any, UrlState]:
    """The result of the first attempt that succeeds, and its URL, still counted in
    flight: the caller releases it (`pool.release`) once it is done with the reply (a
    stream holds it until it ends). Each attempt is appended to `attempts`. Raises
    AttemptsFailed when none succeeds.

    An attempt is `attempt(url)` (for a generation: up to its first content), then
    `finish(result)` when given (the rest of the reply; a failure there is the
    attempt's). With `hedge_after`, an attempt that has not returned that many seconds
    after it began is raced by one on another URL, if one is available and attempts are
    left: the first to return wins and the other is cancelled (a result it returned
    meanwhile goes to `discard`). So a failover costs no more than `hedge_after` plus
    the other URL's own time, never a whole timeout plus the switch."""
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
        race = _Race(service, pool, attempt, attempts, discard)
        tries += 1
        race.start(url)
        try:
            hedge_at = None if hedge_after is None else race.tries[0].started + hedge_after
            while race.tries:
                if hedge_at is not None and (tries >= policy.max_attempts or time.monotonic() >= deadline.at):
                    hedge_at = None
                if not await race.wait(hedge_at):
                    hedge_at = None
                    other = pool.choose(time.monotonic(), avoid=url)
                    if other is not None and other is not url:
                        tries += 1
                        race.start(other)
                    continue
                ended = race.ended()
                if ended.failure is None:
                    break
                failure, last = ended.failure, ended.url
                if not failure.retryable:  # the other try is cancelled below
                    raise _give_up(service, failure, attempts, deadline=deadline) from None
            else:
                if tries >= policy.max_attempts or time.monotonic() >= deadline.at:
                    raise _give_up(service, failure, attempts, deadline=deadline) from None
                continue
            await race.supersede(ended)
        except BaseException:  # given up, or cancelled (the client left): the tries still out are cancelled, not failed,
            await race.cancel()  # and a probe they held is free again
            raise
        won, result = ended.url, ended.result
        if finish is not None:
            try:
                result = await finish(result)
            except AttemptFailed as exc:
                failure, last = race.failed(ended, exc), won
                if not exc.retryable or tries >= policy.max_attempts or time.monotonic() >= deadline.at:
                    raise _give_up(service, failure, attempts, deadline=deadline) from None
                continue
            except BaseException:
                race.abandoned(ended)
                raise
        won.served += 1
        won.breaker.succeeded()
        attempts.append(Attempt(service, won.url, None, (time.monotonic() - ended.started) * 1000))
        return result, won


@dataclass
class _Try:
    url: UrlState
    started: float
    task: asyncio.Task
    failure: AttemptFailed | None = None
    result: Any = None


class _Race:
    """The attempts in flight for one turn of the loop: one, or two once hedged."""

    def __init__(self, service: str, pool: UrlPool, attempt: Callable[[UrlState], Awaitable[Any]],
                 attempts: list[Attempt], discard: Callable[[Any], Awaitable[None]] | None):
        self.service, self.pool, self.attempt, self.attempts, self.discard = service, pool, attempt, attempts, discard
        self.tries: list[_Try] = []
        self._done: list[_Try] = []
        self._winner: _Try | None = None

    def start(self, url: UrlState) -> None:
        started = time.monotonic()
        self.pool.take(url, started)
        self.tries.append(_Try(url, started, asyncio.ensure_future(self.attempt(url))))

    async def wait(self, until: float | None) -> bool:
        """Wait for a try to end (True), or until *until* (False)."""
        if not self._done:
            timeout = None if until is None else max(0.0, until - time.monotonic())
            done, _ = await asyncio.wait([t.task for t in self.tries], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
            self._done = [t for t in self.tries if t.task.done()]  # in the order they started
        return True

    def ended(self) -> _Try:
        """The next try that ended, out of the race: its result, or its failure accounted."""
        t = self._done.pop(0)
        self.tries.remove(t)
        try:
            t.result = t.task.result()
        except AttemptFailed as exc:
            t.failure = self.failed(t, exc)
        except BaseException:
            self.abandoned(t)
            raise
        return t

    def failed(self, t: _Try, exc: AttemptFailed) -> AttemptFailed:
        self.pool.release(t.url)
        now = time.monotonic()
        t.url.failed += 1
        t.url.record_error(exc.error.message)
        if exc.retryable:
            t.url.breaker.failed(now, retry_after=exc.retry_after)
        else:
            t.url.breaker.succeeded()  # it answered, sanely: the request was the problem
        self.attempts.append(Attempt(self.service, t.url.url, exc.error.message, (now - t.started) * 1000))
        return exc

    def abandoned(self, t: _Try) -> None:
        self.pool.release(t.url)
        t.url.breaker.probing = False

    async def supersede(self, winner: _Try) -> None:
        """The other try lost: an earlier one (past the hedge point with nothing) counts as
        failed, a hedge that was not needed is only cancelled."""
        self._winner = winner  # until the others are settled: a cancel meanwhile closes it too
        for t in list(self.tries):
            t.task.cancel()
            outcome = (await asyncio.gather(t.task, return_exceptions=True))[0]
            if not isinstance(outcome, BaseException) and self.discard is not None:
                await self.discard(outcome)
            self.tries.remove(t)
            if t.started < winner.started:
                ms = (time.monotonic() - t.started) * 1000
                self.failed(t, AttemptFailed(Timeout("upstream_timeout", (
                    f"{self.service} ({t.url.url}) did not answer in time: no first token after {ms:.0f} ms, "
                    f"when {winner.url.url}, asked shortly before the first-token timeout, answered")), retryable=True))
            else:
                self.abandoned(t)
                self.attempts.append(Attempt(self.service, t.url.url, f"cancelled: {winner.url.url}, asked first, answered "
                                             "(this URL was asked too, shortly before its first-token timeout)",
                                             (time.monotonic() - t.started) * 1000))
        self._winner = None

    async def cancel(self) -> None:
        for t in self.tries:
            t.task.cancel()
        outcomes = await asyncio.gather(*(t.task for t in self.tries), return_exceptions=True)
        for t, outcome in zip(self.tries, outcomes):
            if not isinstance(outcome, BaseException) and self.discard is not None:
                await self.discard(outcome)
            self.abandoned(t)
        self.tries, self._done = [], []
        if self._winner is not None:
            winner, self._winner = self._winner, None
            if self.discard is not None:
                await self.discard(winner.result)
            self.abandoned(winner)


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
