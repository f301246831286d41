"""msting llm status's text for a model's workers: slots busy / total, the threads
choice and the cached prompt tokens (the JSON is the daemon's /v1/status, as is)."""

from __future__ import annotations

from msting.cli.status import fmt_switch, fmt_threads, fmt_worker, model_details

MEASURED = {"source": "measured", "chosen": 2, "measured": {"1": 37.9, "2": 61.2},
            "reason": "2 threads decoded 61.2 tok/s against 37.9 with 1"}


def test_a_serving_worker_shows_its_slots_busy_of_total() -> None:
    assert fmt_worker({"pid": 42, "state": "BUSY", "slots": 4, "slots_busy": 3}) == "42 BUSY 3/4"
    # not serving (loading, backing off) or from an older daemon: no slots to show
    assert fmt_worker({"pid": None, "state": "BACKOFF", "slots": None, "slots_busy": None}) == "- BACKOFF"
    assert fmt_worker({"pid": 7, "state": "READY"}) == "7 READY"


def test_the_threads_choice_says_how_it_was_made() -> None:
    assert fmt_threads({"n_threads": 2, "threads": MEASURED}) == \
        "n_threads 2, measured: 2 threads decoded 61.2 tok/s against 37.9 with 1"
    assert fmt_threads({"n_threads": 4, "threads": {"source": "spec", "chosen": 4, "measured": {}, "reason": "n_threads 4 in the spec"}}) \
        == "n_threads 4, as configured"
    assert fmt_threads({"n_threads": 3}) == "n_threads 3"  # a worker that does not say how
    assert fmt_threads({"state": "STARTING"}) is None


def test_model_details_name_the_threads_once_and_the_cached_tokens() -> None:
    worker = {"pid": 1, "state": "READY", "n_threads": 2, "threads": MEASURED}
    other = {**worker, "pid": 2, "threads": {**MEASURED, "measured": {"1": 36.0, "2": 60.0},
                                             "reason": "2 threads decoded 60.0 tok/s against 36.0 with 1"}}
    model = {"type": "llm", "cached_tokens": 120, "workers": [worker, other]}  # two replicas, one choice
    assert model_details(model) == "n_threads 2, measured: 2 threads decoded 61.2 tok/s against 37.9 with 1; " \
                                   "120 prompt tokens reused from the cache"
    assert model_details({"type": "embeddings", "cached_tokens": 0, "workers": [worker]}) == \
        "n_threads 2, measured: 2 threads decoded 61.2 tok/s against 37.9 with 1"
    assert model_details({"type": "llm", "workers": []}) is None


def test_workers_that_chose_differently_are_each_named() -> None:
    one = {"pid": 1, "n_threads": 1, "threads": {"source": "measured", "chosen": 1, "reason": "1 thread was fastest"}}
    two = {"pid": 2, "n_threads": 2, "threads": MEASURED}
    assert model_details({"type": "embeddings", "workers": [one, two]}) == \
        "n_threads 1, measured: 1 thread was fastest; n_threads 2, measured: 2 threads decoded 61.2 tok/s against 37.9 with 1"


def test_a_running_switch_shows_its_step_and_the_share_of_steps_done():
    job = {"id": "j1", "target": "big", "progress": {"bytes_done": 0, "bytes_total": None, "fraction": 0.5},
           "steps": [{"name": "validate", "state": "done"}, {"name": "load", "state": "running", "detail": "model 'x'"}]}
    assert fmt_switch(job) == "to 'big' (job j1): load (model 'x'), 50% done"
    assert fmt_switch({**job, "progress": 0.25}).endswith(", 25% done")  # an older daemon's number
    assert fmt_switch({**job, "progress": None}) == "to 'big' (job j1): load (model 'x')"
