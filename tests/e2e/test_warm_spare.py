"""The warm spare worker: a process with llama_cpp already imported that the next worker
start (crash restart, switch, on-demand load) takes instead of starting from scratch."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

pytestmark = pytest.mark.e2e


def _spare(dh) -> dict:
    return dh.status()["spare"]


def _spare_pid(dh) -> int | None:
    return _spare(dh)["pid"]


def test_a_crash_restart_takes_the_spare_and_a_new_spare_follows(daemon_home):
    daemon_home.start()
    spare_pid = daemon_home.wait_for(lambda: _spare_pid(daemon_home), what="the warm spare")
    assert psutil.Process(spare_pid).cmdline()[-1] == "--spare"
    worker_pid = daemon_home.worker_pids()[0]
    os.kill(worker_pid, signal.SIGKILL)
    with daemon_home.client() as c:
        r = c.post("/generate", json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200 and r.json()["text"]
    # the restarted worker IS the former spare: no new interpreter, no new import
    assert daemon_home.worker_pids() == [spare_pid]
    new_spare = daemon_home.wait_for(lambda: (p := _spare_pid(daemon_home)) and p != spare_pid and p,
                                     what="a new spare after the old one was taken")
    assert psutil.pid_exists(new_spare)
    spare = _spare(daemon_home)
    assert spare["handed_out"] == 1 and spare["rss_bytes"] > 0
    status = daemon_home.status()
    assert status["ready"] is True and status["models"][0]["restarts"] == 1
    human = daemon_home.cli("llm", "status")
    assert f"pid {new_spare}" in human.stdout and "warm spare" in human.stdout


def test_a_dead_spare_is_replaced_and_nothing_fails(daemon_home):
    daemon_home.start()
    spare_pid = daemon_home.wait_for(lambda: _spare_pid(daemon_home), what="the warm spare")
    os.kill(spare_pid, signal.SIGKILL)
    replaced = daemon_home.wait_for(lambda: (p := _spare_pid(daemon_home)) and p != spare_pid and p,
                                    timeout=30, what="a replacement spare")
    assert psutil.pid_exists(replaced)
    status = daemon_home.status()
    assert status["ready"] is True and status["models"][0]["restarts"] == 0  # no model was touched
    assert status["spare"]["handed_out"] == 0


def test_stop_ends_the_spare_too(daemon_home):
    daemon_home.start()
    spare_pid = daemon_home.wait_for(lambda: _spare_pid(daemon_home), what="the warm spare")
    stop = daemon_home.cli("llm", "stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not psutil.pid_exists(spare_pid) or psutil.Process(spare_pid).status() == psutil.STATUS_ZOMBIE
    assert daemon_home.our_processes() == []


def test_warm_spare_off_starts_no_spare(daemon_home):
    daemon_home.write_config({"llm_service": {"warm_spare": False}})
    daemon_home.start()
    worker_pid = daemon_home.worker_pids()[0]
    os.kill(worker_pid, signal.SIGKILL)
    daemon_home.wait_for(lambda: daemon_home.status()["ready"] and daemon_home.worker_pids() != [worker_pid],
                         what="the worker restarted")
    spare = _spare(daemon_home)
    assert spare == {"enabled": False, "pid": None, "since": None, "handed_out": 0, "rss_bytes": None}
    daemon_pid = daemon_home.daemon_pid()
    children = psutil.Process(daemon_pid).children()
    assert [p.pid for p in children] == daemon_home.worker_pids()
    assert "off" in daemon_home.cli("llm", "status").stdout


def test_the_event_loop_has_a_short_time_slice_and_job_threads_a_long_one(daemon_home):
    """The daemon asks for a short scheduler slice for its event loop's thread alone
    (msting.timeslice): the threads it starts, and the worker processes they fork, begin
    with the default, and the job thread that decodes asks for a long one. The spare
    has no job thread yet: all of it runs with the default, from its first instruction
    on, not only once its main() has run."""
    import threading

    from msting.timeslice import JOB_SLICE_US, SLICE_US, current_slice_ns, set_time_slice

    probe: dict = {}

    def _probe() -> None:  # what this kernel does with the same request, on a throwaway thread
        probe["default"] = current_slice_ns()
        probe["outcome"] = set_time_slice()

    thread = threading.Thread(target=_probe)
    thread.start()
    thread.join()

    daemon_home.start()
    spare_pid = daemon_home.wait_for(lambda: _spare_pid(daemon_home), what="the warm spare")
    daemon_pid = daemon_home.daemon_pid()
    assert f"event loop thread: {probe['outcome']}" in daemon_home.log_file.read_text()
    if not probe["outcome"].startswith(f"{SLICE_US} µs time slice"):
        return  # not Linux ≥ 6.12: the log line above says so, and nothing changed
    if os.getpriority(os.PRIO_PROCESS, 0) < 0:
        pytest.skip(f"at a negative nice value the short slice is inherited ({probe['outcome']})")
    default = probe["default"]

    def slices(pid: int) -> dict[int, int | None]:
        return {int(tid): current_slice_ns(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}

    in_daemon = slices(daemon_pid)
    assert in_daemon.pop(daemon_pid) == SLICE_US * 1000  # the main thread runs the loop
    assert set(in_daemon.values()) <= {default}, in_daemon  # executor threads (they start workers)
    assert set(slices(spare_pid).values()) == {default}
    # READY comes after the verify generate, which ran on the job thread
    for pid in daemon_home.worker_pids():
        by_thread = slices(pid)
        assert by_thread.pop(pid) == default  # the main thread reads frames
        assert JOB_SLICE_US * 1000 in by_thread.values(), by_thread
        assert set(by_thread.values()) <= {JOB_SLICE_US * 1000, default}, by_thread

    # A new spare, looked at as soon as the daemon reports it (polled over the socket,
    # so before its interpreter has even reached main()), already has the default: a
    # slice inherited from the event loop would show here for the tens of milliseconds
    # the interpreter start takes.
    os.kill(spare_pid, signal.SIGKILL)
    with daemon_home.client() as c:
        new_spare = daemon_home.wait_for(
            lambda: (p := c.get("/v1/status").json()["spare"]["pid"]) and p != spare_pid and p,
            interval=0.002, what="a replacement spare")
        assert set(slices(new_spare).values()) == {default}


def test_the_event_loop_keeps_the_default_slice_while_no_local_worker_is_up(daemon_home):
    """The short slice is for competing with the daemon's own workers: a daemon with none
    up (a remote-only setup, or every local model unloaded) keeps the kernel's default, so
    it does not preempt an engine on the same machine whose tokens it forwards. A load
    gives the loop the short slice; the unload gives the default back."""
    import threading

    from msting.timeslice import SLICE_US, current_slice_ns, set_time_slice

    probe: dict = {}

    def _probe() -> None:
        probe["default"] = current_slice_ns()
        probe["outcome"] = set_time_slice()

    thread = threading.Thread(target=_probe)
    thread.start()
    thread.join()

    daemon_home.write_config({"llm_service": {"always_ready": False, "warm_spare": False}})
    daemon_home.start()
    pid = daemon_home.daemon_pid()
    assert daemon_home.worker_pids() == []
    if not probe["outcome"].startswith(f"{SLICE_US} µs time slice"):
        return  # not Linux >= 6.12: nothing is ever changed (the other slice test says so)
    if os.getpriority(os.PRIO_PROCESS, 0) < 0:
        pytest.skip(f"at a negative nice value the short slice is inherited ({probe['outcome']})")
    assert current_slice_ns(pid) == probe["default"]
    with daemon_home.client() as c:
        assert c.post("/models/load", json={"model": "default"}).status_code == 200
        assert daemon_home.worker_pids()
        assert current_slice_ns(pid) == SLICE_US * 1000
        name = c.get("/v1/status").json()["models"][0]["name"]
        r = c.post("/models/unload", json={"model": name})
        assert r.status_code == 200, r.text
    daemon_home.wait_for(lambda: not daemon_home.worker_pids(), what="the worker gone")
    daemon_home.wait_for(lambda: current_slice_ns(pid) == probe["default"], what="the default slice back")
    log = daemon_home.log_file.read_text()
    assert "event loop thread: 100 µs time slice, for this thread only (local workers up: yes)" in log
    assert "event loop thread: default time slice" in log and "(local workers up: none)" in log
