"""``msting llm start | stop | restart | wait``."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from msting.cli.output import Terminal

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]


def start(
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run the daemon in this process (for init systems) and exit with its code.")
    ] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds to wait for readiness (default: startup_timeout_sec + 10)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Start the daemon (if it is not running) and wait until it is ready."""
    term = Terminal(json_)
    if foreground:
        # The daemon validates the config itself and exits 78 on a bad one, which
        # systemd's RestartPreventExitStatus=78 understands (our own 2 it would not).
        from msting.cli.control import run_foreground

        raise typer.Exit(run_foreground())
    with term.failures():
        from msting.cli.common import load_env
        from msting.cli.control import start_daemon

        env = load_env()

        result = start_daemon(term, env, env.startup_timeout if timeout is None else timeout)
    if json_:
        term.emit_json(result)
    else:
        print_ready(term, result)


def stop(
    force: Annotated[bool, typer.Option("--force", help="Kill the daemon and its workers at once (SIGKILL).")] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option(
            "--timeout",
            min=0,
            metavar="S",
            help="Seconds to wait after SIGTERM before killing (default: stop_timeout_sec + drain_grace_sec + 5).",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Stop the daemon and its workers; removes its pidfile and socket."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env
        from msting.cli.control import stop_daemon

        env = load_env()
        result = stop_daemon(term, env, env.stop_timeout if timeout is None else timeout, force)
    if json_:
        term.emit_json(result)
    else:
        print_stopped(term, result)


def restart(
    force: Annotated[bool, typer.Option("--force", help="Kill the running daemon instead of stopping it gracefully.")] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds to wait for readiness after the start."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Stop the daemon (if it runs), then start it and wait until it is ready."""
    term = Terminal(json_)
    stopped: dict[str, Any] = {}
    with term.failures(json_extra={"stop": stopped}):
        from msting.cli.common import load_env
        from msting.cli.control import start_daemon, stop_daemon

        env = load_env()
        stopped.update(stop_daemon(term, env, env.stop_timeout, force))
        if not json_:
            print_stopped(term, stopped)
        started = start_daemon(term, env, env.startup_timeout if timeout is None else timeout)
    if json_:
        term.emit_json({"ok": True, "stop": stopped, "start": started})
    else:
        print_ready(term, started)


def wait(
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds to wait (default: startup_timeout_sec + 10)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Block until the daemon is ready (also while it is not up yet)."""
    term = Terminal(json_)
    with term.failures():
        import time

        from msting.cli.common import load_env
        from msting.cli.control import wait_ready

        env = load_env()
        started = time.monotonic()
        health = wait_ready(term, env, env.startup_timeout if timeout is None else timeout)
        waited = time.monotonic() - started
    if json_:
        term.emit_json({"ok": True, "ready": True, "pid": health.get("pid"), "waited_sec": round(waited, 3)})
    else:
        term.success(f"msting daemon is ready (pid {health.get('pid')})")


# ----------------------------------------------------------------------- printing


def print_ready(term: Terminal, result: dict[str, Any]) -> None:
    how = "was already running and is ready" if result.get("already_running") else f"is ready ({result['startup_sec']:.1f} s)"
    term.success(f"msting daemon {how}")
    for label, key in (("pid", "pid"), ("socket", "socket"), ("url", "url"), ("model", "default_model")):
        if result.get(key) is not None:
            term.info(f"  {label:<7} {result[key]}")
    if result.get("readiness") == "idle":
        term.info("  no model is loaded: the profile's models are on demand and load on their first request")


def print_stopped(term: Terminal, result: dict[str, Any]) -> None:
    if not result["was_running"]:
        term.info("msting daemon is not running")
        return
    how = "killed" if result["forced"] else "stopped"
    term.success(f"msting daemon {how} (pid {result['pid']}); no process, socket or pidfile remains")
