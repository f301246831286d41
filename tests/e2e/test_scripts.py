"""The operator scripts in scripts/, run as an operator runs them, against a real daemon."""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from daemon_home import msting_command

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ALT = {"description": "a second tiny model", "default_model": "alt-tiny",
       "models": {"alt-tiny": {"source": "builtin:tiny", "n_ctx": 1024}}}


def _run(daemon_home, script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(daemon_home.env, MSTING=shlex.join(msting_command()))
    return subprocess.run([str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _write_profile(daemon_home, name: str, body: dict) -> None:
    folder = daemon_home.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(body))


def test_start_checks_starts_and_waits_for_ready_then_switches(daemon_home):
    _write_profile(daemon_home, "alt", ALT)
    proc = _run(daemon_home, "start.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pre-flight checks" in proc.stdout and "no problem found" in proc.stdout and "is ready" in proc.stdout
    with daemon_home.client() as c:
        assert c.get("/health/ready").status_code == 200
    again = _run(daemon_home, "start.sh", "alt")  # already running: checks pass, then the switch
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    with daemon_home.client() as c:
        health = c.get("/health").json()
    assert health["profile"] == "alt" and health["ready"] is True


def test_start_stops_at_a_failed_preflight_check(daemon_home):
    daemon_home.write_config({"llm_service": {"prot": 1}})
    proc = _run(daemon_home, "start.sh")
    assert proc.returncode == 1
    assert "a pre-flight check failed" in proc.stderr and "llm_service.prot" in proc.stdout
    assert daemon_home.our_processes() == []


def test_stop_drains_in_flight_requests_and_keeps_the_profile(daemon_home):
    _write_profile(daemon_home, "alt", ALT)
    daemon_home.start()
    assert _run(daemon_home, "switch_profile.py", "alt").returncode == 0
    results = {}

    def long_request():
        with daemon_home.client(timeout=120) as c:
            results["r"] = c.post("/generate", json={"prompt": "Once", "max_tokens": 1500, "temperature": 0})

    t = threading.Thread(target=long_request)
    t.start()
    daemon_home.wait_for(lambda: daemon_home.client().get("/v1/status").json()["models"][0]["in_flight"] == 1, what="request in flight")
    proc = _run(daemon_home, "stop.sh")
    t.join(timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped" in proc.stdout
    assert results["r"].status_code == 200 and results["r"].json()["usage"]["completion_tokens"] > 0
    assert daemon_home.our_processes() == [] and not daemon_home.socket.exists()
    daemon_home.start()  # the saved state: the next start serves the profile it stopped on
    with daemon_home.client() as c:
        assert c.get("/health").json()["profile"] == "alt"
    forced = _run(daemon_home, "stop.sh", "--force")
    assert forced.returncode == 0 and "killed" in forced.stdout


def test_switch_profile_dry_run_shows_the_plan_and_changes_nothing(daemon_home):
    _write_profile(daemon_home, "alt", ALT)
    daemon_home.start()
    proc = _run(daemon_home, "switch_profile.py", "alt", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "alt-tiny" in proc.stdout and "msting-tiny" in proc.stdout
    as_json = _run(daemon_home, "switch_profile.py", "alt", "--dry-run", "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)
    with daemon_home.client() as c:
        assert c.get("/health").json()["profile"] == "default"
    live = _run(daemon_home, "switch_profile.py", "alt")
    assert live.returncode == 0, live.stdout + live.stderr
    assert "alt" in live.stdout


def test_usage_errors_and_an_unknown_profile(daemon_home):
    for script, args in (("start.sh", ["a", "b"]), ("start.sh", ["--bogus"]), ("stop.sh", ["now"]),
                         ("switch_profile.py", []), ("switch_profile.py", ["x", "--timeout", "-1"])):
        proc = _run(daemon_home, script, *args)
        assert proc.returncode == 2, (script, args, proc.stdout, proc.stderr)
        assert proc.stderr.strip(), (script, args)
    daemon_home.start()
    proc = _run(daemon_home, "switch_profile.py", "nosuch")
    assert proc.returncode != 0 and "nosuch" in proc.stdout + proc.stderr
    for script in ("start.sh", "stop.sh", "switch_profile.py"):
        helped = _run(daemon_home, script, "--help")
        assert helped.returncode == 0 and ("scripts/" in helped.stdout or "usage:" in helped.stdout)
