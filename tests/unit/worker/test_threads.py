"""The thread count a worker keeps, given the decode speeds it measured
(msting.worker.threads.choose), and the cores it may use."""

import os

import pytest

from msting.worker import threads


def test_more_threads_are_kept_when_clearly_faster():
    choice = threads.choose({1: 37.9, 2: 61.2})
    assert choice.chosen == 2 and choice.source == "measured"
    assert choice.reason.startswith("2 threads decoded 61.2 tok/s against 37.9 with 1")
    assert choice.as_metadata() == {
        "source": "measured", "chosen": 2, "measured": {"1": 37.9, "2": 61.2}, "reason": choice.reason,
    }


def test_fewer_threads_are_kept_unless_more_are_ten_percent_faster():
    choice = threads.choose({1: 100.0, 2: 109.0})
    assert choice.chosen == 1
    assert "1 thread decoded 100.0 tok/s against 109.0 with 2" in choice.reason
    assert "share the cores" in choice.reason
    assert threads.choose({1: 100.0, 2: 110.0}).chosen == 2  # 10 % is enough


def test_slower_with_more_threads_keeps_one():
    assert threads.choose({1: 6459.0, 2: 3000.0}).chosen == 1


def test_each_step_up_must_beat_the_count_kept_so_far():
    # 2 is 15 % faster than 1; 3 only 5 % faster than 2; 4 is 12 % faster than 2
    measured = {1: 100.0, 2: 115.0, 3: 120.0, 4: 129.0}
    assert threads.choose(measured).chosen == 4
    assert threads.choose({1: 100.0, 2: 115.0, 3: 120.0, 4: 125.0}).chosen == 2
    # against the count kept, not the step before: 5 % per step is 10 % at 3 threads
    assert threads.choose({1: 100.0, 2: 105.0, 3: 110.25, 4: 115.76}).chosen == 3
    assert threads.choose({1: 100.0, 2: 104.0, 3: 108.0, 4: 109.0}).chosen == 1


def test_one_core():
    choice = threads.choose({1: 50.0})
    assert choice.chosen == 1 and "1 usable core" in choice.reason


def test_nothing_measured_is_an_error():
    with pytest.raises(ValueError):
        threads.choose({})


def test_the_spec_wins():
    choice = threads.from_spec(3)
    assert choice.as_metadata() == {"source": "spec", "chosen": 3, "measured": {}, "reason": "n_threads 3 set for this model"}


def test_usable_cores_is_bounded_by_the_affinity():
    import psutil

    n = threads.usable_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    assert n <= (psutil.cpu_count(logical=False) or n)


def test_a_count_that_failed_to_measure_is_never_kept():
    assert threads.choose({1: 0.0, 2: 40.0}).chosen == 2
    assert threads.choose({1: 40.0, 2: 0.0}).chosen == 1
