"""``msting llm service install | uninstall | status``: the daemon as a service of the
init system (a systemd unit on Linux, a launchd plist on macOS).

Not to be confused with ``msting llm services`` (msting.cli.services), the remote LLM
services behind the daemon's router. The files themselves are rendered in
msting.cli.unit_files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal
from msting.cli.unit_files import InitSystem

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]
SystemOpt = Annotated[
    bool,
    typer.Option("--user/--system", help="The user's own service (default), or a system service run as this user (needs root and MSTING_HOME).",
                 show_default=False),
]
RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", metavar="DIR", file_okay=False,
                 help="Act on DIR as if it were / (packaging, images, tests): the file is written or removed there; "
                      "nothing is enabled, started or stopped."),
]
InitOpt = Annotated[
    Optional[InitSystem],
    typer.Option("--init-system", case_sensitive=False,
                 help="systemd or launchd (default: this machine's). Another one than this machine's needs --dry-run or --root."),
]
#: systemctl answers in milliseconds, except `start`, which waits for READY=1.
QUERY_TIMEOUT = 15.0
#: `msting llm status` asks the init system too, and must stay quick: past this, "unknown".
STATUS_QUERY_TIMEOUT = 2.0


@dataclass
class Target:
    """The service file one command acts on."""

    init: InitSystem
    system: bool
    path: Path  #: where it is written (under --root when given)
    installed_path: Path  #: where the init system will see it
    root: Path | None

    @property
    def scope(self) -> str:
        return "system" if self.system else "user"

    @property
    def live(self) -> bool:
        """Acting on this machine's init system (not under --root)."""
        return self.root is None

    def as_dict(self) -> dict[str, Any]:
        return {"init_system": str(self.init), "scope": self.scope, "path": str(self.path),
                "root": str(self.root) if self.root else None}


# ------------------------------------------------------------------------- commands


def install(
    user: SystemOpt = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the file and the commands; change nothing.")] = False,
    no_start: Annotated[bool, typer.Option("--no-start", help="Enable the service but do not start it now.")] = False,
    root: RootOpt = None,
    init_system: InitOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write the service file (the venv's interpreter and MSTING_HOME baked in), enable it and start it.

    systemd: a Type=notify unit with WatchdogSec, Restart=on-failure and RestartPreventExitStatus=78 (a config error is not restarted); the start waits for READY=1, which the daemon sends once its model has generated. launchd: a plist with RunAtLoad and KeepAlive. Safe to re-run: the file is rewritten and the service reloaded.
    """
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        target = _target(init_system, not user, root, dry_run)
        content = _render(target, env)
        # checked before anything is written (is the init system running?), unless only shown
        commands = _install_commands(target, env, no_start, None if dry_run else term) if target.live else []
        result: dict[str, Any] = {"ok": True, "dry_run": dry_run, **target.as_dict(), "content": content,
                                  "commands": [" ".join(c) for c in commands]}
        if not dry_run:
            if target.live:
                env.paths.ensure()  # launchd opens the log file in log_dir itself, and does not create it
            _write(target.path, content)
            result["ran"] = _run_all(term, commands, target)
    if json_:
        term.emit_json(result)
        return
    if dry_run:
        term.info(f"would write {target.path}:")
        term.print(content, markup=False, highlight=False, soft_wrap=True)
        for cmd in result["commands"]:
            term.info(f"would run: {cmd}")
        return
    term.success(f"wrote {target.path}")
    if not target.live:
        term.info(f"under --root {target.root}: not enabled; on the target system it is {target.installed_path}")
        return
    term.success(f"the {target.init} {target.scope} service is installed" + ("" if no_start else " and running"))
    term.info("  `msting llm service status` shows it; `msting llm service uninstall` removes it")


def uninstall(
    user: SystemOpt = True,
    root: RootOpt = None,
    init_system: InitOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Stop and disable the service, and remove its file. Removing what is not installed is fine."""
    term = Terminal(json_)
    with term.failures():
        target = _target(init_system, not user, root, dry_run=False)
        present = target.path.exists()
        ran: list[dict[str, Any]] = []
        if target.live and (present or _loaded(target)):
            ran = _run_all(term, _uninstall_commands(target), target, check=False)
        if present:
            try:
                target.path.unlink()
            except OSError as exc:
                raise CommandError(f"cannot remove {target.path}: {exc.strerror}", ExitCode.FAILED,
                                   hint="a system service needs root (sudo)" if target.system else None) from None
            if target.live and target.init is InitSystem.SYSTEMD:
                ran += _run_all(term, [_systemctl(target, "daemon-reload")], target, check=False)
    result = {"ok": True, **target.as_dict(), "removed": present, "ran": ran}
    if json_:
        term.emit_json(result)
    elif present:
        term.success(f"removed {target.path}; the {target.init} {target.scope} service is gone")
    else:
        term.info(f"the {target.init} {target.scope} service is not installed (no {target.path}); nothing to remove")


def status(
    user: SystemOpt = True,
    root: RootOpt = None,
    init_system: InitOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Whether the service is installed, up to date with this install, enabled and active.

    Exit 0 when the service file is installed, 1 when it is not.
    """
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        target = _target(init_system, not user, root, dry_run=False)
        result = _status(target, env)
    if json_:
        term.emit_json(result)
    else:
        _print_status(term, target, result)
    raise typer.Exit(ExitCode.OK if result["installed"] else ExitCode.FAILED)


# ------------------------------------------------------------------------- targets


def this_init_system() -> InitSystem | None:
    if sys.platform == "darwin":
        return InitSystem.LAUNCHD
    if sys.platform.startswith("linux"):
        return InitSystem.SYSTEMD
    return None


def _target(init: InitSystem | None, system: bool, root: Path | None, dry_run: bool) -> Target:
    from msting.cli.unit_files import unit_path

    native = this_init_system()
    if init is None:
        if native is None:
            raise CommandError(f"no supported init system on {sys.platform}: msting installs systemd units (Linux) "
                               "and launchd plists (macOS)", ExitCode.USAGE, hint="pick one with --init-system and --dry-run to see the file")
        init = native
    elif init is not native and root is None and not dry_run:
        raise CommandError(f"this machine does not run {init}; a {init} file can only be shown (--dry-run) "
                           "or written for another system (--root DIR)", ExitCode.USAGE)
    if root is not None:
        root = root.expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise CommandError(f"--root {root} is not a directory", ExitCode.USAGE)
    config_home = os.environ.get("XDG_CONFIG_HOME")
    installed = Path(unit_path(init, system, Path.home(), Path(config_home) if config_home else None))
    path = root / installed.relative_to("/") if root is not None else installed
    return Target(init, system, path, installed, root)


def _spec(target: Target, env: Any):
    from msting.cli.unit_files import UnitSpec
    from msting.config.paths import HOME_ENV_VAR

    home = os.environ.get(HOME_ENV_VAR) or None
    if home:
        home = str(Path(home).expanduser().absolute())
        if Path(home).exists() and not Path(home).is_dir():
            raise CommandError(f"{HOME_ENV_VAR}={home} is not a directory", ExitCode.USAGE,
                               hint=f"point {HOME_ENV_VAR} at a directory (or unset it for the default folders)")
    if target.system and not home:
        raise CommandError(
            "a system service needs MSTING_HOME: without it the daemon (started outside your login session) "
            "and your `msting` commands would look for the socket in different places",
            ExitCode.USAGE, hint="e.g. sudo MSTING_HOME=/var/lib/msting msting llm service install --system "
                                 "(or install the user service: msting llm service install --user)")
    svc = env.config.llm_service
    return UnitSpec(
        python=sys.executable,
        system=target.system,
        msting_home=home,
        user=_run_as() if target.system else None,
        env_file=str(env.paths.config_dir / "service.env"),
        log_file=str(env.paths.log_dir / "launchd.out"),
        startup_timeout_sec=float(svc.startup_timeout_sec),
        stop_sec=float(svc.drain_grace_sec) + float(svc.stop_timeout_sec),
    )


def _run_as() -> str:
    """The account a system service runs as: the one behind sudo, else this one."""
    import pwd

    if os.geteuid() == 0 and os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    return pwd.getpwuid(os.getuid()).pw_name


def _render(target: Target, env: Any) -> str:
    from msting.cli.unit_files import UnitError, render

    try:
        return render(target.init, _spec(target, env))
    except UnitError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None


def _write(path: Path, content: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(content, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}", ExitCode.FAILED,
                           hint="a system service needs root (sudo)" if str(path).startswith(("/etc", "/Library")) else None) from None


# ------------------------------------------------------------------------ commands run


def _systemctl(target: Target, *args: str) -> list[str]:
    return ["systemctl", *([] if target.system else ["--user"]), *args]


def _launchd_domain(target: Target) -> str:
    return "system" if target.system else f"gui/{os.getuid()}"


def _install_commands(target: Target, env: Any, no_start: bool, term: Terminal | None) -> list[list[str]]:
    from msting.cli.unit_files import LAUNCHD_LABEL, SYSTEMD_UNIT

    if term is not None:
        _require_init_running(target)
    running = env.is_running()
    if running and not no_start and term is not None:
        term.warn(f"a msting daemon started by hand runs (pid {env.running_pid()}): the service is enabled but not "
                  f"started; `msting llm stop`, then {_start_hint(target)}, hands it over")
    if target.init is InitSystem.SYSTEMD:
        commands = [_systemctl(target, "daemon-reload"), _systemctl(target, "enable", SYSTEMD_UNIT)]
        if not no_start and not running:
            commands.append(_systemctl(target, "restart", SYSTEMD_UNIT))  # a re-install applies the new file
        return commands
    domain = _launchd_domain(target)
    if no_start or running:  # bootstrap starts it (RunAtLoad)
        return [["launchctl", "enable", f"{domain}/{LAUNCHD_LABEL}"]]
    return [["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"], ["launchctl", "bootstrap", domain, str(target.path)]]


def _uninstall_commands(target: Target) -> list[list[str]]:
    from msting.cli.unit_files import LAUNCHD_LABEL, SYSTEMD_UNIT

    if target.init is InitSystem.SYSTEMD:
        return [_systemctl(target, "disable", "--now", SYSTEMD_UNIT)]
    return [["launchctl", "bootout", f"{_launchd_domain(target)}/{LAUNCHD_LABEL}"]]


def _start_hint(target: Target) -> str:
    from msting.cli.unit_files import LAUNCHD_LABEL

    if target.init is InitSystem.SYSTEMD:
        return f"`{' '.join(_systemctl(target, 'start', 'msting'))}`"
    return f"`launchctl kickstart {_launchd_domain(target)}/{LAUNCHD_LABEL}`"


def _require_init_running(target: Target) -> None:
    if target.init is InitSystem.SYSTEMD and not Path("/run/systemd/system").is_dir():
        raise CommandError(
            "systemd is not running on this machine (no /run/systemd/system): a unit installed here would never start",
            ExitCode.FAILED,
            hint="`--dry-run` shows the unit; `--root DIR` writes it for another system; here, run the daemon with "
                 "`msting llm start` (or scripts/start.sh)")


def _run_all(term: Terminal, commands: list[list[str]], target: Target, *, check: bool = True) -> list[dict[str, Any]]:
    from msting.cli.unit_files import LAUNCHD_LABEL

    ran = []
    for cmd in commands:
        term.dim("$ " + " ".join(cmd))
        # bootout of a job that is not loaded is not a failure
        tolerated = cmd[:2] == ["launchctl", "bootout"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=None if "restart" in cmd else QUERY_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise CommandError(f"{cmd[0]} is not installed: is {target.init} this machine's init system?", ExitCode.FAILED) from None
        except subprocess.TimeoutExpired:
            raise CommandError(f"`{' '.join(cmd)}` did not answer within {QUERY_TIMEOUT:g} s", ExitCode.FAILED) from None
        ran.append({"command": " ".join(cmd), "exit_code": proc.returncode})
        if proc.returncode != 0 and check and not tolerated:
            said = (proc.stderr or proc.stdout).strip()
            hint = None
            if "restart" in cmd:
                hint = (f"the service did not become ready; `{' '.join(_systemctl(target, 'status', 'msting'))}` "
                        f"and `msting llm logs` say why")
            elif target.init is InitSystem.LAUNCHD:
                hint = f"`launchctl print {_launchd_domain(target)}/{LAUNCHD_LABEL}` shows the job"
            raise CommandError(f"`{' '.join(cmd)}` failed (exit {proc.returncode})" + (f": {said}" if said else ""),
                               ExitCode.FAILED, hint=hint, data={"ran": ran})
    return ran


def _ask(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, str]:
    """The finished command; (None, why) when it could not run or did not answer in time."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL), ""
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` did not answer within {timeout:g} s"
    except OSError as exc:
        return None, f"`{cmd[0]}` could not run: {exc.strerror or exc}"


def _query(cmd: list[str], timeout: float = QUERY_TIMEOUT) -> tuple[int | None, str]:
    """(exit code, what it printed); (None, why) when it could not run or did not answer."""
    proc, why = _ask(cmd, timeout)
    if proc is None:
        return None, why
    return proc.returncode, (proc.stdout.strip() or proc.stderr.strip())


def _answer(cmd: list[str], timeout: float) -> str:
    """The first line a query printed on stdout (systemctl's is-enabled and is-active
    print the state there, whatever their exit code); else "unknown: " and why."""
    proc, why = _ask(cmd, timeout)
    if proc is None:
        return f"unknown: {why}"
    said = proc.stdout.strip().splitlines()
    if said:
        return said[0]
    errors = proc.stderr.strip().splitlines()
    return f"unknown: `{' '.join(cmd)}` exited {proc.returncode}" + (f": {errors[0]}" if errors else "")


def _loaded(target: Target) -> bool:
    from msting.cli.unit_files import LAUNCHD_LABEL, SYSTEMD_UNIT

    if target.init is InitSystem.SYSTEMD:
        return _query(_systemctl(target, "is-enabled", SYSTEMD_UNIT))[0] == 0
    return _query(["launchctl", "print", f"{_launchd_domain(target)}/{LAUNCHD_LABEL}"])[0] == 0


# -------------------------------------------------------------------------- status


def _status(target: Target, env: Any, timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
    """The file, whether it is what `install` would write, and the init system's
    enabled/active answers (each "unknown: why" when it cannot be asked within `timeout`)."""
    from msting.cli.unit_files import LAUNCHD_LABEL, SYSTEMD_UNIT

    installed = target.path.is_file()
    result: dict[str, Any] = {"ok": installed, **target.as_dict(), "installed": installed, "up_to_date": None,
                              "enabled": None, "active": None}
    if installed:
        try:
            expected = _render(target, env)
        except CommandError as exc:
            expected, result["up_to_date_error"] = None, exc.message
        try:
            result["up_to_date"] = expected is not None and target.path.read_text(encoding="utf-8") == expected
        except OSError as exc:
            result["up_to_date_error"] = f"cannot read {target.path}: {exc.strerror}"
    if target.live and target.init is InitSystem.SYSTEMD:
        if Path("/run/systemd/system").is_dir():
            for key, verb in (("enabled", "is-enabled"), ("active", "is-active")):
                result[key] = _answer(_systemctl(target, verb, SYSTEMD_UNIT), timeout)
        else:
            result["enabled"] = result["active"] = "unknown: systemd is not running on this machine"
    elif target.live:
        code, said = _query(["launchctl", "print", f"{_launchd_domain(target)}/{LAUNCHD_LABEL}"], timeout)
        result["active"] = f"unknown: {said}" if code is None else ("loaded" if code == 0 else "not loaded")
    pid = env.running_pid() if env.is_running() else None
    result["daemon"] = {"running": pid is not None, "pid": pid}
    return result


def summary(env: Any) -> dict[str, Any]:
    """The init-system part of `msting llm status`: the user's service file, or else the
    system one, and what the init system says of it (STATUS_QUERY_TIMEOUT per question);
    `installed` false, with the user file's path, when neither exists."""
    native = this_init_system()
    if native is None:
        return {"installed": False, "init_system": None, "scope": None, "path": None, "up_to_date": None,
                "enabled": None, "active": None, "reason": f"no supported init system on {sys.platform}"}
    targets = [_target(native, system, None, dry_run=False) for system in (False, True)]
    target = next((t for t in targets if t.path.is_file()), targets[0])
    if not target.path.is_file():
        return {"installed": False, **target.as_dict(), "up_to_date": None, "enabled": None, "active": None}
    r = _status(target, env, STATUS_QUERY_TIMEOUT)
    keys = ("installed", "init_system", "scope", "path", "up_to_date", "up_to_date_error", "enabled", "active")
    return {k: r[k] for k in keys if k in r}


def describe_summary(s: dict[str, Any]) -> str:
    """`summary` as one line of `msting llm status`."""
    if s.get("init_system") is None:
        return f"none ({s.get('reason')})"
    kind = "systemd unit" if s["init_system"] == str(InitSystem.SYSTEMD) else "launchd agent"
    if not s["installed"]:
        return f"no {kind} installed (`msting llm service install` installs one at {s['path']})"
    said = [f"{key} {s[key]}" for key in ("enabled", "active") if s.get(key) is not None]
    if s.get("up_to_date") is False:
        said.append("out of date (run `msting llm service install` again)")
    return f"{kind} ({s['scope']}) {s['path']}" + (f": {', '.join(said)}" if said else "")


def _print_status(term: Terminal, target: Target, r: dict[str, Any]) -> None:
    rows = [("init system", f"{target.init} ({target.scope} service)"),
            ("file", f"{target.path} ({'installed' if r['installed'] else 'not installed'})")]
    if r["installed"]:
        if r.get("up_to_date_error"):
            rows.append(("up to date", f"cannot tell: {r['up_to_date_error']}"))
        else:
            rows.append(("up to date", "yes" if r["up_to_date"] else
                         "no: it differs from what `msting llm service install` writes now (run it again)"))
    for key in ("enabled", "active"):
        if r[key] is not None:
            rows.append((key, str(r[key])))
    daemon = r["daemon"]
    rows.append(("daemon", f"running (pid {daemon['pid']})" if daemon["running"] else "not running"))
    for label, value in rows:
        term.info(f"{label:<12} {value}")
    if not r["installed"]:
        term.info("install it with `msting llm service install" + (" --system`" if target.system else "`"))
