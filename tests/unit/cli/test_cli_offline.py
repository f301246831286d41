"""The real CLI, run as a subprocess, with a temporary MSTING_HOME where no daemon runs.

These need no daemon implementation: they cover help, version, exit codes, the
not-running paths, stale-file cleanup, config errors and the lean import path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from child_env import child_env

ROOT = Path(__file__).resolve().parents[3]
HEAVY_MODULES = ("starlette", "uvicorn", "llama_cpp", "numpy", "gguf")


@pytest.fixture
def home():
    # Short on purpose: a Unix socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="ms"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli_env(home: Path) -> dict[str, str]:
    # Not os.environ: the developer's own LLM_API_KEY, MSTING_* ... stay out (tests/child_env.py).
    return child_env(
        MSTING_HOME=str(home),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
        COLUMNS="200",  # keep rich from wrapping help and messages
        NO_COLOR="1",
        TERM="dumb",
    )


def run(home: Path, *args: str, timeout: float = 60, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "msting", *args],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_help_lists_commands_and_exit_codes(home):
    top = run(home, "--help")
    assert top.returncode == 0, top.stderr
    assert "llm" in top.stdout
    assert "Exit codes" in top.stdout
    for fragment in ("0  ready", "1  not running", "2  usage or config error", "3  timed out"):
        assert fragment in top.stdout, top.stdout

    llm = run(home, "llm", "--help")
    assert llm.returncode == 0, llm.stderr
    for command in LLM_COMMANDS:
        assert command in llm.stdout, llm.stdout
    assert "3  timed out" in llm.stdout


LLM_COMMANDS = (
    "install", "start", "stop", "restart", "status", "wait", "logs", "health",
    "profiles", "switch-profile", "models", "load", "unload",
    "pull", "import", "rm", "search", "jobs",
)  # fmt: skip
NOT_RUNNING = "msting daemon is not running (start it with `msting llm start`)"

#: The commands that talk to a running daemon, with their arguments.
DAEMON_COMMANDS = [
    ("profiles",),
    ("switch-profile", "fast"),
    ("switch-profile", "fast", "--dry-run"),
    ("switch-profile", "fast", "--timeout", "5"),
    ("models",),
    ("load", "msting-tiny"),
    ("load", "msting-tiny", "--timeout", "5"),
    ("unload", "msting-tiny"),
    ("pull", "hf://org/repo:Q4_K_M"),
    ("pull", "ollama://tiny:latest", "--sha256", "0" * 64),
    ("rm", "msting-tiny"),
    ("search", "tiny"),
    ("jobs",),
    ("jobs", "cancel", "job-123"),
]


@pytest.mark.parametrize("command", ["profiles", "switch-profile", "models", "load", "unload"])
def test_new_command_help(home, command):
    result = run(home, "llm", command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout
    if command in ("switch-profile", "load", "unload"):
        assert "NAME" in result.stdout
    if command == "switch-profile":
        assert "--dry-run" in result.stdout and "--timeout" in result.stdout


@pytest.mark.parametrize("command", ["switch-profile", "load", "unload"])
def test_new_command_needs_a_name(home, command):
    result = run(home, "llm", command)
    assert result.returncode == 2


@pytest.mark.parametrize("args", DAEMON_COMMANDS, ids=" ".join)
def test_daemon_command_not_running(home, args):
    result = run(home, "llm", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert NOT_RUNNING in result.stderr
    assert result.stdout == ""
    assert not (home / "run" / "msting.sock").exists()  # nothing was started


@pytest.mark.parametrize("args", DAEMON_COMMANDS, ids=" ".join)
def test_daemon_command_json_not_running(home, args):
    result = run(home, "llm", *args, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)  # only JSON on stdout
    assert data["ok"] is False
    assert data["running"] is False
    assert data["error"]["message"] == NOT_RUNNING
    assert data["error"]["exit_code"] == 1


@pytest.mark.parametrize("source,hint", [("tiny.gguf", "sources: hf://"), ("ftp://host/x.gguf", "sources: hf://"),
                                         ("hf://", "sources: hf://")])
def test_pull_of_a_non_source_is_a_usage_error(home, source, hint):
    result = run(home, "llm", "pull", source)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"'{source}' is not a model source" in result.stderr and hint in result.stderr


def test_pull_of_a_local_file_points_at_import(home, builtin_model_path):
    result = run(home, "llm", "pull", str(builtin_model_path), "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["hint"] == f"'{builtin_model_path}' is a local file: `msting llm import {builtin_model_path}` registers it"


def test_import_checks_the_file_before_the_daemon(home, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    result = run(home, "llm", "import", str(junk))
    assert result.returncode == 2 and "is not a GGUF file" in result.stderr
    result = run(home, "llm", "import", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_jobs_state_filter_is_checked(home):
    result = run(home, "llm", "jobs", "--state", "done")
    assert result.returncode == 2 and "unknown state 'done'" in result.stderr


def test_usage_error_exits_2(home):
    result = run(home, "llm", "no-such-command")
    assert result.returncode == 2


def test_version(home):
    from msting import __version__

    result = run(home, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"msting {__version__}"


def test_status_not_running(home):
    result = run(home, "llm", "status")
    assert result.returncode == 1
    assert "msting daemon is not running (start it with `msting llm start`)" in result.stdout


def test_status_json_not_running(home):
    result = run(home, "llm", "status", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)  # only JSON on stdout
    assert data["running"] is False
    assert data["ready"] is False


def test_stop_not_running_removes_stale_files(home):
    run_dir = home / "run"
    run_dir.mkdir(mode=0o700, parents=True)
    pidfile = run_dir / "msting.pid"
    pidfile.write_text(f"{dead_pid()}\n")
    sock_path = run_dir / "msting.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))  # bound, never listening, then closed: a dead daemon's socket
    sock.close()
    assert sock_path.exists()

    result = run(home, "llm", "stop")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not running" in result.stdout
    assert not pidfile.exists()
    assert not sock_path.exists()

    again = run(home, "llm", "stop", "--json")
    assert again.returncode == 0
    data = json.loads(again.stdout)
    assert data["ok"] is True and data["was_running"] is False


def test_wait_times_out_with_exit_3(home):
    result = run(home, "llm", "wait", "--timeout", "1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "timed out" in result.stderr
    assert "not running" in result.stderr  # the last readiness reason


def test_start_with_unknown_config_key_exits_2(home):
    config_dir = home / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "config.yaml").write_text("llm_service:\n  bogus_knob: 1\n")

    result = run(home, "llm", "start", "--timeout", "5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bogus_knob" in result.stderr
    assert not (home / "run" / "msting.pid").exists()

    as_json = run(home, "llm", "start", "--json", "--timeout", "5")
    assert as_json.returncode == 2
    data = json.loads(as_json.stdout)
    assert data["ok"] is False
    assert any("bogus_knob" in p for p in data["config_problems"])


@pytest.mark.parametrize("args", [("--help",), ("llm", "status", "--json"), ("llm", "profiles", "--json"), ("llm", "models", "--json"),
                                  ("llm", "jobs", "--json"), ("llm", "pull", "hf://org/repo", "--json")])
def test_import_path_is_lean(home, args):
    result = run(home, *args, python_flags=("-X", "importtime"))
    assert result.returncode in (0, 1), result.stderr
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert imported, "no -X importtime output"
    assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


@pytest.mark.parametrize("args", [("llm", "status"), ("llm", "status", "--json"), ("llm", "start"), ("llm", "stop"),
                                  ("llm", "install"), ("llm", "logs")])
def test_msting_home_that_is_a_file_is_a_usage_error_not_a_traceback(home, args):
    not_a_folder = home / "file"
    not_a_folder.write_text("x")
    proc = run(not_a_folder, *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert "MSTING_HOME" in out and "is not a directory" in out, out
    assert not (not_a_folder.is_dir()), "nothing was created in its place"
