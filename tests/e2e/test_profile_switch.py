"""Profiles end to end: switches under load, rollback, dry runs, persistence, on-demand models."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
import yaml

pytestmark = pytest.mark.e2e


def write_profile(dh, name: str, body: dict) -> None:
    folder = dh.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(body))


ALT = {"description": "a second tiny model", "default_model": "alt-tiny",
       "models": {"alt-tiny": {"source": "builtin:tiny", "n_ctx": 1024}}}


def switch(dh, name: str, timeout: float = 60) -> dict:
    with dh.client() as c:
        r = c.post("/v1/profiles/switch", json={"profile": name})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["state"] != "running":
                return job
            time.sleep(0.02)
    raise AssertionError("switch did not finish")


def test_switch_under_load_loses_nothing_and_routes_to_the_new_model(daemon_home):
    write_profile(daemon_home, "alt", ALT)
    daemon_home.start()
    results: list[tuple[float, float, int, str | None]] = []
    stop = threading.Event()

    def load():
        with daemon_home.client(timeout=60) as c:
            for _ in range(2000):  # bounded
                if stop.is_set():
                    return
                sent = time.time()
                r = c.post("/generate", json={"prompt": "Once upon a time", "max_tokens": 24})
                results.append((sent, time.time(), r.status_code, r.json().get("model") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    job = switch(daemon_home, "alt")
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert job["state"] == "succeeded", job
    assert [s["state"] for s in job["steps"]] == ["done"] * 6
    failures = [r for r in results if r[2] != 200]
    assert failures == [] and len(results) > 20
    after = [r for r in results if r[0] > job["finished"]]
    assert after and {r[3] for r in after} == {"alt-tiny"}
    before = [r for r in results if r[1] < job["created"]]
    assert before and {r[3] for r in before} == {"msting-tiny"}
    status = daemon_home.status()
    assert status["profile"] == "alt" and status["ready"] is True
    assert [m["name"] for m in status["models"]] == ["alt-tiny"]


def test_switch_to_a_broken_profile_rolls_back_and_the_old_one_serves(daemon_home, corrupt_gguf):
    write_profile(daemon_home, "broken", {"default_model": "bad", "models": {"bad": {"source": str(corrupt_gguf)}}})
    daemon_home.start()
    pids = daemon_home.worker_pids()
    proc = daemon_home.cli("llm", "switch-profile", "broken")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "corrupt.gguf" in proc.stdout + proc.stderr
    status = daemon_home.status()
    assert status["profile"] == "default" and status["ready"] is True
    assert daemon_home.worker_pids() == pids
    with daemon_home.client() as c:
        r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "msting-tiny"


def test_a_model_that_fails_to_load_rolls_back(daemon_home, tmp_path, builtin_model_path):
    # a file that passes the header check but that llama.cpp cannot load: a GGUF whose
    # architecture is unknown
    import gguf
    import numpy as np

    odd = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(odd), "notanarch")
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_profile(daemon_home, "odd", {"default_model": "odd", "models": {"odd": {"source": str(odd)}}})
    daemon_home.start()
    with daemon_home.client() as c:
        job = switch(daemon_home, "odd")
    assert job["state"] == "failed"
    assert daemon_home.status()["profile"] == "default"
    assert daemon_home.our_processes()  # the old workers still run
    with daemon_home.client() as c:
        assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2}).json()["model"] == "msting-tiny"


def test_dry_run_changes_nothing(daemon_home):
    write_profile(daemon_home, "alt", ALT)
    daemon_home.start()
    before = daemon_home.status()
    proc = daemon_home.cli("llm", "switch-profile", "alt", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["load"] == ["alt-tiny"] and plan["unload"] == ["msting-tiny"] and plan["mode"] == "parallel"
    assert plan["memory"]["needed_bytes"] > 0 and plan["memory"]["available_bytes"] > plan["memory"]["needed_bytes"]
    after = daemon_home.status()
    assert after["profile"] == before["profile"] == "default"
    assert daemon_home.worker_pids() == [w["pid"] for m in before["models"] for w in m["workers"] if w["pid"]]
    with daemon_home.client() as c:
        assert c.get("/v1/jobs").json()["data"] == []


def test_unknown_and_invalid_profiles_are_clear_errors(daemon_home):
    write_profile(daemon_home, "typo", {"default_model": "x", "models": {"x": {"source": "builtin:tiny", "n_ctxx": 5, "replicas": 0}}})
    daemon_home.start()
    with daemon_home.client() as c:
        r = c.post("/v1/profiles/switch", json={"profile": "typo", "dry_run": True})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "n_ctxx" in message and "replicas" in message  # every problem listed
        r = c.post("/v1/profiles/switch", json={"profile": "nosuch", "dry_run": True})
        assert r.status_code == 400 and "nosuch" in r.json()["error"]["message"]
        listed = c.get("/v1/profiles").json()
    entry = next(p for p in listed["data"] if p["name"] == "typo")
    assert entry["valid"] is False and entry["problems"]
    assert listed["active"] == "default"


def test_active_profile_survives_kill_9_of_the_daemon(daemon_home):
    write_profile(daemon_home, "alt", ALT)
    daemon_home.start()
    assert switch(daemon_home, "alt")["state"] == "succeeded"
    os.killpg(os.getpgid(daemon_home.daemon_pid()), signal.SIGKILL)
    daemon_home.wait_for(lambda: not daemon_home.our_processes(), what="everything killed")
    daemon_home.start()
    status = daemon_home.status()
    assert status["profile"] == "alt" and status["ready"] is True
    with daemon_home.client() as c:
        assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2}).json()["model"] == "alt-tiny"


def test_on_demand_model_unloads_after_keep_alive(daemon_home):
    write_profile(daemon_home, "pool", {
        "default_model": "main",
        "models": {
            "main": {"source": "builtin:tiny"},
            "extra": {"source": "builtin:tiny", "n_ctx": 512, "always_ready": False, "keep_alive_sec": 1},
        },
    })
    daemon_home.start()
    assert switch(daemon_home, "pool")["state"] == "succeeded"
    status = daemon_home.status()
    extra = next(m for m in status["models"] if m["name"] == "extra")
    assert extra["state"] == "stopped" and extra["keep_alive_sec"] == 1
    with daemon_home.client() as c:
        r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 3, "model": "extra"})
        assert r.status_code == 200 and r.json()["model"] == "extra"
    pid = next(w["pid"] for m in daemon_home.status()["models"] if m["name"] == "extra" for w in m["workers"])
    assert pid and psutil.pid_exists(pid)
    daemon_home.wait_for(lambda: next(m for m in daemon_home.status()["models"] if m["name"] == "extra")["state"] == "stopped",
                         timeout=20, what="the idle model to unload")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    main = next(m for m in daemon_home.status()["models"] if m["name"] == "main")
    assert main["state"] == "ready"  # always-ready models stay
    events = [e["kind"] for e in daemon_home.status()["events"]]
    assert "model_idle_unload" in events


def test_cli_load_of_an_unknown_model_is_a_clear_error_without_a_loading_line(daemon_home):
    write_profile(daemon_home, "pool", {
        "default_model": "main",
        "models": {
            "main": {"source": "builtin:tiny"},
            "extra": {"source": "builtin:tiny", "n_ctx": 512, "always_ready": False},
        },
    })
    daemon_home.start()
    assert switch(daemon_home, "pool")["state"] == "succeeded"
    bad = daemon_home.cli("llm", "load", "nosuch")
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0
    assert "'nosuch' is not known" in out and "extra" in out  # names the known models
    assert "loading" not in out
    good = daemon_home.cli("llm", "load", "extra")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "model 'extra' loaded" in good.stdout
    assert next(m for m in daemon_home.status()["models"] if m["name"] == "extra")["state"] == "ready"


def test_memory_budget_unloads_the_least_recently_used_on_demand_model(daemon_home):
    # estimates: msting-tiny at n_ctx 2048 ~97 MiB, at n_ctx 512 ~74 MiB
    models = {
        "main": {"source": "builtin:tiny"},
        "e1": {"source": "builtin:tiny", "n_ctx": 512, "always_ready": False},
        "e2": {"source": "builtin:tiny", "n_ctx": 512, "always_ready": False},
    }
    write_profile(daemon_home, "tight", {"default_model": "main", "memory_budget_mb": 200, "models": models})
    write_profile(daemon_home, "tiny-budget", {"default_model": "main", "memory_budget_mb": 150, "models": models})
    daemon_home.start()
    assert switch(daemon_home, "tight")["state"] == "succeeded"

    def state(name):
        return next(m for m in daemon_home.status()["models"] if m["name"] == name)["state"]

    with daemon_home.client() as c:
        assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2, "model": "e1"}).status_code == 200
        assert state("e1") == "ready"
        assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2, "model": "e2"}).status_code == 200
    daemon_home.wait_for(lambda: state("e1") == "stopped", what="e1 evicted to make room for e2")
    assert state("e2") == "ready" and state("main") == "ready"
    assert "model_evicted" in [e["kind"] for e in daemon_home.status()["events"]]

    assert switch(daemon_home, "tiny-budget")["state"] == "succeeded"
    with daemon_home.client() as c:
        r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 2, "model": "e1"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "insufficient_memory"
    assert "budget" in r.json()["error"]["message"]
    assert state("main") == "ready"  # the refusal harms nothing


def test_a_profile_of_on_demand_models_counts_as_serving(daemon_home):
    lazy = {"default_model": "lazy", "models": {"lazy": {"source": "builtin:tiny", "always_ready": False}}}
    write_profile(daemon_home, "lazy", lazy)
    daemon_home.start()
    done = daemon_home.cli("llm", "switch-profile", "lazy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "load on their first request" in done.stdout
    assert daemon_home.worker_pids() == []  # nothing loaded: it loads when asked
    # a daemon started on that profile: `start` returns as soon as it serves, not at its timeout
    assert daemon_home.cli("llm", "stop").returncode == 0
    started = daemon_home.cli("llm", "start", "--json", "--timeout", "60")
    assert started.returncode == 0, started.stdout + started.stderr
    assert json.loads(started.stdout)["readiness"] == "idle"
    with daemon_home.client() as c:
        assert c.get("/health/ready").json()["status"] == "idle"
        r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "lazy"
