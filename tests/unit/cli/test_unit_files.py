"""msting.cli.unit_files: the systemd unit and the launchd plist, and packaging/'s copies."""

from __future__ import annotations

import plistlib
from pathlib import Path, PurePosixPath

import pytest

from msting.cli import unit_files as uf
from msting.daemon.exit_codes import DaemonExit

REPO = Path(__file__).resolve().parents[3]


def _values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_packaging_holds_what_the_code_renders():
    for rel, text in uf.packaging_files().items():
        assert (REPO / rel).read_text() == text, (
            f"{rel} is out of date; regenerate it: .venv/bin/python -c 'from msting.cli.unit_files import packaging_files; "
            "[open(p, \"w\").write(t) for p, t in packaging_files().items()]'")


def test_the_systemd_unit_bakes_in_the_interpreter_home_and_timeouts():
    spec = uf.UnitSpec(python="/opt/ms/venv/bin/python", system=True, msting_home="/var/lib/msting", user="alice",
                       env_file="/var/lib/msting/config/service.env", startup_timeout_sec=300, stop_sec=45)
    text = uf.render_systemd(spec)
    assert _values(text, "Type") == ["notify"] and _values(text, "NotifyAccess") == ["main"]
    assert _values(text, "ExecStart") == ["/opt/ms/venv/bin/python -m msting llm start --foreground"]
    assert "MSTING_HOME=/var/lib/msting" in _values(text, "Environment")
    assert _values(text, "User") == ["alice"]
    assert _values(text, "WatchdogSec") == [str(uf.WATCHDOG_SEC)]
    assert _values(text, "Restart") == ["on-failure"]
    assert _values(text, "RestartPreventExitStatus") == [f"{int(DaemonExit.CONFIG)} {int(DaemonExit.ALREADY_RUNNING)}"]
    assert int(DaemonExit.CONFIG) == 78
    assert _values(text, "TimeoutStartSec") == [str(300 + uf.START_MARGIN_SEC)]
    assert _values(text, "TimeoutStopSec") == [str(45 + uf.STOP_MARGIN_SEC)]
    assert _values(text, "WantedBy") == ["multi-user.target"]
    user = uf.render_systemd(uf.UnitSpec(python="/p/python", system=False))
    assert _values(user, "WantedBy") == ["default.target"] and not _values(user, "User")
    assert not [v for v in _values(user, "Environment") if v.startswith("MSTING_HOME")]


def test_specifiers_spaces_and_dollars_are_escaped():
    spec = uf.UnitSpec(python="/home/a b/100%/$venv/bin/python", system=False, msting_home="/srv/50% full")
    text = uf.render_systemd(spec)
    assert _values(text, "ExecStart") == ['"/home/a b/100%%/$$venv/bin/python" -m msting llm start --foreground']
    assert '"MSTING_HOME=/srv/50%% full"' in _values(text, "Environment")


@pytest.mark.parametrize("field", ["python", "msting_home"])
def test_a_newline_cannot_go_into_a_unit(field):
    values = {"python": "/p/python", "msting_home": "/h", field: "/evil\nExecStartPre=/bin/rm -rf /"}
    spec = uf.UnitSpec(system=False, **values)
    for render in (uf.render_systemd, uf.render_launchd):
        with pytest.raises(uf.UnitError, match="newline"):
            render(spec)


def test_a_user_name_with_spaces_is_refused():
    with pytest.raises(uf.UnitError):
        uf.render_systemd(uf.UnitSpec(python="/p", system=True, user="a b"))


def test_the_plist_parses_and_keeps_the_daemon_alive():
    spec = uf.UnitSpec(python="/opt/ms/bin/python", system=False, msting_home="/Users/a/ms", log_file="/Users/a/ms/logs/launchd.out")
    plist = plistlib.loads(uf.render_launchd(spec).encode())
    assert plist["Label"] == uf.LAUNCHD_LABEL
    assert plist["ProgramArguments"] == ["/opt/ms/bin/python", "-m", "msting", "llm", "start", "--foreground"]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["EnvironmentVariables"]["MSTING_HOME"] == "/Users/a/ms"
    assert plist["StandardErrorPath"] == "/Users/a/ms/logs/launchd.out"
    assert "UserName" not in plist


def test_where_each_file_goes():
    home = Path("/home/a")
    assert uf.unit_path(uf.InitSystem.SYSTEMD, False, home) == PurePosixPath("/home/a/.config/systemd/user/msting.service")
    assert uf.unit_path(uf.InitSystem.SYSTEMD, False, home, Path("/x/cfg")) == PurePosixPath("/x/cfg/systemd/user/msting.service")
    assert uf.unit_path(uf.InitSystem.SYSTEMD, True, home) == PurePosixPath("/etc/systemd/system/msting.service")
    assert uf.unit_path(uf.InitSystem.LAUNCHD, False, home) == PurePosixPath("/home/a/Library/LaunchAgents/dev.msting.llm.plist")
    assert uf.unit_path(uf.InitSystem.LAUNCHD, True, home) == PurePosixPath("/Library/LaunchDaemons/dev.msting.llm.plist")
