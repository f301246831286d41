"""Supervision that converges: hangs, poison requests, crash loops and FATAL, end to end.

Real daemon, real workers. Workers are made to die on cue with the worker's
failpoints (``MSTING_WORKER_FAILPOINTS``, see ``msting.worker.failpoints``), since no
valid input can crash one.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.e2e

POISON = "POISON-PILL"


def _model(daemon_home, name: str | None = None) -> dict:
    models = daemon_home.client().get("/v1/status").json()["models"]
    return models[0] if name is None else next(m for m in models if m["name"] == name)


def _generate(daemon_home, prompt: str = "Once upon a time", timeout: float = 60) -> httpx.Response:
    with daemon_home.client(timeout=timeout) as c:
        return c.post("/generate", json={"prompt": prompt, "max_tokens": 8, "temperature": 0})


def test_a_replacement_for_a_hung_worker_is_not_blamed_for_its_predecessors_silence(daemon_home):
    """SIGSTOP one worker: it is killed once and replaced, and the replacement keeps
    serving (it used to be killed as 'hung' again and again until the model was FATAL)."""
    daemon_home.start()
    hung = daemon_home.worker_pids()[0]
    os.kill(hung, signal.SIGSTOP)
    try:
        replacement = daemon_home.wait_for(
            lambda: (pids := daemon_home.worker_pids()) and pids[0] != hung and _model(daemon_home)["state"] == "ready" and pids[0],
            timeout=60, what="a verified replacement worker")
    finally:
        try:
            os.kill(hung, signal.SIGCONT)
        except ProcessLookupError:
            pass
    # Watch the replacement through several hang timeouts (3 s) and health pings (1 s),
    # idle and serving: it must neither be killed nor stop answering.
    deadline = time.monotonic() + 3 * 3 + 2
    while time.monotonic() < deadline:
        r = _generate(daemon_home)
        assert r.status_code == 200 and r.json()["text"], r.text
        time.sleep(0.5)
    model = _model(daemon_home)
    assert model["workers"][0]["pid"] == replacement
    assert model["restarts"] == 1, model
    assert model["state"] == "ready"
    assert "no answer to a ping" in (model["workers"][0]["last_error"] or "")


def test_a_request_that_crashes_its_workers_is_answered_with_an_error_and_never_takes_the_model_down(daemon_home):
    daemon_home.env["MSTING_WORKER_FAILPOINTS"] = f"crash_on_prompt={POISON}"
    daemon_home.start()
    for round_ in range(4):  # 8 worker deaths, more than max_crashes (5) within the window
        with ThreadPoolExecutor(max_workers=4) as pool:
            poison = pool.submit(_generate, daemon_home, f"tell me {POISON}")
            normal = [pool.submit(_generate, daemon_home, "Once upon a time") for _ in range(3)]
            bad = poison.result()
            good = [f.result() for f in normal]
        assert bad.status_code == 500, bad.text
        error = bad.json()["error"]
        assert error["code"] == "request_crashed_worker"
        assert "msting-tiny" in error["message"]
        assert [r.status_code for r in good] == [200, 200, 200], [r.text for r in good]
        assert all(r.json()["text"] for r in good)
        model = _model(daemon_home)
        assert model["restarts"] == 2 * (round_ + 1), model  # one restart per try, two tries
    daemon_home.wait_for(lambda: _model(daemon_home)["state"] == "ready", what="the model ready again")
    assert _generate(daemon_home).status_code == 200
    events = daemon_home.client().get("/v1/status").json()["events"]
    assert any(e["kind"] == "request_crashed_worker" for e in events)


def test_a_restart_is_quick_while_requests_wait_even_with_a_long_backoff(daemon_home):
    backoff = 30.0
    daemon_home.write_config({"llm_service": {"restart": {
        "backoff_initial_sec": backoff, "backoff_max_sec": backoff, "jitter": 0, "waiting_backoff_max_sec": 0.25}}})
    daemon_home.start()
    worker = daemon_home.worker_pids()[0]
    os.kill(worker, signal.SIGKILL)  # nobody waits: the long backoff applies
    model = daemon_home.wait_for(lambda: (m := _model(daemon_home))["workers"][0]["state"] == "BACKOFF" and m,
                                 what="the worker backing off")
    assert model["workers"][0]["backoff_sec"] == backoff
    asked = time.monotonic()
    r = _generate(daemon_home, timeout=backoff * 2)
    waited = time.monotonic() - asked
    assert r.status_code == 200 and r.json()["text"], r.text
    # the request did not wait out the 30 s backoff: it woke the restart
    assert waited < backoff / 2, waited
    assert _model(daemon_home)["restarts"] == 1


def test_wait_and_start_fail_at_once_on_a_fatal_model_and_say_what_happens_next(daemon_home, corrupt_gguf):
    daemon_home.write_config({"llm": {"model": str(corrupt_gguf)}})
    start = daemon_home.cli("llm", "start", "--timeout", "600")
    assert start.returncode == 1, start.stdout + start.stderr
    # `wait` used to wait out its whole timeout and exit 3
    wait = daemon_home.cli("llm", "wait", "--timeout", "600", timeout=700)
    assert wait.returncode == 1, wait.stdout + wait.stderr
    out = wait.stdout + wait.stderr
    assert "corrupt" in out and "FATAL" in out and "when the model file changes" in out
    ready = daemon_home.client().get("/health/ready").json()
    assert ready["status"] == "failed" and "msting llm load" in ready["reason"]
    model = _model(daemon_home)
    assert model["fatal"]["kind"] == "boot" and model["fatal"]["retry_at"] is None
    assert model["workers"][0]["fatal"]["reason"]


def test_a_model_fatal_on_a_boot_error_comes_back_when_its_file_is_fixed(daemon_home, tmp_path, builtin_model_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    daemon_home.write_config({"llm": {"model": str(path), "model_name": "fixme"}})
    assert daemon_home.cli("llm", "start", "--timeout", "120").returncode == 1
    assert _model(daemon_home)["state"] == "failed"
    shutil.copyfile(builtin_model_path, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)  # fixed, as an operator would
    daemon_home.wait_for(lambda: _model(daemon_home)["state"] == "ready", timeout=60, what="the model back after its file changed")
    assert _generate(daemon_home).status_code == 200
    assert daemon_home.cli("llm", "wait", "--timeout", "10").returncode == 0
    events = daemon_home.client().get("/v1/status").json()["events"]
    assert any(e["kind"] == "worker_retry" and "file changed" in (e["detail"] or "") for e in events)


def test_a_crash_looping_model_goes_fatal_then_is_retried_on_schedule_and_on_load(daemon_home, tmp_path):
    flag = tmp_path / "crash-while-this-exists"
    flag.write_text("1")
    daemon_home.env["MSTING_WORKER_FAILPOINTS"] = f"crash_at_load_while={flag}"
    daemon_home.write_config({"llm_service": {"restart": {"max_crashes": 2, "fatal_retry_sec": 2}}})
    assert daemon_home.cli("llm", "start", "--timeout", "120").returncode == 1
    model = _model(daemon_home)
    assert model["state"] == "failed"
    assert model["fatal"]["kind"] == "crashes" and model["fatal"]["retry_at"] is not None
    assert "start failures" in model["last_error"]
    # the scheduled retry: it crashes again (the flag is still there) and goes FATAL again
    daemon_home.wait_for(
        lambda: sum(e["kind"] == "worker_retry" for e in daemon_home.client().get("/v1/status").json()["events"]) >= 1,
        timeout=30, what="a scheduled retry")
    daemon_home.wait_for(lambda: _model(daemon_home)["state"] == "failed", what="FATAL again")
    # fixed; an explicit load does not wait for the schedule
    flag.unlink()
    load = daemon_home.cli("llm", "load", "msting-tiny", "--timeout", "60")
    assert load.returncode == 0, load.stdout + load.stderr
    assert _model(daemon_home)["state"] == "ready"
    assert _generate(daemon_home).status_code == 200
