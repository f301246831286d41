"""`msting llm doctor` on a healthy home and on broken ones: real daemon, real files, a
real foreign listener on the port."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys

import pytest
from daemon_home import msting_command

pytestmark = pytest.mark.e2e

ORDER = ["python", "llama_cpp", "config", "profiles", "models", "memory", "port", "runtime", "disk", "log", "providers", "daemon"]


def _doctor(daemon_home) -> tuple[int, dict]:
    proc = daemon_home.cli("llm", "doctor", "--json", timeout=120)
    body = json.loads(proc.stdout)
    assert body["ok"] is (proc.returncode == 0)
    return proc.returncode, body


def _check(body: dict, name: str) -> dict:
    return next(c for c in body["checks"] if c["name"] == name)


def test_a_healthy_home_passes(daemon_home):
    daemon_home.start()
    code, body = _doctor(daemon_home)
    assert code == 0, body
    assert [c["name"] for c in body["checks"]] == ORDER
    assert body["failed"] == []
    assert all(c["status"] in ("ok", "warn") for c in body["checks"])
    llama = _check(body, "llama_cpp")
    assert llama["data"]["llama"]["importable"] is True and "CPU" in llama["data"]["gpu"]["compiled"]
    assert llama["detail"].startswith("llama-cpp-python ")
    assert _check(body, "port")["detail"].endswith(f"is our daemon's (pid {daemon_home.daemon_pid()})")
    assert _check(body, "runtime")["status"] == "ok" and "0600" in _check(body, "runtime")["detail"]
    assert _check(body, "daemon")["status"] == "ok"
    assert _check(body, "models")["data"]["models"]["msting-tiny"]["arch"] == "llama"
    human = daemon_home.cli("llm", "doctor")
    assert human.returncode == 0 and "no problem found" in human.stdout


def test_an_invalid_config_fails_and_skips_what_needs_it(daemon_home):
    daemon_home.write_config({"llm_service": {"prot": 1}})
    code, body = _doctor(daemon_home)
    assert code == 1 and body["failed"] == ["config"]
    config = _check(body, "config")
    assert "llm_service.prot" in config["detail"] and "config.yaml" in config["hint"]
    assert _check(body, "models")["status"] == "skip" and _check(body, "daemon")["status"] == "skip"
    human = daemon_home.cli("llm", "doctor")
    assert human.returncode == 1 and "fix: " in human.stdout and "1 check(s) failed: config" in human.stderr


def test_a_missing_model_file(daemon_home, tmp_path):
    daemon_home.write_config({"llm": {"model": str(tmp_path / "gone.gguf")}})
    code, body = _doctor(daemon_home)
    assert code == 1 and "models" in body["failed"]
    models = _check(body, "models")
    assert "gone.gguf" in models["detail"] and models["hint"]
    assert _check(body, "memory")["status"] == "skip"


def test_a_checksum_beside_the_model_is_checked(daemon_home, stories_model_path, tmp_path):
    model = tmp_path / "stories.gguf"
    model.symlink_to(stories_model_path)
    (tmp_path / "stories.gguf.sha256").write_text("0" * 64 + "  stories.gguf\n")
    daemon_home.write_config({"llm": {"model": str(model)}})
    code, body = _doctor(daemon_home)
    assert code == 1 and "models" in body["failed"] and "mismatch" in _check(body, "models")["detail"]
    digest = hashlib.sha256(stories_model_path.read_bytes()).hexdigest()
    (tmp_path / "stories.gguf.sha256").write_text(digest + "  stories.gguf\n")
    code, body = _doctor(daemon_home)
    assert "models" not in body["failed"] and "sha256 matches" in _check(body, "models")["detail"]


def test_a_stale_pidfile_and_socket(daemon_home):
    run = daemon_home.socket.parent
    run.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    daemon_home.pidfile.write_text(f"{dead.pid}\n")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon_home.socket))
    stale.close()
    code, body = _doctor(daemon_home)
    assert code == 1 and body["failed"] == ["runtime"]
    runtime = _check(body, "runtime")
    assert str(daemon_home.pidfile) in runtime["detail"] and str(daemon_home.socket) in runtime["detail"]
    assert "msting llm stop" in runtime["hint"]
    daemon_home.cli("llm", "stop", check=True)  # the fix the hint names
    code, body = _doctor(daemon_home)
    assert "runtime" not in body["failed"]


def test_the_port_taken_by_a_foreign_process(daemon_home):
    blocker = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n"
                                "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('up', flush=True)\n"
                                "time.sleep(600)", str(daemon_home.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline().strip() == "up"
        code, body = _doctor(daemon_home)
    finally:
        blocker.kill()
        blocker.wait()
    assert code == 1 and body["failed"] == ["port"]
    port = _check(body, "port")
    assert f"127.0.0.1:{daemon_home.port} is taken by another process (pid {blocker.pid}" in port["detail"]
    assert "llm_service.port" in port["hint"]


def test_an_unreachable_provider_url(daemon_home):
    from daemon_home import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    daemon_home.write_config({"llm": {"services": {"lan": {"api_format": "openai", "urls": [url]}}}})
    code, body = _doctor(daemon_home)
    assert code == 1 and "providers" in body["failed"]
    assert "lan" in _check(body, "providers")["detail"] and "unreachable" in _check(body, "providers")["detail"]


def test_doctor_help_and_a_bad_option(daemon_home):
    helped = daemon_home.cli("llm", "doctor", "--help")
    assert helped.returncode == 0 and "--json" in helped.stdout
    bad = daemon_home.cli("llm", "doctor", "--fix-everything")
    assert bad.returncode == 2 and "No such option" in bad.stderr


def test_install_reports_the_gpu_backend_as_doctor_does(daemon_home):
    proc = daemon_home.cli("llm", "install", "--no-deps", "--no-start", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    gpu = json.loads(proc.stdout)["gpu"]
    _, body = _doctor(daemon_home)
    assert gpu["line"] in _check(body, "llama_cpp")["detail"]
    assert gpu["backend"] in gpu["compiled"] and "built with" in gpu["line"]
    assert f"backend: {gpu['line']}" in proc.stderr


def test_msting_home_that_is_a_file(daemon_home, tmp_path):
    a_file = tmp_path / "home-file"
    a_file.write_text("x")
    env = dict(daemon_home.env, MSTING_HOME=str(a_file))
    proc = subprocess.run([*msting_command(), "llm", "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    body = json.loads(proc.stdout)
    assert body["failed"] == ["config"] and "is not a directory" in _check(body, "config")["detail"]
    assert "Traceback" not in proc.stderr
