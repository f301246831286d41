"""msting.providers.remote.pool: which URL of a service takes the next request, and how
each URL's state reads in /llm/services.

Among the URLs whose circuit lets a request through, the fewest in flight wins; URLs
tied on that whose latencies are about equal take turns (two equal servers share even a
sequential load); the URL that just failed is passed over when another is available.
Driven with explicit `now` values."""

from __future__ import annotations

import time

import pytest

from msting.providers.remote.breaker import FAILURES, HEALTH, RETRY_AFTER, Circuit
from msting.providers.remote.pool import SMOOTHING, UrlPool, UrlState

A, B, C = "http://a:1", "http://b:2", "http://c:3"
COOLDOWN = 5.0


def pool(*urls: str, failures: int = 3) -> UrlPool:
    return UrlPool(urls or (A, B), failures=failures, window_sec=30.0, cooldown_sec=COOLDOWN)


def url(p: UrlPool, name: str) -> UrlState:
    return next(u for u in p.urls if u.url == name)


def sequential(p: UrlPool, n: int, now: float = 0.0) -> list[str]:
    """The URLs `n` requests one after the other get (each released before the next)."""
    chosen = []
    for _ in range(n):
        u = p.choose(now)
        assert u is not None
        p.take(u, now)
        p.release(u)
        chosen.append(u.url)
    return chosen


# ---- choice -----------------------------------------------------------------------------


def test_the_url_with_the_fewest_requests_in_flight_wins() -> None:
    p = pool(A, B, C)
    for name in (A, A, B):
        p.take(url(p, name), 0.0)
    assert p.choose(0.0).url == C
    p.take(url(p, C), 0.0)
    assert p.choose(0.0).url == B  # B and C have one each, A two: B's turn comes first (fewer picks)
    assert url(p, A).in_flight == 2


def test_a_slower_url_with_fewer_requests_in_flight_still_wins() -> None:
    p = pool()
    url(p, A).observe_latency(10.0)
    url(p, B).observe_latency(10_000.0)
    p.take(url(p, A), 0.0)
    assert p.choose(0.0).url == B


def test_two_equal_urls_share_a_sequential_load_by_taking_turns() -> None:
    p = pool()
    assert sequential(p, 6) == [A, B, A, B, A, B]
    assert [u.in_flight for u in p.urls] == [0, 0]


def test_three_equal_urls_take_turns() -> None:
    assert sequential(pool(A, B, C), 6) == [A, B, C, A, B, C]


@pytest.mark.parametrize(("a_ms", "b_ms"), [(10.0, 10.0), (10.0, 12.0), (100.0, 120.0), (0.3, 1.9)])
def test_urls_with_about_the_same_latency_take_turns(a_ms: float, b_ms: float) -> None:
    p = pool()
    url(p, A).observe_latency(a_ms)
    url(p, B).observe_latency(b_ms)
    assert sorted(sequential(p, 4)) == [A, A, B, B]


def test_a_much_faster_url_takes_the_whole_sequential_load() -> None:
    p = pool()
    url(p, A).observe_latency(10_000.0)
    url(p, B).observe_latency(10.0)
    assert sequential(p, 4) == [B, B, B, B]


def test_a_url_without_a_latency_yet_counts_as_tied() -> None:
    p = pool()
    url(p, A).observe_latency(10.0)
    assert sorted(sequential(p, 4)) == [A, A, B, B]  # B gets its share: it is how it gets measured


def test_the_url_that_just_failed_is_avoided_when_another_is_available() -> None:
    p = pool()
    a, b = url(p, A), url(p, B)
    assert p.choose(0.0) is a
    assert p.choose(0.0, avoid=a) is b
    p.take(b, 0.0)  # even with more in flight, the other URL is taken
    assert p.choose(0.0, avoid=a) is b


def test_the_url_that_just_failed_is_chosen_again_when_it_is_the_only_one_available() -> None:
    p = pool()
    a, b = url(p, A), url(p, B)
    b.breaker.failed(0.0, health=True)
    assert p.choose(0.0, avoid=a) is a
    single = pool(A)
    assert single.choose(0.0, avoid=single.urls[0]) is single.urls[0]


def test_an_open_circuit_is_passed_over_and_none_is_chosen_when_every_circuit_is_open() -> None:
    p = pool()
    a, b = url(p, A), url(p, B)
    a.breaker.failed(0.0, retry_after=10.0)
    assert p.choose(0.0) is b and p.choose(9.0) is b
    b.breaker.failed(1.0, health=True)
    assert p.choose(1.0) is None


def test_a_half_open_url_gets_one_probe_then_is_passed_over_until_it_answers() -> None:
    p = pool(A)
    a = url(p, A)
    a.breaker.failed(0.0, retry_after=2.0)
    assert p.choose(1.0) is None
    assert p.choose(2.0) is a and a.breaker.state is Circuit.HALF_OPEN
    p.take(a, 2.0)
    assert p.choose(2.1) is None  # the probe is out
    a.breaker.succeeded()
    p.release(a)
    assert p.choose(2.2) is a


def test_take_and_release_count_requests_in_flight() -> None:
    p = pool()
    a = url(p, A)
    p.take(a, 0.0)
    p.take(a, 0.0)
    assert a.in_flight == 2
    p.release(a)
    assert a.in_flight == 1


# ---- when to wait -----------------------------------------------------------------------


def test_next_ready_at_is_the_earliest_end_of_a_circuit_worth_waiting_for() -> None:
    p = pool(A, B, C)
    url(p, A).breaker.failed(0.0, retry_after=8.0)
    url(p, B).breaker.failed(1.0, retry_after=3.0)
    url(p, C).breaker.failed(0.0, health=True)  # down: not worth waiting for, though it ends sooner
    assert p.next_ready_at() == 4.0


def test_next_ready_at_counts_a_url_cooling_down_after_failed_requests() -> None:
    p = pool(A, failures=1)
    url(p, A).breaker.failed(2.0)
    assert p.next_ready_at() == 2.0 + COOLDOWN


def test_next_ready_at_is_none_when_every_url_is_down() -> None:
    p = pool()
    for u in p.urls:
        u.breaker.failed(0.0, health=True)
    assert p.next_ready_at() is None


# ---- states -----------------------------------------------------------------------------

STATE_KEYS = {"url", "state", "cooling_until", "reason", "latency_ms", "in_flight", "served", "failed", "last_error",
              "last_error_at", "last_checked"}


def test_a_fresh_url_is_up() -> None:
    p = pool(A)
    assert p.states(0.0) == [{"url": A, "state": "up", "cooling_until": None, "reason": None, "latency_ms": None,
                              "in_flight": 0, "served": 0, "failed": 0, "last_error": None, "last_error_at": None,
                              "last_checked": None}]
    assert p.up_count(0.0) == 1


def test_a_url_whose_health_check_failed_is_down_until_its_probe() -> None:
    p = pool(A)
    a = url(p, A)
    before = time.time()
    a.breaker.failed(10.0, health=True)
    [state] = p.states(11.0)
    after = time.time()
    assert state.keys() == STATE_KEYS
    assert (state["state"], state["reason"]) == ("down", HEALTH)
    # cooling_until is wall-clock time: now plus what is left of the cooldown (4 s here)
    assert before + 4.0 - 0.01 <= state["cooling_until"] <= after + 4.0 + 0.01
    assert p.up_count(11.0) == 0
    assert a.state_name(15.0) == "probing"  # the cooldown is over: the next request is its probe


@pytest.mark.parametrize(("how", "reason"), [("failures", FAILURES), ("retry_after", RETRY_AFTER)])
def test_a_url_open_after_failed_requests_or_a_retry_after_is_cooling_down(how: str, reason: str) -> None:
    p = pool(A, failures=1)
    a = url(p, A)
    if how == "failures":
        a.breaker.failed(0.0)
    else:
        a.breaker.failed(0.0, retry_after=30.0)
    [state] = p.states(1.0)
    assert (state["state"], state["reason"]) == ("cooling_down", reason)
    assert state["cooling_until"] > time.time()
    assert p.up_count(1.0) == 0


def test_a_half_open_url_is_probing_and_not_yet_counted_as_up() -> None:
    p = pool(A)
    a = url(p, A)
    a.breaker.failed(0.0, retry_after=1.0)
    assert p.choose(1.0) is a
    p.take(a, 1.0)
    [state] = p.states(1.5)
    assert (state["state"], state["cooling_until"]) == ("probing", None)
    assert state["in_flight"] == 1
    assert (p.up_count(1.5), p.probing_count(1.5)) == (0, 1)  # it has yet to prove it answers


def test_states_show_latency_counters_and_the_last_error() -> None:
    p = pool(A, B)
    a = url(p, A)
    a.observe_latency(10.0)
    a.observe_latency(20.0)
    a.served, a.failed = 5, 2
    before = time.time()
    a.record_error("cannot connect")
    a.last_checked = 123.0
    state = p.states(0.0)[0]
    assert state["latency_ms"] == round((1 - SMOOTHING) * 10.0 + SMOOTHING * 20.0, 2)
    assert (state["served"], state["failed"], state["last_error"], state["last_checked"]) == (5, 2, "cannot connect", 123.0)
    assert before <= state["last_error_at"] <= time.time()
    assert [s["url"] for s in p.states(0.0)] == [A, B]


def test_latency_is_smoothed() -> None:
    u = pool(A).urls[0]
    u.observe_latency(100.0)
    assert u.latency_ms == 100.0
    u.observe_latency(0.0)
    assert u.latency_ms == pytest.approx(100.0 * (1 - SMOOTHING))
