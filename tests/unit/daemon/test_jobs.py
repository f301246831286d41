"""msting.daemon.jobs: jobs with named steps and progress, saved to a real Store (an
SQLite file in a temp directory) on every change."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from msting.daemon.jobs import Job, Jobs, JobState, Step
from msting.daemon.local.switch import STEPS  # a switch job's steps
from msting.daemon.store import Store



@pytest.fixture
def jobs(store: Store) -> Jobs:
    return Jobs(store)


def _stored(store: Store, job_id: str) -> dict:
    """What another daemon would read: a fresh connection to the file, not this store."""
    db = sqlite3.connect(store.path)
    try:
        (body,) = db.execute("SELECT body FROM jobs WHERE id=?", (job_id,)).fetchone()
    finally:
        db.close()
    return json.loads(body)


def test_create_makes_a_running_job_with_pending_steps_and_saves_it(jobs: Jobs, store: Store) -> None:
    job = jobs.create("switch", "fast", STEPS)
    assert re.fullmatch(r"job-[0-9a-f]{12}", job.id)
    d = job.to_dict()
    assert set(d) == {"id", "type", "state", "params", "step", "steps", "progress", "error", "result", "created_at", "started_at",
                      "finished_at", "kind", "target", "created", "finished", "duration_ms"}
    assert d["type"] == "switch" and d["params"] == {"profile": "fast"} and d["step"] is None
    assert d["started_at"] is not None and d["created_at"] == d["created"]
    assert d["id"] == job.id and d["kind"] == "switch" and d["target"] == "fast"
    assert d["state"] == "running" and d["finished"] is None and d["duration_ms"] is None
    assert d["progress"] == {"bytes_done": 0, "bytes_total": None, "rate_bps": None, "eta_sec": None, "fraction": 0.0}
    assert d["error"] is None and d["result"] is None
    assert d["steps"] == [{"name": n, "state": "pending", "detail": None, "started": None, "finished": None, "duration_ms": None}
                          for n in STEPS]
    assert json.loads(json.dumps(d)) == d  # plain JSON all the way down
    assert jobs.get(job.id) == d
    assert _stored(store, job.id) == d


def test_ids_are_unique(jobs: Jobs) -> None:
    ids = {jobs.create("switch", "p", ["a"]).id for _ in range(200)}
    assert len(ids) == 200


def test_begin_and_end_move_a_step_and_every_change_is_saved(jobs: Jobs, store: Store) -> None:
    job = jobs.create("switch", "fast", STEPS)
    jobs.begin(job, "validate", "reading the profile")
    step = _stored(store, job.id)["steps"][0]
    assert step["state"] == "running" and step["detail"] == "reading the profile"
    assert step["started"] is not None and step["finished"] is None and step["duration_ms"] is None

    jobs.end(job, "validate", "2 model(s), default tiny")
    d = _stored(store, job.id)
    step = d["steps"][0]
    assert step["state"] == "done" and step["detail"] == "2 model(s), default tiny"
    assert step["started"] <= step["finished"]
    assert step["duration_ms"] == round((step["finished"] - step["started"]) * 1000.0, 1)
    assert d["progress"]["fraction"] == round(1 / 6, 3) == 0.167
    assert d["state"] == "running"
    assert [s["state"] for s in d["steps"][1:]] == ["pending"] * 5


def test_end_without_detail_keeps_the_begin_detail(jobs: Jobs) -> None:
    job = jobs.create("switch", "fast", STEPS)
    jobs.begin(job, "load", "loading tiny")
    jobs.end(job, "load")
    assert job.step("load").detail == "loading tiny"
    jobs.begin(job, "verify")  # begin without detail clears nothing it did not set
    assert job.step("verify").detail is None


def test_end_of_a_step_never_begun_gets_a_start_and_another_state(jobs: Jobs) -> None:
    job = jobs.create("switch", "fast", ["a", "b"])
    jobs.end(job, "a", "nothing to do", state="skipped")
    a = job.to_dict()["steps"][0]
    assert a["state"] == "skipped" and a["detail"] == "nothing to do"
    assert a["started"] is not None and a["started"] <= a["finished"]
    assert job.fraction == 0.5  # skipped counts as done


def test_progress_counts_done_and_skipped_but_not_failed_or_running(jobs: Jobs) -> None:
    job = jobs.create("k", "t", ["a", "b", "c"])
    jobs.end(job, "a")
    assert job.fraction == 0.333
    jobs.begin(job, "b")
    assert job.fraction == 0.333
    jobs.end(job, "b", state="failed")
    assert job.fraction == 0.333
    jobs.end(job, "c", state="skipped")
    assert job.fraction == 0.667
    assert Job("k", "t", []).fraction == 1.0  # no steps: nothing left to do


def test_an_unknown_step_name_is_a_value_error_naming_the_steps(jobs: Jobs) -> None:
    """Not a StopIteration, which inside the switch's coroutine became a RuntimeError."""
    job = jobs.create("switch", "fast", STEPS)
    with pytest.raises(ValueError, match="has no step 'lod'; its steps: validate, preflight, load"):
        jobs.begin(job, "lod")
    with pytest.raises(ValueError, match="has no step 'lod'"):
        jobs.end(job, "lod")
    assert all(s["state"] == "pending" for s in jobs.get(job.id)["steps"])


def test_finish_with_a_result_succeeds_closes_the_running_step_and_skips_the_rest(jobs: Jobs, store: Store) -> None:
    job = jobs.create("switch", "fast", STEPS)
    for name in ("validate", "preflight"):
        jobs.begin(job, name)
        jobs.end(job, name)
    jobs.begin(job, "load", "loading tiny")
    result = {"mode": "parallel", "load": ["tiny"], "duration_ms": 12.5}
    jobs.finish(job, result=result)
    d = jobs.get(job.id)
    assert d["state"] == "succeeded" and job.state is JobState.SUCCEEDED
    assert d["error"] is None and d["result"] == result
    assert d["created"] <= d["finished"]
    assert d["duration_ms"] == round((d["finished"] - d["created"]) * 1000.0, 1)
    assert [s["state"] for s in d["steps"]] == ["done", "done", "done", "skipped", "skipped", "skipped"]
    load = d["steps"][2]
    assert load["finished"] == d["finished"] and load["detail"] == "loading tiny"
    assert [s["started"] for s in d["steps"][3:]] == [None] * 3  # skipped steps never ran
    assert d["progress"]["fraction"] == 1.0
    assert _stored(store, job.id) == d


def test_finish_with_an_error_fails_the_running_step_with_the_first_line(jobs: Jobs, store: Store) -> None:
    job = jobs.create("switch", "big", STEPS)
    jobs.begin(job, "validate")
    jobs.end(job, "validate")
    jobs.begin(job, "preflight")
    error = "not enough memory: " + "x" * 300 + "\nsecond line\nthird"
    jobs.finish(job, error=error, result={"mode": "drain-first"})
    d = _stored(store, job.id)
    assert d["state"] == "failed" and d["error"] == {"code": "job_failed", "message": error}  # the whole message on the job
    assert d["result"] == {"mode": "drain-first"}  # a failed job may carry its plan
    preflight = d["steps"][1]
    assert preflight["state"] == "failed"
    assert preflight["detail"] == error.splitlines()[0][:200] and len(preflight["detail"]) == 200
    assert preflight["finished"] == d["finished"]
    assert [s["state"] for s in d["steps"]] == ["done", "failed", "skipped", "skipped", "skipped", "skipped"]
    assert d["progress"]["fraction"] == round(5 / 6, 3)  # the failed step is the one not counted


def test_finish_with_an_error_keeps_a_detail_the_step_already_had(jobs: Jobs) -> None:
    job = jobs.create("switch", "big", ["load", "verify"])
    jobs.begin(job, "load", "loading big")
    jobs.finish(job, error="boot: file is corrupt")
    assert job.step("load").state == "failed" and job.step("load").detail == "loading big"
    assert job.step("verify").state == "skipped" and job.step("verify").detail is None


def test_finish_before_any_step_skips_them_all(jobs: Jobs) -> None:
    job = jobs.create("switch", "p", ["a", "b"])
    jobs.finish(job, error="another switch is running")
    assert [s.state for s in job.steps] == ["skipped", "skipped"]
    assert job.state is JobState.FAILED and job.fraction == 1.0


def test_running_finds_the_running_job_of_a_kind_only(jobs: Jobs) -> None:
    assert jobs.running("switch") is None
    other = jobs.create("download", "x", ["a"])
    assert jobs.running("switch") is None
    job = jobs.create("switch", "fast", STEPS)
    assert jobs.running("switch") is job
    assert jobs.running("download") is other
    jobs.finish(job, result={})
    assert jobs.running("switch") is None
    failed = jobs.create("switch", "big", STEPS)
    jobs.finish(failed, error="boom")
    assert jobs.running("switch") is None
    again = jobs.create("switch", "slow", STEPS)
    assert jobs.running("switch") is again


def test_get_of_an_unknown_id_is_none(jobs: Jobs) -> None:
    assert jobs.get("job-000000000000") is None
    assert jobs.get("") is None
    jobs.create("switch", "fast", STEPS)
    assert jobs.get("job-000000000000") is None


def test_get_answers_from_memory_with_the_live_state(jobs: Jobs) -> None:
    job = jobs.create("switch", "fast", ["a"])
    job.step("a").detail = "changed without save"  # the live object is what get() shows
    assert jobs.get(job.id)["steps"][0]["detail"] == "changed without save"


def test_a_new_jobs_on_the_same_file_sees_finished_jobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "restart.db")
    first = Jobs(store)
    ok = first.create("switch", "fast", STEPS)
    for name in STEPS:
        first.begin(ok, name)
        first.end(ok, name)
    first.finish(ok, result={"mode": "parallel"})
    bad = first.create("switch", "big", STEPS)
    first.begin(bad, "validate")
    first.finish(bad, error="no such profile")
    expected = {ok.id: first.get(ok.id), bad.id: first.get(bad.id)}
    store.close()

    reopened = Store(tmp_path / "restart.db")  # a daemon restart
    try:
        second = Jobs(reopened)
        assert second.get(ok.id) == expected[ok.id]
        assert second.get(ok.id)["state"] == "succeeded" and second.get(ok.id)["progress"]["fraction"] == 1.0
        assert second.get(bad.id) == expected[bad.id]
        assert second.get(bad.id)["steps"][0] == {**expected[bad.id]["steps"][0], "state": "failed", "detail": "no such profile"}
        assert second.running("switch") is None
        assert [j["id"] for j in reopened.recent_jobs()] == [bad.id, ok.id]
    finally:
        reopened.close()


def test_a_job_running_when_its_daemon_died_ends_as_interrupted(store: Store) -> None:
    """The next daemon's Jobs marks it failed: the step it was in failed, the rest skipped."""
    dead = Jobs(store)
    job = dead.create("switch", "fast", STEPS)
    dead.end(job, "validate")
    dead.begin(job, "load", "loading x")
    del dead  # the daemon died here, mid-step
    after = Jobs(store)
    assert after.running("switch") is None
    d = after.get(job.id)
    assert d["state"] == "failed" and d["finished"] is not None and d["duration_ms"] is not None
    assert d["error"]["message"].startswith("interrupted: the daemon stopped")
    states = {s["name"]: s["state"] for s in d["steps"]}
    assert states["validate"] == "done" and states["load"] == "failed"
    assert [s["state"] for s in d["steps"][3:]] == ["skipped"] * (len(STEPS) - 3)
    assert d["steps"][2]["detail"] == "loading x"
    assert store.running_jobs() == []
    assert Jobs(store).get(job.id) == d  # once only


def test_step_duration_needs_both_ends() -> None:
    assert Step("a").duration_ms is None
    assert Step("a", started=10.0).duration_ms is None
    assert Step("a", started=10.0, finished=10.25).duration_ms == 250.0
    assert Step("a", started=10.0, finished=10.00004).duration_ms == 0.0


# ---- the job state machine, cancel, byte progress, resuming ---------------------------


def test_the_state_machine_allows_only_its_moves() -> None:
    from msting.daemon.jobs import job_transition
    from msting.transitions import IllegalTransition

    assert job_transition(JobState.QUEUED, JobState.RUNNING) is JobState.RUNNING
    assert job_transition(JobState.QUEUED, JobState.CANCELLED) is JobState.CANCELLED
    for end in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert job_transition(JobState.RUNNING, end) is end
        for target in JobState:
            with pytest.raises(IllegalTransition, match=f"illegal job transition {end.value} -> {target.value}"):
                job_transition(end, target)
    with pytest.raises(IllegalTransition):
        job_transition(JobState.RUNNING, JobState.QUEUED)


def test_a_queued_job_starts_and_a_cancel_ends_it_once_calling_its_hook(jobs: Jobs, store: Store) -> None:
    job = jobs.create("install", "hf://a/b", ["resolving", "downloading"], params={"source": "hf://a/b"}, start=False)
    assert job.state is JobState.QUEUED and job.started_at is None and _stored(store, job.id)["state"] == "queued"
    jobs.start(job)
    jobs.begin(job, "downloading")
    called = []
    jobs.on_cancel(job, lambda: called.append(1))
    d = jobs.cancel(job.id)
    assert d["state"] == "cancelled" and d["error"]["code"] == "cancelled" and called == [1]
    assert d["steps"][1]["state"] == "failed" and d["finished_at"] is not None
    again = jobs.cancel(job.id)  # already ended: unchanged, the hook not called again
    assert again == d and called == [1]
    assert jobs.cancel("job-000000000000") is None
    assert _stored(store, job.id)["state"] == "cancelled"


def test_byte_progress_only_moves_forward_and_has_a_rate_and_eta(jobs: Jobs) -> None:
    job = jobs.create("install", "x", ["downloading"], params={}, start=True)
    jobs.advance(job, 1000, 10_000)
    job.progress.samples[0] = (job.progress.samples[0][0] - 1.0, 0)  # as if the first sample were a second old
    jobs.advance(job, 5000)
    p = jobs.get(job.id)["progress"]
    assert p["bytes_done"] == 5000 and p["bytes_total"] == 10_000
    assert p["rate_bps"] > 0 and p["eta_sec"] == round(5000 / p["rate_bps"], 1)
    jobs.advance(job, 3000)  # a resumed transfer reports from its checkpoint: never backwards
    assert jobs.get(job.id)["progress"]["bytes_done"] == 5000
    jobs.finish(job, result={"model": "x"})
    p = jobs.get(job.id)["progress"]
    assert p["bytes_done"] == 10_000 and p["rate_bps"] is None


def test_after_a_restart_a_resumable_job_is_handed_back_and_the_others_fail(store: Store) -> None:
    dead = Jobs(store)
    install = dead.create("install", "hf://a/b", ["resolving", "downloading"], params={"source": "hf://a/b"})
    dead.begin(install, "downloading")
    dead.advance(install, 4096, 8192)
    dead.save(install)
    queued = dead.create("install", "hf://c/d", ["resolving"], params={"source": "hf://c/d"}, start=False)
    imp = dead.create("import", "/x.gguf", ["copying"], params={"path": "/x.gguf"})
    del dead
    after = Jobs(store, resumable=("install",))
    assert sorted(j.id for j in after.resumed) == sorted([install.id, queued.id])
    back = next(j for j in after.resumed if j.id == install.id)
    assert back.state is JobState.RUNNING and back.params == {"source": "hf://a/b"} and back.progress.bytes_done == 4096
    assert back.created_at == install.created_at
    assert after.get(imp.id)["state"] == "failed" and after.get(imp.id)["error"]["code"] == "interrupted"


def test_follow_yields_the_job_then_each_change_and_ends_with_the_terminal_state(jobs: Jobs) -> None:
    import asyncio

    async def scenario() -> list[dict]:
        job = jobs.create("install", "x", ["downloading"], params={}, start=True)
        seen: list[dict] = []

        async def reader() -> None:
            async for body in jobs.follow(job.id):
                seen.append(body)

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.01)
        jobs.begin(job, "downloading")
        await asyncio.sleep(0.01)
        jobs.finish(job, result={"model": "x"})
        await asyncio.wait_for(task, 5)
        return seen

    seen = asyncio.run(scenario())
    assert [b["state"] for b in seen] == ["running", "running", "succeeded"]
    assert seen[1]["step"] == "downloading"
