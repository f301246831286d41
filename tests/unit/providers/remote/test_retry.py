"""msting.providers.remote.retry: the one retry loop, driven by a scripted attempt
function over a real URL pool, with a seeded random.Random for the jitter.

Every sleep of the loop is recorded (and really slept: the circuits read the clock), so
the tests see each backoff and each wait for a cooling URL. The durations are small; the
only time assertions are lower bounds the loop guarantees (a retry never before a
Retry-After has passed)."""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest

from msting.api.errors import InvalidRequest, Timeout, Unavailable, UpstreamError
from msting.providers.remote import retry
from msting.providers.remote.breaker import Circuit
from msting.providers.remote.pool import UrlPool, UrlState
from msting.providers.remote.retry import AttemptsFailed, RetryPolicy, attempt_loop
from msting.providers.remote.upstream import AttemptFailed, Deadline

SERVICE = "lan"
A, B = "http://a:1", "http://b:2"
SEED = 7
POLICY = RetryPolicy(max_attempts=3, backoff_initial_sec=0.01, backoff_max_sec=0.04, max_wait_sec=1.0)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loop's sleeps, in order (each still slept)."""
    calls: list[float] = []
    real = asyncio.sleep

    async def sleep(seconds: float) -> None:
        calls.append(seconds)
        await real(seconds)

    monkeypatch.setattr(retry, "asyncio", SimpleNamespace(**{**vars(asyncio), "sleep": sleep}))
    return calls


def make_pool(*urls: str, failures: int = 100, cooldown: float = 0.2) -> UrlPool:
    return UrlPool(urls or (A,), failures=failures, window_sec=30.0, cooldown_sec=cooldown)


def refused(n: int) -> AttemptFailed:
    return AttemptFailed(Unavailable("upstream_unreachable", f"refused #{n}"), retryable=True)


def rate_limited(n: int, retry_after: float) -> AttemptFailed:
    return AttemptFailed(Unavailable("upstream_rate_limited", f"429 #{n}", retry_after=max(1, round(retry_after))),
                         retryable=True, retry_after=retry_after)


class Script:
    """The attempt function: each call takes the next outcome (the last one repeats): an
    AttemptFailed or another exception is raised, a coroutine function is awaited with
    the URL, anything else is returned. It records each call's URL, start time and the
    URL's in-flight count during the call."""

    def __init__(self, *outcomes: Any):
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, float, int]] = []

    async def __call__(self, url: UrlState) -> Any:
        self.calls.append((url.url, time.monotonic(), url.in_flight))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return await outcome(url)
        return outcome

    @property
    def urls(self) -> list[str]:
        return [u for u, _, _ in self.calls]


def run(pool: UrlPool, script: Script, *, policy: RetryPolicy = POLICY, deadline_sec: float = 5.0,
        seed: int = SEED) -> tuple[Any, list]:
    """(the loop's result, or the AttemptsFailed it raised; the attempts it recorded)."""
    attempts: list = []

    async def main() -> Any:
        return await attempt_loop(SERVICE, pool, policy, Deadline.after(deadline_sec), script, attempts, random.Random(seed))

    try:
        return asyncio.run(main()), attempts
    except AttemptsFailed as exc:
        return exc, attempts


def said(attempts: list) -> list[tuple[str, str | None]]:
    return [(a.url, a.error) for a in attempts]


# ---- success, retries, giving up --------------------------------------------------------


def test_the_first_success_is_returned_with_its_url_still_in_flight(sleeps: list[float]) -> None:
    pool = make_pool(A, B)
    script = Script("reply")
    (result, url), attempts = run(pool, script)
    assert (result, url.url) == ("reply", A)
    assert url.in_flight == 1  # held: the caller releases it once done with the reply
    assert url.served == 1 and url.failed == 0
    [attempt] = attempts
    assert (attempt.service, attempt.url, attempt.error) == (SERVICE, A, None) and attempt.ms >= 0
    assert sleeps == []


def test_retries_up_to_max_attempts_then_fails_with_the_last_error(sleeps: list[float]) -> None:
    pool = make_pool(A)
    errors = [refused(1), refused(2), refused(3)]
    script = Script(*errors, "never reached")
    exc, attempts = run(pool, script)
    assert isinstance(exc, AttemptsFailed)
    assert exc.error is errors[2].error and exc.retryable
    assert exc.attempts is attempts
    assert said(attempts) == [(A, "refused #1"), (A, "refused #2"), (A, "refused #3")]
    assert len(script.calls) == POLICY.max_attempts
    a = pool.urls[0]
    assert (a.in_flight, a.failed, a.served, a.last_error) == (0, 3, 0, "refused #3")


def test_a_non_retryable_failure_ends_the_loop_at_once(sleeps: list[float]) -> None:
    pool = make_pool(A, B, failures=3)
    a = pool.urls[0]
    a.breaker.failed(time.monotonic())
    a.breaker.failed(time.monotonic())
    bad = InvalidRequest("upstream_rejected", "lan answered HTTP 400: bad temperature")
    script = Script(AttemptFailed(bad, retryable=False), "never reached")
    exc, attempts = run(pool, script)
    assert isinstance(exc, AttemptsFailed) and exc.error is bad and not exc.retryable
    assert script.urls == [A] and said(attempts) == [(A, "lan answered HTTP 400: bad temperature")]
    assert sleeps == []
    # it answered, sanely: its circuit forgets the failures before (one more does not open it)
    a.breaker.failed(time.monotonic())
    assert a.breaker.state is Circuit.CLOSED and a.in_flight == 0


def test_a_failure_is_retried_on_another_url_at_once(sleeps: list[float]) -> None:
    pool = make_pool(A, B)
    script = Script(refused(1), "reply")
    (result, url), attempts = run(pool, script)
    assert (result, url.url) == ("reply", B)
    assert said(attempts) == [(A, "refused #1"), (B, None)]
    assert sleeps == []  # no backoff before another URL


def test_with_two_urls_the_attempts_alternate_without_backoff(sleeps: list[float]) -> None:
    script = Script(refused(1), refused(2), refused(3))
    exc, attempts = run(make_pool(A, B), script)
    assert isinstance(exc, AttemptsFailed)
    assert script.urls == [A, B, A]
    assert sleeps == []


def test_a_single_url_is_retried_after_a_backoff_with_full_jitter_within_its_ceiling(sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=4, backoff_initial_sec=0.01, backoff_max_sec=0.025, max_wait_sec=1.0)
    script = Script(refused(1), refused(2), refused(3), "reply")
    (result, url), attempts = run(make_pool(A), script, policy=policy)
    assert result == "reply" and script.urls == [A] * 4
    rng = random.Random(SEED)
    expected = [policy.backoff(n, rng) for n in (1, 2, 3)]
    assert sleeps == expected  # the seeded generator's draws, in order
    ceilings = [0.01, 0.02, 0.025]  # initial x 2**(n-1), capped at backoff_max_sec
    assert all(0 <= s <= c for s, c in zip(sleeps, ceilings)), (sleeps, ceilings)
    assert sleeps != ceilings  # jittered, not the ceilings themselves
    starts = [t for _, t, _ in script.calls]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= s for g, s in zip(gaps, sleeps)), (gaps, sleeps)
    assert said(attempts) == [(A, "refused #1"), (A, "refused #2"), (A, "refused #3"), (A, None)]


def test_the_backoff_ceiling_doubles_up_to_its_maximum() -> None:
    top = SimpleNamespace(uniform=lambda lo, hi: hi)  # a generator that always draws the ceiling
    bottom = SimpleNamespace(uniform=lambda lo, hi: lo)
    policy = RetryPolicy(max_attempts=9, backoff_initial_sec=0.2, backoff_max_sec=5.0, max_wait_sec=1.0)
    assert [policy.backoff(n, top) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert [policy.backoff(n, bottom) for n in range(1, 4)] == [0, 0, 0]


def test_the_same_seed_gives_the_same_pauses_and_another_seed_others(sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_initial_sec=0.01, backoff_max_sec=0.01, max_wait_sec=1.0)
    run(make_pool(A), Script(refused(1), refused(2), "reply"), policy=policy, seed=1)
    first = list(sleeps)
    sleeps.clear()
    run(make_pool(A), Script(refused(1), refused(2), "reply"), policy=policy, seed=1)
    assert sleeps == first
    sleeps.clear()
    run(make_pool(A), Script(refused(1), refused(2), "reply"), policy=policy, seed=2)
    assert sleeps != first


# ---- waiting for a cooling URL ----------------------------------------------------------


def test_a_url_that_asked_to_wait_is_retried_after_its_retry_after(sleeps: list[float]) -> None:
    pool = make_pool(A)
    script = Script(rate_limited(1, 0.2), "reply")
    (result, url), attempts = run(pool, script)
    assert result == "reply" and script.urls == [A, A]
    gap = script.calls[1][1] - script.calls[0][1]
    assert gap >= 0.2, f"retried {gap:.3f} s after a Retry-After of 0.2 s"
    assert 0 < sleeps[0] <= 0.2 + 0.001  # the wait for the circuit's end...
    assert sleeps[1:] == [POLICY.backoff(1, random.Random(SEED))]  # ...then the backoff of a retry on the same URL
    assert said(attempts) == [(A, "429 #1"), (A, None)]
    assert url.breaker.state is Circuit.CLOSED  # the probe answered


def test_a_url_that_asked_to_wait_is_passed_over_for_another_at_once(sleeps: list[float]) -> None:
    script = Script(rate_limited(1, 5.0), "reply")
    (result, url), _ = run(make_pool(A, B), script)
    assert url.url == B and script.urls == [A, B] and sleeps == []


def test_a_url_cooling_down_after_failed_requests_is_waited_for(sleeps: list[float]) -> None:
    pool = make_pool(A, failures=1, cooldown=0.1)
    pool.urls[0].breaker.failed(time.monotonic())
    started = time.monotonic()
    script = Script("reply")
    (result, _), _ = run(pool, script)
    assert result == "reply"
    assert script.calls[0][1] - started >= 0.1 - 0.002  # not before its cooldown ended (a monotonic clock)
    assert len(sleeps) == 1


def test_a_down_url_is_not_waited_for(sleeps: list[float]) -> None:
    pool = make_pool(A)
    pool.urls[0].breaker.failed(time.monotonic(), health=True)
    script = Script("never reached")
    exc, attempts = run(pool, script)
    assert isinstance(exc, AttemptsFailed) and exc.retryable
    assert isinstance(exc.error, Unavailable) and exc.error.code == "upstream_unavailable"
    assert exc.error.retry_after == 1
    assert exc.error.message == f"every URL of {SERVICE} is down (its health check failed): {A} not tried (down): health check failed"
    assert said(attempts) == [(A, "not tried (down): health check failed")]  # which URL, and why
    assert script.calls == [] and sleeps == []


def test_a_url_found_down_during_a_request_is_not_waited_for(sleeps: list[float]) -> None:
    pool = make_pool(A)

    async def dies(url: UrlState) -> None:
        url.breaker.failed(time.monotonic(), health=True)  # the health monitor's check, meanwhile
        raise refused(1)

    script = Script(dies)
    exc, attempts = run(pool, script)
    assert isinstance(exc, AttemptsFailed) and isinstance(exc.error, Unavailable)
    assert "the last error: refused #1" in exc.error.message
    assert script.urls == [A] and sleeps == []


def test_a_url_open_after_failed_requests_whose_health_check_failed_is_not_waited_for(sleeps: list[float]) -> None:
    pool = make_pool(A, failures=1, cooldown=0.3)
    a = pool.urls[0]
    a.breaker.failed(time.monotonic())  # cooling down: worth waiting for...
    a.breaker.failed(time.monotonic(), health=True)  # ...until its health check says it is dead
    script = Script("never reached")
    exc, _ = run(pool, script)
    assert isinstance(exc, AttemptsFailed) and isinstance(exc.error, Unavailable)
    assert script.calls == [] and sleeps == []


def test_a_cooling_url_is_not_waited_for_longer_than_max_wait_sec(sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_initial_sec=0.01, backoff_max_sec=0.04, max_wait_sec=0.5)
    script = Script(rate_limited(1, 5.0), "never reached")
    exc, attempts = run(make_pool(A), script, policy=policy)
    assert isinstance(exc, AttemptsFailed) and exc.retryable
    error = exc.error
    assert isinstance(error, Unavailable) and error.code == "upstream_unavailable"
    assert error.retry_after == 5  # when the URL takes requests again
    assert error.message.endswith("; the last error: 429 #1")
    assert script.urls == [A] and said(attempts) == [(A, "429 #1")] and sleeps == []


def test_a_cooling_url_is_not_waited_for_past_the_deadline(sleeps: list[float]) -> None:
    script = Script(rate_limited(1, 0.5), "never reached")
    exc, _ = run(make_pool(A), script, deadline_sec=0.3)
    assert isinstance(exc, AttemptsFailed) and isinstance(exc.error, Unavailable)
    assert script.urls == [A] and sleeps == []


def test_no_backoff_is_slept_past_the_deadline(sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=5, backoff_initial_sec=10.0, backoff_max_sec=10.0, max_wait_sec=1.0)
    assert policy.backoff(1, random.Random(SEED)) > 0.5  # the pause the loop would draw
    timeout = AttemptFailed(Timeout("upstream_timeout", "lan (a) did not answer in time"), retryable=True)
    script = Script(timeout, "never reached")
    exc, attempts = run(make_pool(A), script, policy=policy, deadline_sec=0.5)
    assert isinstance(exc, AttemptsFailed) and exc.error is timeout.error  # the failure itself, not a "cooling" one
    assert script.urls == [A] and sleeps == []


def test_an_attempt_that_ends_past_the_deadline_is_the_last(sleeps: list[float]) -> None:
    async def slow(url: UrlState) -> None:
        await asyncio.sleep(0.15)
        raise refused(1)

    script = Script(slow)
    exc, attempts = run(make_pool(A, B), script, deadline_sec=0.1)
    assert isinstance(exc, AttemptsFailed) and exc.error.message == "refused #1"
    assert script.urls == [A]


# ---- in flight --------------------------------------------------------------------------


def test_the_url_is_in_flight_during_each_attempt_released_after_a_failure_and_held_after_success(sleeps: list[float]) -> None:
    pool = make_pool(A, B)
    script = Script(refused(1), "reply")
    (result, url), _ = run(pool, script)
    assert [n for _, _, n in script.calls] == [1, 1]
    a, b = pool.urls
    assert (a.in_flight, b.in_flight) == (0, 1) and url is b
    pool.release(url)
    assert b.in_flight == 0


def test_an_exception_that_is_no_attempt_failure_releases_the_url_and_propagates() -> None:
    pool = make_pool(A)
    with pytest.raises(RuntimeError, match="a bug"):
        run(pool, Script(RuntimeError("a bug")))
    assert pool.urls[0].in_flight == 0


def test_a_cancelled_attempt_releases_its_url() -> None:
    pool = make_pool(A)

    async def hangs(url: UrlState) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        loop = attempt_loop(SERVICE, pool, POLICY, Deadline.after(5), Script(hangs), [], random.Random(SEED))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop, 0.05)

    asyncio.run(main())
    assert pool.urls[0].in_flight == 0


# ---- another request's probe ------------------------------------------------------------


def _after_cooldown(pool: UrlPool) -> None:
    """Open the one URL's circuit by a failure and let its cooldown pass: the next request probes."""
    pool.urls[0].breaker.failed(time.monotonic())
    time.sleep(pool.urls[0].breaker.cooldown + 0.005)


@pytest.mark.parametrize("probe", ["answers", "hangs"])
def test_a_request_that_finds_another_requests_probe_out_neither_spins_nor_outwaits_max_wait_sec(
        sleeps: list[float], probe: str) -> None:
    """While the one probe of a half-open circuit is out, another request waits for its
    outcome: it goes on once the probe has closed the circuit, and gives up after
    max_wait_sec (not when the probe ends) if it has not; it looks again now and then,
    not in a tight loop."""
    policy = RetryPolicy(max_attempts=3, backoff_initial_sec=0.001, backoff_max_sec=0.001, max_wait_sec=0.3)
    pool = make_pool(A, failures=1, cooldown=0.05)
    _after_cooldown(pool)
    a = pool.urls[0]

    async def main() -> tuple[Any, Any, bool]:
        release = asyncio.Event()

        async def probing(url: UrlState) -> str:
            await asyncio.wait_for(release.wait(), 5)
            return "probe"

        first = asyncio.ensure_future(attempt_loop(SERVICE, pool, policy, Deadline.after(10), Script(probing), [],
                                                   random.Random(SEED)))
        await asyncio.sleep(0.01)
        assert a.breaker.state is Circuit.HALF_OPEN and a.breaker.probing
        if probe == "answers":
            asyncio.get_running_loop().call_later(0.1, release.set)
        second = asyncio.ensure_future(attempt_loop(SERVICE, pool, policy, Deadline.after(10), Script("second"), [],
                                                    random.Random(SEED)))
        try:
            outcome: Any = await asyncio.wait_for(second, 3)
        except AttemptsFailed as exc:
            outcome = exc
        probe_over = first.done()
        release.set()
        await first
        return outcome, first.result(), probe_over

    outcome, (probe_result, _), probe_over = asyncio.run(main())
    assert probe_result == "probe"
    assert len(sleeps) <= 40, f"{len(sleeps)} sleeps while waiting for a probe: a busy loop"
    if probe == "answers":
        result, url = outcome
        assert result == "second" and url is a
    else:
        assert isinstance(outcome, AttemptsFailed) and isinstance(outcome.error, Unavailable)
        assert not probe_over  # it gave up while the probe was still out
        assert said(outcome.attempts) == [(A, "not tried (probing): requests failed")]


def test_a_cancelled_probe_frees_its_half_open_circuit_for_the_next_request() -> None:
    pool = make_pool(A)
    url = pool.urls[0]
    url.breaker.failed(0.0, retry_after=0.01)  # open; half-open once the Retry-After has passed
    time.sleep(0.02)

    async def hangs(u: UrlState) -> str:
        await asyncio.sleep(10)
        return "never"

    async def main() -> None:
        task = asyncio.ensure_future(attempt_loop(SERVICE, pool, POLICY, Deadline.after(5), hangs, [], random.Random(SEED)))
        await asyncio.sleep(0.05)
        assert url.breaker.state is Circuit.HALF_OPEN and url.breaker.probing  # the probe is out
        task.cancel()  # its client left
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert url.in_flight == 0 and not url.breaker.probing
    assert pool.choose(time.monotonic()) is url  # the next request may probe it


# ---- hedging: a slow attempt raced on another URL ---------------------------------------

HEDGE = 0.05  # seconds: the tests' hedge point


def race(pool: UrlPool, script: Any, *, policy: RetryPolicy = POLICY, hedge_after: float | None = HEDGE,
         finish: Any = None, discarded: list | None = None) -> tuple[Any, list]:
    attempts: list = []

    async def discard(result: Any) -> None:
        if discarded is not None:
            discarded.append(result)

    async def main() -> Any:
        return await attempt_loop(SERVICE, pool, policy, Deadline.after(5), script, attempts, random.Random(SEED),
                                  hedge_after=hedge_after, finish=finish, discard=discard)

    try:
        return asyncio.run(main()), attempts
    except AttemptsFailed as exc:
        return exc, attempts


def answers_after(seconds: float, value: str) -> Any:
    async def attempt(url: UrlState) -> str:
        await asyncio.sleep(seconds)
        return value
    return attempt


def test_an_attempt_with_nothing_by_the_hedge_point_is_raced_on_the_other_url_which_wins() -> None:
    pool = make_pool(A, B)
    script = Script(answers_after(10, "a"), "b")
    (result, url), attempts = race(pool, script)
    assert (result, url.url) == ("b", B)
    assert script.urls == [A, B]
    assert script.calls[1][1] - script.calls[0][1] >= HEDGE  # not before the hedge point
    assert [a.url for a in attempts] == [A, B] and attempts[1].error is None
    assert attempts[0].error.startswith(f"{SERVICE} ({A}) did not answer in time: no first token after")
    a, b = pool.urls
    assert (a.in_flight, b.in_flight) == (0, 1)  # the loser released, the winner held for its caller
    assert a.failed == 1 and b.served == 1


def test_the_first_attempt_answering_after_the_hedge_started_wins_and_the_hedge_is_only_cancelled() -> None:
    pool = make_pool(A, B, failures=1)
    script = Script(answers_after(HEDGE * 2, "a"), answers_after(10, "b"))
    (result, url), attempts = race(pool, script)
    assert (result, url.url) == ("a", A)
    assert script.urls == [A, B]
    assert [(x.url, x.error is None) for x in attempts] == [(B, False), (A, True)]
    assert attempts[0].error.startswith(f"cancelled: {A}, asked first, answered")
    a, b = pool.urls
    assert (a.in_flight, b.in_flight) == (1, 0)
    assert b.failed == 0 and b.breaker.state is Circuit.CLOSED  # not needed is not failed


def test_a_result_the_loser_returned_meanwhile_is_discarded() -> None:
    """A and the hedge on B end at about the same moment, in either order: every result
    an attempt returned is the one the loop returns or was handed to discard (an opened
    upstream stream is never left open)."""
    for _ in range(5):
        pool = make_pool(A, B)
        discarded: list = []
        returned: list = []

        async def both_end_together(url: UrlState) -> str:
            await asyncio.sleep(HEDGE * 1.5 if url.url == A else HEDGE * 0.5)
            returned.append(url.url)
            return url.url

        (result, url), attempts = race(pool, both_end_together, discarded=discarded)
        assert result == url.url
        assert sorted(returned) == sorted([result] + discarded)
        assert sum(u.in_flight for u in pool.urls) == 1


def test_no_hedge_without_another_url_or_without_attempts_left() -> None:
    for pool, policy in ((make_pool(A), POLICY), (make_pool(A, B), RetryPolicy(1, 0.01, 0.04, 1.0))):
        script = Script(answers_after(HEDGE * 3, "a"), "other")
        (result, url), _ = race(pool, script, policy=policy)
        assert (result, url.url) == ("a", A) and script.urls == [A]


def test_a_hedge_that_fails_leaves_the_first_attempt_running() -> None:
    pool = make_pool(A, B)
    script = Script(answers_after(HEDGE * 3, "a"), refused(1))
    (result, url), attempts = race(pool, script)
    assert (result, url.url) == ("a", A)
    assert [(x.url, x.error) for x in attempts] == [(B, "refused #1"), (A, None)]
    assert [u.in_flight for u in pool.urls] == [1, 0]


def test_when_both_fail_the_loop_goes_on_with_its_attempts_counted() -> None:
    pool = make_pool(A, B)

    async def slow_refusal(url: UrlState) -> str:
        await asyncio.sleep(HEDGE * 2)
        raise refused(0)

    script = Script(slow_refusal, refused(1), "third")
    (result, url), attempts = race(pool, script)
    assert result == "third"
    assert [x.error for x in attempts] == ["refused #1", "refused #0", None]  # in the order they ended
    exc, attempts = race(make_pool(A, B), Script(slow_refusal, refused(1), "never"),
                         policy=RetryPolicy(2, 0.01, 0.04, 1.0))
    assert isinstance(exc, AttemptsFailed) and len(attempts) == 2  # the hedge was the second of two attempts


def test_a_failure_in_finish_is_the_attempts_and_is_retried() -> None:
    pool = make_pool(A, B)
    finished: list = []

    async def finish(opened: str) -> str:
        finished.append(opened)
        if len(finished) == 1:
            raise refused(9)
        return opened + " whole"

    (result, url), attempts = race(pool, Script("a", "b"), finish=finish)
    assert result == "b whole" and url.url == B
    assert [(x.url, x.error) for x in attempts] == [(A, "refused #9"), (B, None)]
    assert [u.in_flight for u in pool.urls] == [0, 1]


def test_a_non_retryable_failure_during_a_race_ends_it_and_cancels_the_other() -> None:
    pool = make_pool(A, B)
    bad = AttemptFailed(InvalidRequest("bad", "the request is wrong"), retryable=False)
    script = Script(answers_after(10, "a"), bad)
    exc, attempts = race(pool, script)
    assert isinstance(exc, AttemptsFailed) and exc.error.message == "the request is wrong"
    assert [u.in_flight for u in pool.urls] == [0, 0]


def test_a_cancelled_race_releases_both_urls() -> None:
    pool = make_pool(A, B)

    async def main() -> None:
        loop = attempt_loop(SERVICE, pool, POLICY, Deadline.after(5), Script(answers_after(10, "x")), [],
                            random.Random(SEED), hedge_after=HEDGE)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop, HEDGE * 3)

    asyncio.run(main())
    assert [u.in_flight for u in pool.urls] == [0, 0]
    assert not any(u.breaker.probing for u in pool.urls)


def test_a_request_cancelled_while_the_loser_winds_down_closes_the_winner_too() -> None:
    """The client leaves while the losing attempt is still being cancelled: the winner's
    opened result is discarded and both URLs are free, nothing is left open or counted."""
    pool = make_pool(A, B)
    discarded: list = []

    async def attempt(url: UrlState) -> str:
        if url.url == B:
            return "b"
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # slow to wind down (a connection being closed)
            raise
        return "a"

    async def discard(result: Any) -> None:
        discarded.append(result)

    async def main() -> None:
        loop = attempt_loop(SERVICE, pool, POLICY, Deadline.after(5), attempt, [], random.Random(SEED),
                            hedge_after=HEDGE, discard=discard)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop, HEDGE + 0.1)  # during the loser's wind-down

    asyncio.run(main())
    assert discarded == ["b"]
    assert [u.in_flight for u in pool.urls] == [0, 0]
