"""How `msting llm status` and `msting llm service status` ask the init system: a state
when the tool answers, "unknown: why" when it is absent, fails or does not answer in
time (real commands standing in for systemctl)."""

from __future__ import annotations

import sys

from msting.cli.init_service import _answer, describe_summary


def test_the_first_line_on_stdout_is_the_answer_whatever_the_exit_code():
    assert _answer([sys.executable, "-c", "print('disabled'); raise SystemExit(1)"], 10) == "disabled"


def test_a_tool_that_fails_without_an_answer_is_unknown_with_its_error():
    said = _answer([sys.executable, "-c", "import sys; sys.stderr.write('Failed to connect to bus\\n'); raise SystemExit(1)"], 10)
    assert said.startswith("unknown: `") and said.endswith("exited 1: Failed to connect to bus"), said


def test_an_absent_tool_is_unknown_and_says_so(tmp_path):
    missing = str(tmp_path / "systemctl")
    assert _answer([missing, "--user", "is-active", "msting.service"], 10) == \
        f"unknown: `{missing}` could not run: No such file or directory"


def test_a_tool_that_does_not_answer_in_time_is_unknown():
    said = _answer([sys.executable, "-c", "import time; time.sleep(30)"], 0.2)
    assert said.startswith("unknown: `") and said.endswith("did not answer within 0.2 s"), said


def test_the_status_line():
    base = {"init_system": "systemd", "scope": "user", "path": "/h/.config/systemd/user/msting.service"}
    assert describe_summary({**base, "installed": False}) == \
        "no systemd unit installed (`msting llm service install` installs one at /h/.config/systemd/user/msting.service)"
    assert describe_summary({**base, "installed": True, "up_to_date": False, "enabled": "enabled", "active": "active"}) == \
        ("systemd unit (user) /h/.config/systemd/user/msting.service: enabled enabled, active active, "
         "out of date (run `msting llm service install` again)")
    launchd = {"init_system": "launchd", "scope": "user", "path": "/h/Library/LaunchAgents/x.plist", "installed": True,
               "up_to_date": True, "enabled": None, "active": "unknown: `launchctl` could not run: No such file or directory"}
    assert describe_summary(launchd) == ("launchd agent (user) /h/Library/LaunchAgents/x.plist: "
                                         "active unknown: `launchctl` could not run: No such file or directory")
    assert describe_summary({"installed": False, "init_system": None, "reason": "no supported init system on win32"}) == \
        "none (no supported init system on win32)"
