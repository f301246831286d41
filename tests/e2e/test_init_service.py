"""`msting llm service install | uninstall | status` through the real CLI. Files go under
--root (a temporary directory), never into this machine's /etc or ~/.config; the units
written are checked by systemd's own `systemd-analyze verify`."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_home import msting_command
from notify_socket import NotifySocket, killed_at_exit

pytestmark = pytest.mark.e2e


def _said(text: str) -> str:
    """Typer's boxed usage error as one line."""
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def _unit(root: Path, home: str, system: bool) -> Path:
    if system:
        return root / "etc/systemd/system/msting.service"
    return root / home.lstrip("/") / ".config/systemd/user/msting.service"


def _verify(unit: Path, system: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    args = [tool, "verify", str(unit)] if system else [tool, "--user", "verify", str(unit)]
    # --user needs a runtime directory to set up its (offline) manager
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_the_unit_written_passes_systemd_analyze_verify(daemon_home, tmp_path, system):
    root = tmp_path / "root"
    scope = "--system" if system else "--user"
    proc = daemon_home.cli("llm", "service", "install", scope, "--root", str(root), "--json", check=True)
    result = json.loads(proc.stdout)
    unit = _unit(root, daemon_home.env["HOME"], system)
    assert Path(result["path"]) == unit and unit.read_text() == result["content"]
    assert result["commands"] == []  # under --root nothing is enabled
    text = unit.read_text()
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    interpreter = Path(exec_line.split("=", 1)[1].split()[0])
    # the venv's own interpreter, not resolved (python or python3: the CLI's shebang names one of them)
    assert interpreter.parent == Path(sys.executable).parent and interpreter.name in ("python", "python3")
    assert exec_line.endswith(" -m msting llm start --foreground")
    assert f"Environment=MSTING_HOME={daemon_home.home}" in text.splitlines()
    for line in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "RestartPreventExitStatus=78 75"):
        assert line in text.splitlines()
    verified = _verify(unit, system, tmp_path)
    assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr

    status = daemon_home.cli("llm", "service", "status", scope, "--root", str(root), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    body = json.loads(status.stdout)
    assert body["installed"] is True and body["up_to_date"] is True and body["daemon"]["running"] is False

    unit.write_text(text.replace("WatchdogSec=30", "WatchdogSec=5"))
    human = daemon_home.cli("llm", "service", "status", scope, "--root", str(root))
    assert human.returncode == 0 and "differs from what `msting llm service install` writes now" in human.stdout

    gone = daemon_home.cli("llm", "service", "uninstall", scope, "--root", str(root), "--json", check=True)
    assert json.loads(gone.stdout)["removed"] is True and not unit.exists()
    after = daemon_home.cli("llm", "service", "status", scope, "--root", str(root))
    assert after.returncode == 1 and "not installed" in after.stdout
    again = daemon_home.cli("llm", "service", "uninstall", scope, "--root", str(root))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_dry_run_shows_the_file_and_the_commands_and_writes_nothing(daemon_home, tmp_path):
    root = tmp_path / "root"
    proc = daemon_home.cli("llm", "service", "install", "--dry-run", "--json", check=True)
    shown = json.loads(proc.stdout)
    assert shown["dry_run"] is True
    assert shown["commands"] == ["systemctl --user daemon-reload", "systemctl --user enable msting.service",
                                 "systemctl --user restart msting.service"]
    assert not Path(shown["path"]).exists()
    written = json.loads(daemon_home.cli("llm", "service", "install", "--root", str(root), "--json", check=True).stdout)
    assert written["content"] == shown["content"]
    human = daemon_home.cli("llm", "service", "install", "--dry-run", check=True)
    assert "would write " in human.stdout and "would run: systemctl --user enable msting.service" in human.stdout


def test_the_launchd_plist_parses(daemon_home, tmp_path):
    root = tmp_path / "root"
    proc = daemon_home.cli("llm", "service", "install", "--init-system", "launchd", "--root", str(root), "--json", check=True)
    path = Path(json.loads(proc.stdout)["path"])
    assert path == root / daemon_home.env["HOME"].lstrip("/") / "Library/LaunchAgents/dev.msting.llm.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProgramArguments"][1:] == ["-m", "msting", "llm", "start", "--foreground"]
    assert plist["EnvironmentVariables"]["MSTING_HOME"] == str(daemon_home.home)
    assert plist["StandardOutPath"] == str(daemon_home.home / "logs" / "launchd.out")
    # only shown or written elsewhere: this machine does not run launchd
    live = daemon_home.cli("llm", "service", "install", "--init-system", "launchd")
    assert live.returncode == 2 and "does not run launchd" in live.stderr


def test_hostile_inputs_get_clear_errors(daemon_home, tmp_path):
    evil = dict(daemon_home.env, MSTING_HOME=str(daemon_home.home) + "\nExecStartPre=/bin/sh -c 'rm -rf ~'")
    proc = subprocess.run([*msting_command(), "llm", "service", "install", "--dry-run"], env=evil, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "newline" in proc.stderr and "ExecStartPre" not in proc.stdout

    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = daemon_home.cli("llm", "service", "install", "--root", str(a_file))
    assert proc.returncode == 2 and "is a file" in _said(proc.stderr)

    proc = daemon_home.cli("llm", "service", "install", "--init-system", "upstart")
    assert proc.returncode == 2 and "'upstart' is not one of 'systemd', 'launchd'" in _said(proc.stderr)

    proc = subprocess.run([*msting_command(), "llm", "service", "install", "--dry-run"], env=dict(daemon_home.env, MSTING_HOME=str(a_file)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr

    no_home = {k: v for k, v in daemon_home.env.items() if k != "MSTING_HOME"}
    no_home["HOME"] = str(tmp_path / "home")
    proc = subprocess.run([*msting_command(), "llm", "service", "install", "--system", "--dry-run"], env=no_home,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "a system service needs MSTING_HOME" in proc.stderr


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: a live install would enable a real unit")
def test_a_live_install_without_systemd_says_so_and_writes_nothing(daemon_home, tmp_path):
    env = dict(daemon_home.env, HOME=str(tmp_path / "home"))
    proc = subprocess.run([*msting_command(), "llm", "service", "install"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "systemd is not running on this machine" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "home" / ".config" / "systemd").exists()



def _unit_command(text: str) -> tuple[list[str], dict[str, str]]:
    """ExecStart= and Environment= of a unit as systemd reads them (quotes, %% and $$)."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            argv = [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(value)]
        elif key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                env[name] = val.replace("%%", "%")
    return argv, env


def test_the_installed_unit_runs_the_daemon_until_ready(daemon_home, tmp_path):
    """What systemd does with the unit (it cannot run here: it is not PID 1): start its
    ExecStart with its Environment and a notification socket, wait for READY=1, stop it
    with KillSignal."""
    daemon_home.write_config({"llm_service": {"port": daemon_home.port}})  # a unit passes no MSTING_LLM_PORT
    root = tmp_path / "root"
    written = json.loads(daemon_home.cli("llm", "service", "install", "--root", str(root), "--json", check=True).stdout)
    argv, unit_env = _unit_command(written["content"])
    assert unit_env["MSTING_HOME"] == str(daemon_home.home)
    base = {k: v for k, v in daemon_home.env.items() if k not in ("MSTING_HOME", "MSTING_LLM_PORT")}
    out = tmp_path / "journal.out"  # a file, as the journal: a pipe nobody reads would fill up
    with NotifySocket(tmp_path, abstract=True) as notify, open(out, "ab") as journal, killed_at_exit(subprocess.Popen(
            argv, env={**base, **unit_env, "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "30000000"},
            stdout=journal, stderr=journal)) as proc:
        notify.until(lambda m: "READY=1" in m.split("\n"))
        status = daemon_home.status()  # the CLI, with the same home, finds the daemon the unit started
        assert status["ready"] is True and status["pid"] == proc.pid  # the main process: NotifyAccess=main holds
        service = json.loads(daemon_home.cli("llm", "service", "status", "--root", str(root), "--json").stdout)
        assert service["daemon"] == {"running": True, "pid": proc.pid} and service["up_to_date"] is True
        proc.send_signal(signal.SIGTERM)
        notify.until(lambda m: "STOPPING=1" in m.split("\n"))
        assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]


def test_the_plist_runs_the_daemon_until_ready(daemon_home, tmp_path):
    """What launchd does with the plist: ProgramArguments with EnvironmentVariables, output
    to StandardOutPath."""
    daemon_home.write_config({"llm_service": {"port": daemon_home.port}})
    root = tmp_path / "root"
    written = json.loads(daemon_home.cli("llm", "service", "install", "--init-system", "launchd", "--root", str(root), "--json",
                                         check=True).stdout)
    plist = plistlib.loads(written["content"].encode())
    base = {k: v for k, v in daemon_home.env.items() if k not in ("MSTING_HOME", "MSTING_LLM_PORT")}
    out = Path(plist["StandardOutPath"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as log, killed_at_exit(subprocess.Popen(plist["ProgramArguments"], env={**base, **plist["EnvironmentVariables"]},
                                                                 stdout=log, stderr=log)) as proc:
        assert daemon_home.cli("llm", "wait", "--timeout", "90").returncode == 0, out.read_text()
        assert daemon_home.status()["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_llm_status_says_whether_a_unit_is_installed(daemon_home, tmp_path):
    """`msting llm status` (text and --json), with and without a daemon, shows the user
    unit under $XDG_CONFIG_HOME once it is there, and says when none is installed."""
    config_home = tmp_path / "xdg-config"
    daemon_home.env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(config_home), COLUMNS="300")
    unit = config_home / "systemd" / "user" / "msting.service"

    def status() -> tuple[str, dict]:
        text = daemon_home.cli("llm", "status", timeout=60).stdout
        return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split()), daemon_home.status()["init_service"]

    text, body = status()
    assert body["installed"] is False and body["init_system"] == "systemd" and body["path"] == str(unit), body
    assert f"init service: no systemd unit installed (`msting llm service install` installs one at {unit})" in text, text

    content = json.loads(daemon_home.cli("llm", "service", "install", "--dry-run", "--json", check=True).stdout)["content"]
    unit.parent.mkdir(parents=True)
    unit.write_text(content)  # what a live install writes (systemctl is not run here)
    for running in (False, True):
        if running:
            daemon_home.start()
        text, body = status()
        assert body["installed"] is True and body["path"] == str(unit) and body["scope"] == "user", body
        assert body["up_to_date"] is True, body
        for key in ("enabled", "active"):  # systemd's answer, or "unknown: why"; never missing
            assert isinstance(body[key], str) and body[key], body
            if not Path("/run/systemd/system").is_dir():
                assert body[key] == "unknown: systemd is not running on this machine", body
        label = "init service" if running else "init service:"  # a row of the daemon's panel, or a line
        assert f"{label} systemd unit (user) {unit}: enabled {body['enabled']}, active {body['active']}" in text, text
