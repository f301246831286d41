"""msting.providers.remote.breaker: one URL's circuit, driven step by step with explicit
`now` values (the breaker has no clock of its own).

CLOSED takes traffic; `failures` failures within `window` open it for `cooldown`; past
that, exactly one request goes through as a probe (HALF_OPEN), whose success closes it
and whose failure opens it again. A Retry-After opens it at once until then (and pushes
the end further, never nearer); a failed health check opens it as "down", and further
failed checks do not extend it."""

from __future__ import annotations

import pytest

from msting.providers.remote.breaker import FAILURES, HEALTH, RETRY_AFTER, Breaker, Circuit

THRESHOLD, WINDOW, COOLDOWN = 3, 10.0, 5.0


@pytest.fixture
def b() -> Breaker:
    return Breaker(THRESHOLD, WINDOW, COOLDOWN)


def fail_times(b: Breaker, *times: float) -> None:
    for t in times:
        b.failed(t)


# ---- closed: counting failures within the window ---------------------------------------


def test_a_new_circuit_is_closed_and_takes_traffic(b: Breaker) -> None:
    assert b.state is Circuit.CLOSED and b.reason is None
    assert b.available(0.0) and b.available(1e9)
    assert b.ready_at() == 0.0 and not b.down


def test_failures_below_the_threshold_keep_it_closed(b: Breaker) -> None:
    fail_times(b, 0.0, 1.0)
    assert b.state is Circuit.CLOSED and b.available(1.5)


def test_the_threshold_of_failures_within_the_window_opens_it_for_the_cooldown(b: Breaker) -> None:
    fail_times(b, 0.0, 1.0, 2.0)
    assert b.state is Circuit.OPEN and b.reason == FAILURES and not b.down
    assert b.open_until == 2.0 + COOLDOWN and b.ready_at() == 2.0 + COOLDOWN
    assert not b.available(2.0) and not b.available(2.0 + COOLDOWN - 0.001)


def test_failures_older_than_the_window_do_not_count(b: Breaker) -> None:
    fail_times(b, 0.0, 5.0, 10.5)  # the first is 10.5 s old at the third: out of the window
    assert b.state is Circuit.CLOSED
    b.failed(11.0)  # 5.0, 10.5, 11.0: three within ten seconds
    assert b.state is Circuit.OPEN and b.open_until == 11.0 + COOLDOWN


def test_a_failure_exactly_one_window_old_still_counts(b: Breaker) -> None:
    fail_times(b, 0.0, 5.0, WINDOW)
    assert b.state is Circuit.OPEN


def test_a_success_forgets_the_failures_before_it(b: Breaker) -> None:
    fail_times(b, 0.0, 1.0)
    b.succeeded()
    fail_times(b, 2.0, 3.0)
    assert b.state is Circuit.CLOSED
    b.failed(4.0)
    assert b.state is Circuit.OPEN


def test_a_threshold_of_one_opens_on_the_first_failure() -> None:
    b = Breaker(1, WINDOW, COOLDOWN)
    b.failed(3.0)
    assert b.state is Circuit.OPEN and b.open_until == 3.0 + COOLDOWN


# ---- cooldown, half-open, the one probe -------------------------------------------------


def opened(b: Breaker, at: float = 0.0) -> float:
    """Open `b` by failures ending at `at`; when its cooldown ends."""
    fail_times(b, at, at, at)
    assert b.state is Circuit.OPEN
    return at + COOLDOWN


def test_after_the_cooldown_it_is_half_open_and_lets_exactly_one_probe_through(b: Breaker) -> None:
    end = opened(b)
    assert not b.available(end - 0.001) and b.state is Circuit.OPEN
    assert b.available(end)
    assert b.state is Circuit.HALF_OPEN and not b.probing
    assert b.available(end + 0.1)  # nobody took it yet: still one probe to give
    b.take(end + 0.1)
    assert b.probing
    assert not b.available(end + 0.2) and not b.available(end + 100.0)  # the probe is out: nobody else
    assert b.ready_at() == 0.0


def test_a_successful_probe_closes_it(b: Breaker) -> None:
    end = opened(b)
    assert b.available(end)
    b.take(end)
    b.succeeded()
    assert b.state is Circuit.CLOSED and b.reason is None and not b.probing
    assert b.available(end) and b.available(end)
    fail_times(b, end + 1, end + 2)  # the old failures are forgotten
    assert b.state is Circuit.CLOSED


def test_a_failed_probe_opens_it_again_for_another_cooldown(b: Breaker) -> None:
    end = opened(b)
    assert b.available(end)
    b.take(end)
    b.failed(end + 0.5)  # one failure is enough in HALF_OPEN
    assert b.state is Circuit.OPEN and b.reason == FAILURES and not b.probing
    assert b.open_until == end + 0.5 + COOLDOWN
    assert not b.available(end + 0.5 + COOLDOWN - 0.001)
    assert b.available(end + 0.5 + COOLDOWN) and b.state is Circuit.HALF_OPEN


def test_taking_a_closed_circuit_marks_no_probe(b: Breaker) -> None:
    b.take(0.0)
    assert not b.probing and b.available(0.0)


# ---- Retry-After ------------------------------------------------------------------------


def test_a_retry_after_opens_it_at_once_until_then(b: Breaker) -> None:
    b.failed(1.0, retry_after=4.0)
    assert b.state is Circuit.OPEN and b.reason == RETRY_AFTER and not b.down
    assert b.open_until == 5.0
    assert not b.available(4.999)
    assert b.available(5.0) and b.state is Circuit.HALF_OPEN


def test_a_later_retry_after_pushes_the_end_further_never_nearer(b: Breaker) -> None:
    b.failed(0.0, retry_after=4.0)
    b.failed(1.0, retry_after=6.0)  # a request that was in flight comes back with a longer one
    assert b.open_until == 7.0
    b.failed(2.0, retry_after=1.0)
    assert b.open_until == 7.0
    assert not b.available(6.9) and b.available(7.0)


def test_a_retry_after_extends_a_circuit_opened_by_failures_and_names_itself(b: Breaker) -> None:
    end = opened(b, at=1.0)
    b.failed(2.0, retry_after=30.0)
    assert b.state is Circuit.OPEN and b.reason == RETRY_AFTER and b.open_until == 32.0 > end


def test_a_retry_after_shorter_than_the_cooldown_left_does_not_shorten_it(b: Breaker) -> None:
    end = opened(b, at=1.0)
    b.failed(2.0, retry_after=0.5)
    assert b.open_until == end


@pytest.mark.parametrize("retry_after", [None, 0.0, -3.0])
def test_no_retry_after_or_a_zero_one_is_an_ordinary_failure(b: Breaker, retry_after: float | None) -> None:
    b.failed(0.0, retry_after=retry_after)
    assert b.state is Circuit.CLOSED
    fail_times(b, 1.0, 2.0)
    assert b.state is Circuit.OPEN and b.reason == FAILURES


def test_a_failed_probe_with_a_retry_after_opens_it_until_then(b: Breaker) -> None:
    end = opened(b)
    assert b.available(end)
    b.take(end)
    b.failed(end, retry_after=20.0)
    assert b.state is Circuit.OPEN and b.reason == RETRY_AFTER and b.open_until == end + 20.0 and not b.probing


# ---- health checks ----------------------------------------------------------------------


def test_a_failed_health_check_opens_it_as_down(b: Breaker) -> None:
    b.failed(1.0, health=True)
    assert b.state is Circuit.OPEN and b.reason == HEALTH and b.down
    assert b.open_until == 1.0 + COOLDOWN
    assert not b.available(1.0 + COOLDOWN - 0.001)


def test_further_failed_health_checks_do_not_extend_it_so_a_probe_still_comes(b: Breaker) -> None:
    b.failed(0.0, health=True)
    b.failed(3.0, health=True)
    b.failed(4.9, health=True)
    assert b.open_until == COOLDOWN and b.down
    assert b.available(COOLDOWN) and b.state is Circuit.HALF_OPEN  # the probe of a URL that may be back
    assert not b.down


def test_a_failed_health_check_after_the_cooldown_ended_starts_another_one(b: Breaker) -> None:
    """The probe time came (nobody asked for the URL meanwhile) and it is still dead: down
    again for a whole cooldown, not probing (a dead service must not read as ready)."""
    b.failed(0.0, health=True)
    b.failed(COOLDOWN + 1.0, health=True)
    assert b.state is Circuit.OPEN and b.down and b.open_until == 2 * COOLDOWN + 1.0
    assert not b.available(2 * COOLDOWN)


@pytest.mark.parametrize("how", ["failures", "retry_after"])
def test_a_failed_health_check_after_another_kind_of_circuit_ended_makes_it_down(b: Breaker, how: str) -> None:
    if how == "failures":
        end = opened(b)
    else:
        b.failed(0.0, retry_after=2.0)
        end = 2.0
    b.failed(end + 0.5, health=True)
    assert b.down and b.open_until == end + 0.5 + COOLDOWN


def test_a_failed_health_check_of_a_half_open_circuit_opens_it_as_down(b: Breaker) -> None:
    end = opened(b)
    assert b.available(end)
    b.failed(end + 1.0, health=True)
    assert b.state is Circuit.OPEN and b.down and b.open_until == end + 1.0 + COOLDOWN


def test_a_retry_after_while_down_names_the_retry_after(b: Breaker) -> None:
    b.failed(0.0, health=True)
    b.failed(1.0, retry_after=9.0)  # a request answered, with a Retry-After: the URL is alive
    assert b.reason == RETRY_AFTER and not b.down and b.open_until == 10.0


def test_a_failed_health_check_does_not_extend_a_retry_after(b: Breaker) -> None:
    b.failed(0.0, retry_after=2.0)
    b.failed(1.0, health=True)
    assert b.reason == RETRY_AFTER and b.open_until == 2.0 and not b.down


def test_a_circuit_opened_by_failed_requests_whose_health_check_fails_is_down(b: Breaker) -> None:
    """The URL is known dead now: a request does not wait for it (the retry loop waits only
    for URLs that are not down), but its cooldown is not extended either."""
    end = opened(b, at=1.0)
    b.failed(2.0, health=True)
    assert b.state is Circuit.OPEN and b.down and b.reason == HEALTH
    assert b.open_until == end


def test_a_health_check_that_answers_closes_a_circuit_it_opened_at_once(b: Breaker) -> None:
    b.failed(0.0, health=True)
    b.health_ok(0.5)  # long before the cooldown's end
    assert b.state is Circuit.CLOSED and b.reason is None and b.available(0.5)


def test_a_health_check_that_answers_does_not_close_a_circuit_failed_requests_opened_before_its_cooldown(b: Breaker) -> None:
    end = opened(b)
    b.health_ok(end - 0.1)
    assert b.state is Circuit.OPEN and b.reason == FAILURES
    b.health_ok(end)
    assert b.state is Circuit.CLOSED and b.reason is None


def test_a_health_check_that_answers_does_not_cut_a_retry_after_short(b: Breaker) -> None:
    b.failed(0.0, retry_after=10.0)
    b.health_ok(5.0)
    assert b.state is Circuit.OPEN and b.reason == RETRY_AFTER
    b.health_ok(10.0)
    assert b.state is Circuit.CLOSED


def test_a_health_check_that_answers_closes_a_half_open_circuit(b: Breaker) -> None:
    end = opened(b)
    assert b.available(end)
    b.take(end)
    b.health_ok(end + 0.1)
    assert b.state is Circuit.CLOSED and not b.probing


def test_a_health_check_that_answers_leaves_a_closed_circuit_and_its_failures_alone(b: Breaker) -> None:
    fail_times(b, 0.0, 1.0)
    b.health_ok(1.5)
    b.failed(2.0)
    assert b.state is Circuit.OPEN  # the two failures before the check still counted


def test_a_dead_url_past_its_cooldown_is_down_again_at_its_next_failed_check() -> None:
    b = Breaker(3, 30.0, 10.0)
    b.failed(0.0, health=True)
    assert b.down and b.open_until == 10.0
    b.failed(5.0, health=True)  # within the cooldown: its end stays
    assert b.open_until == 10.0
    b.failed(12.0, health=True)  # the probe time came and it still fails its check
    assert b.state is Circuit.OPEN and b.down and b.open_until == 22.0
