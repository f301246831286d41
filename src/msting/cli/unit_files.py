"""The files an init system runs the daemon from: a systemd unit and a launchd plist.

Pure rendering, no I/O: ``msting llm service`` (msting.cli.init_service) writes them, and
``packaging/`` holds the same renderings for the layout install.sh makes
(tests/unit/cli/test_unit_files.py checks they match). Both run
``<the venv's python> -m msting llm start --foreground``, the daemon in the very process
the init system started, with ``MSTING_HOME`` baked in when it was set.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from msting.daemon.exit_codes import DaemonExit

SYSTEMD_UNIT = "msting.service"
LAUNCHD_LABEL = "dev.msting.llm"
#: systemd kills a daemon whose event loop sends no WATCHDOG=1 for this long.
WATCHDOG_SEC = 30
#: Start-up beyond the config's startup_timeout_sec: the interpreter, the config, the sockets.
START_MARGIN_SEC = 30
#: Stop beyond drain_grace_sec + stop_timeout_sec: closing the HTTP server, the state database.
STOP_MARGIN_SEC = 15
#: launchd restarts at most this often (it has no RestartPreventExitStatus).
LAUNCHD_THROTTLE_SEC = 10


class InitSystem(str, Enum):
    SYSTEMD = "systemd"
    LAUNCHD = "launchd"

    def __str__(self) -> str:
        return self.value


class UnitError(ValueError):
    """A value that cannot go into a unit file (a newline in a path)."""


@dataclass(frozen=True)
class UnitSpec:
    """What a unit bakes in."""

    python: str  #: the interpreter of the venv msting is installed in (not resolved: the venv is found from it)
    system: bool  #: a system service (run as `user`) rather than the user's own
    msting_home: str | None = None
    user: str | None = None  #: the account a system service runs as
    env_file: str | None = None  #: systemd: an optional KEY=value file (API keys)
    log_file: str | None = None  #: launchd: where the daemon's stdout and stderr go
    startup_timeout_sec: float = 120.0
    stop_sec: float = 40.0  #: drain_grace_sec + stop_timeout_sec

    def command(self) -> list[str]:
        return [self.python, "-m", "msting", "llm", "start", "--foreground"]


def unit_path(init: InitSystem, system: bool, home: Path, config_home: Path | None = None) -> PurePosixPath:
    """Where the init system looks for msting's file (`home`: the user's home directory,
    `config_home`: $XDG_CONFIG_HOME when set)."""
    if init is InitSystem.SYSTEMD:
        if system:
            return PurePosixPath("/etc/systemd/system") / SYSTEMD_UNIT
        return PurePosixPath(config_home or home / ".config") / "systemd" / "user" / SYSTEMD_UNIT
    if system:
        return PurePosixPath("/Library/LaunchDaemons") / f"{LAUNCHD_LABEL}.plist"
    return PurePosixPath(home) / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def render(init: InitSystem, spec: UnitSpec) -> str:
    return render_systemd(spec) if init is InitSystem.SYSTEMD else render_launchd(spec)


# ---- systemd ----------------------------------------------------------------------


def render_systemd(spec: UnitSpec) -> str:
    config_exit, busy_exit = int(DaemonExit.CONFIG), int(DaemonExit.ALREADY_RUNNING)
    scope = "--system" if spec.system else "--user"
    ctl = "systemctl" if spec.system else "systemctl --user"
    lines = [
        "# msting: the local LLM service, run by systemd.",
        f"# Written by `msting llm service install {scope}`: run that again rather than editing this",
        "# file (it bakes in the interpreter and MSTING_HOME); `msting llm service uninstall` removes it.",
        f"# `{ctl} status msting` shows the daemon's own status line; `msting llm status` the details.",
        "",
        "[Unit]",
        "Description=msting local LLM service",
    ]
    if spec.system:
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "# READY=1 comes once the default model has loaded and generated; STATUS= lines say what",
        "# the daemon is doing; WATCHDOG=1 comes from its event loop.",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_exec_line(spec.command())}",
    ]
    if spec.system and spec.user:
        lines.append(f"User={_plain(spec.user, 'the user name')}")
    lines.append(f"Environment={_env('PYTHONUNBUFFERED', '1')}")
    if spec.msting_home:
        lines.append(f"Environment={_env('MSTING_HOME', spec.msting_home)}")
    if spec.env_file:
        lines += ["# Optional KEY=value lines (API keys: llm_service.api_key_env_var, the services' keys).",
                  f"EnvironmentFile=-{_path(spec.env_file)}"]
    lines += [
        f"WatchdogSec={WATCHDOG_SEC}",
        "# Loading a large model takes a while: startup_timeout_sec, and a margin.",
        f"TimeoutStartSec={_seconds(spec.startup_timeout_sec + START_MARGIN_SEC)}",
        "# SIGTERM: the daemon drains in-flight requests (drain_grace_sec) and stops its workers",
        "# (stop_timeout_sec); then systemd SIGKILLs whatever is left in the cgroup.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={_seconds(spec.stop_sec + STOP_MARGIN_SEC)}",
        "Restart=on-failure",
        "RestartSec=2",
        f"# {config_exit} = EX_CONFIG: a bad config or an unusable state database will not fix itself.",
        f"# {busy_exit} = EX_TEMPFAIL: another msting daemon (started by hand) holds the lock.",
        f"RestartPreventExitStatus={config_exit} {busy_exit}",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if spec.system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def _check(value: str, what: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise UnitError(f"{what} contains a newline or NUL character, which a unit file cannot hold: {value!r}")
    return value


def _plain(value: str, what: str) -> str:
    if not value or any(c.isspace() or c in "\"'\\%$;" for c in _check(value, what)):
        raise UnitError(f"{what} {value!r} cannot go into a unit file (spaces, quotes or specifiers)")
    return value


def _quote(value: str) -> str:
    """A word of a systemd command line or assignment: specifiers (%) escaped, quoted
    when it holds a space, a quote or a backslash."""
    escaped = value.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\;" for c in value) or not value:
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def _exec_line(argv: list[str]) -> str:
    # $ would be variable expansion in ExecStart
    return " ".join(_quote(_check(word, "the command").replace("$", "$$")) for word in argv)


def _env(name: str, value: str) -> str:
    return _quote(f"{name}={_check(value, name)}")


def _path(value: str) -> str:
    _check(value, "a path")
    if any(c.isspace() for c in value):
        raise UnitError(f"the path {value!r} holds a space, which EnvironmentFile= does not accept")
    return value.replace("%", "%%")


def _seconds(value: float) -> str:
    return str(int(value + 0.999))


# ---- launchd ----------------------------------------------------------------------


def render_launchd(spec: UnitSpec) -> str:
    import plistlib

    env = {"PYTHONUNBUFFERED": "1"}
    if spec.msting_home:
        env["MSTING_HOME"] = _check(spec.msting_home, "MSTING_HOME")
    plist: dict = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [_check(word, "the command") for word in spec.command()],
        "EnvironmentVariables": env,
        "RunAtLoad": True,
        # Restarted after a failure (an exit code other than 0), not after a clean stop.
        # launchd has no RestartPreventExitStatus: a config error (78) is retried every
        # ThrottleInterval seconds until the config is fixed.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": LAUNCHD_THROTTLE_SEC,
        # Seconds between SIGTERM and SIGKILL: the daemon drains first.
        "ExitTimeOut": int(spec.stop_sec + STOP_MARGIN_SEC),
        "ProcessType": "Interactive",
    }
    if spec.system and spec.user:
        plist["UserName"] = _check(spec.user, "the user name")
    if spec.log_file:
        plist["StandardOutPath"] = plist["StandardErrorPath"] = _check(spec.log_file, "the log file")
    return plistlib.dumps(plist, sort_keys=False).decode()


# ---- the copies in packaging/ -------------------------------------------------------

#: The layout install.sh makes: its venv, no MSTING_HOME, the user's own service.
PACKAGING_SYSTEMD = UnitSpec(python="%h/.local/share/msting/venv/bin/python", system=False,
                             env_file="%h/.config/msting/service.env")
PACKAGING_LAUNCHD = UnitSpec(python="/Users/YOU/.local/share/msting/venv/bin/python", system=False,
                             log_file="/Users/YOU/Library/Logs/msting/launchd.out")


def packaging_files() -> dict[str, str]:
    """``packaging/``'s files, by path in the repository."""
    systemd = render_systemd(PACKAGING_SYSTEMD).replace("%%h", "%h")  # a specifier on purpose here
    return {
        f"packaging/systemd/{SYSTEMD_UNIT}": systemd,
        f"packaging/launchd/{LAUNCHD_LABEL}.plist": render_launchd(PACKAGING_LAUNCHD),
    }
