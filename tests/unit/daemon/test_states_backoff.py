"""The worker state machine and the restart policy, with an injected clock (no sleeps)."""

import random

import pytest

from msting.config.schema import RestartPolicy
from msting.daemon.local.backoff import RestartTracker
from msting.daemon.local.states import IllegalTransition, WorkerState as S, transition


def test_happy_path_is_legal():
    state = S.STOPPED
    for target in (S.STARTING, S.LOADING, S.VERIFYING, S.READY, S.BUSY, S.READY, S.DRAINING, S.STOPPED):
        state = transition(state, target)
    assert state is S.STOPPED


@pytest.mark.parametrize("current", [S.STARTING, S.LOADING, S.VERIFYING, S.READY, S.BUSY, S.DRAINING])
def test_any_live_state_can_crash(current):
    assert transition(current, S.BACKOFF) is S.BACKOFF
    assert transition(current, S.FATAL) is S.FATAL


@pytest.mark.parametrize("current,target", [
    (S.STOPPED, S.READY),  # readiness only ever comes from a ready message after a load
    (S.STARTING, S.READY),
    (S.LOADING, S.READY),  # a loaded worker takes traffic only after its verification generate
    (S.VERIFYING, S.BUSY),
    (S.STOPPED, S.BUSY),
    (S.BACKOFF, S.READY),
    (S.READY, S.STOPPED),  # stopping a serving worker drains it first
    (S.FATAL, S.READY),
])
def test_illegal_transitions_raise_with_a_clear_message(current, target):
    with pytest.raises(IllegalTransition) as info:
        transition(current, target)
    assert f"{current.value} -> {target.value}" in str(info.value)
    assert "allowed from" in str(info.value)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def policy(**overrides):
    values = dict(backoff_initial_sec=0.5, backoff_max_sec=60.0, backoff_multiplier=2.0, jitter=0.0,
                  stable_after_sec=30.0, max_crashes=5, crash_window_sec=120.0)
    values.update(overrides)
    return RestartPolicy(**values)


def test_backoff_doubles_and_caps():
    clock = Clock()
    tracker = RestartTracker(policy(max_crashes=100, backoff_max_sec=4.0), clock)
    delays = []
    for _ in range(6):
        clock.now += 200  # outside the crash window, so the budget is never hit
        tracker.on_ready()  # ready, but only briefly: not stable
        clock.now += 1
        delays.append(tracker.on_crash())
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_resets_only_after_the_stability_window():
    clock = Clock()
    tracker = RestartTracker(policy(), clock)
    assert tracker.on_crash() == 0.5
    tracker.on_ready()
    clock.now += 29  # not yet stable
    assert tracker.on_crash() == 1.0
    tracker.on_ready()
    clock.now += 31  # stayed ready past the window: the next crash starts over
    assert tracker.on_crash() == 0.5


def test_too_many_crashes_within_the_window_is_fatal():
    clock = Clock()
    tracker = RestartTracker(policy(max_crashes=3, crash_window_sec=60), clock)
    assert tracker.on_crash() is not None
    clock.now += 10
    assert tracker.on_crash() is not None
    clock.now += 10
    assert tracker.on_crash() is None  # third crash within 60 s


def test_crashes_outside_the_window_are_forgotten():
    clock = Clock()
    tracker = RestartTracker(policy(max_crashes=3, crash_window_sec=60), clock)
    for _ in range(10):
        assert tracker.on_crash() is not None
        clock.now += 31  # at most two crashes in any 60 s window


def test_jitter_stays_within_bounds_and_varies():
    clock = Clock()
    tracker = RestartTracker(policy(jitter=0.2, max_crashes=1000, crash_window_sec=1), clock, rng=random.Random(7))
    delays = []
    for _ in range(50):
        tracker.attempt = 0
        clock.now += 10
        delays.append(tracker.on_crash())
    assert all(0.4 <= d <= 0.6 for d in delays)
    assert len(set(delays)) > 10


def test_reset_forgets_history():
    clock = Clock()
    tracker = RestartTracker(policy(max_crashes=2), clock)
    tracker.on_crash()
    assert tracker.on_crash() is None
    tracker.reset()
    assert tracker.on_crash() == 0.5


def test_only_start_failures_count_toward_the_crash_budget():
    clock = Clock()
    tracker = RestartTracker(policy(max_crashes=3, crash_window_sec=60), clock)
    # a worker that became ready and was then killed, again and again, well within the
    # window: it proved the model works, so it is restarted every time
    for _ in range(50):
        tracker.on_ready()
        clock.now += 0.5
        assert tracker.on_crash() is not None
    assert tracker.recent_crashes == 0
    # three deaths before ready within the window: FATAL
    assert tracker.on_crash() is not None
    assert tracker.on_crash() is not None
    assert tracker.on_crash() is None


def test_kills_of_ready_workers_still_grow_the_backoff_until_stable():
    clock = Clock()
    tracker = RestartTracker(policy(backoff_max_sec=8.0), clock)
    delays = []
    for _ in range(5):
        tracker.on_ready()
        clock.now += 1  # not stable
        delays.append(tracker.on_crash())
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]
    tracker.on_ready()
    clock.now += 31  # stayed ready past the stability window: back down
    assert tracker.on_crash() == 0.5


def test_waiting_cap_comes_from_the_policy():
    tracker = RestartTracker(policy(waiting_backoff_max_sec=0.25), Clock())
    assert tracker.waiting_cap() == 0.25
