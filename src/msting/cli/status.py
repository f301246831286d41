"""``msting llm status``: the daemon, its readiness, and every model's workers."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import BUILTIN_MODEL_NOTE, CommandError, Terminal, fmt_duration, fmt_ms

NOT_RUNNING = "msting daemon is not running (start it with `msting llm start`)"

_STATE_STYLES = {
    "ready": "green",
    "loading": "yellow",
    "degraded": "yellow",
    "failed": "bold red",
    "stopped": "dim",
}


def status(json_: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")] = False) -> None:
    """Show the daemon, its readiness and its models. Exit 0 if ready, 1 if not."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        info = collect_status(env)
    if json_:
        term.emit_json(info)
    elif not info["running"]:
        term.info(NOT_RUNNING)
        for stale in info.get("stale", []):
            term.dim(f"stale file left by a dead daemon: {stale} (`msting llm stop` removes it)")
    else:
        print_status(term, info)
    raise typer.Exit(ExitCode.OK if info.get("ready") else ExitCode.FAILED)


def collect_status(env: Any) -> dict[str, Any]:
    """The ``/v1/status`` body plus ``running``; a not-running daemon needs no HTTP."""
    base = {"socket": str(env.socket_path), "url": env.url}
    if not env.is_running():
        stale = [str(p) for p in (env.paths.pidfile, env.socket_path) if p.exists()]
        return {"running": False, "ready": False, "pid": None, **base, "message": NOT_RUNNING, "stale": stale}

    from msting.client import DaemonUnavailable, MstingError

    pid = env.running_pid()
    try:
        with env.client(timeout=5.0) as client:
            body = client.status()
    except DaemonUnavailable:
        reason = "the daemon is starting: its socket does not answer yet"
        return {"running": True, "ready": False, "pid": pid, **base, "readiness": {"status": "starting", "reason": reason}}
    except MstingError as exc:
        raise CommandError(f"the daemon (pid {pid}) did not answer /v1/status: {exc}", ExitCode.FAILED) from None
    return {"running": True, **body}


def print_status(term: Terminal, info: dict[str, Any]) -> None:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    readiness = info.get("readiness") or {}
    ready = bool(info.get("ready"))
    state = Text("● ready", style="bold green") if ready else Text(f"● {readiness.get('status') or 'not ready'}", style="bold yellow")
    if not ready and readiness.get("reason"):
        state.append(f"  {readiness['reason']}", style="yellow")

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("readiness", state)
    uptime = info.get("uptime_sec")
    if uptime is None and info.get("started_at"):
        uptime = time.time() - float(info["started_at"])
    rows = [
        ("pid", info.get("pid")),
        ("version", info.get("version")),
        ("uptime", fmt_duration(uptime) if uptime is not None else None),
        ("socket", info.get("socket")),
        ("url", info.get("url")),
        ("profile", info.get("profile")),
        ("default model", info.get("default_model")),
        ("config", info.get("config_file")),
        ("log", info.get("log_file")),
    ]
    for label, value in rows:
        if value is not None:
            grid.add_row(label, Text(str(value)))
    term.print(Panel(grid, title="msting daemon", title_align="left", expand=False))

    models = info.get("models") or []
    if not models:
        term.info("no models configured")
        return
    table = Table(title="models", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col in ("model", "state", "workers", "restarts", "load", "tok/s", "queue", "served"):
        justify = "left" if col in ("model", "state", "workers") else "right"
        table.add_column(col, justify=justify, no_wrap=True)
    errors: list[tuple[str, str]] = []
    for m in models:
        workers = m.get("workers") or []
        pids = ", ".join(f"{w.get('pid') or '-'} {w.get('state', '?')}" for w in workers) or "-"
        last_error = m.get("last_error") or next((w.get("last_error") for w in workers if w.get("last_error")), None)
        if last_error:
            errors.append((str(m.get("name", "?")), str(last_error)))
        model_state = str(m.get("state", "?"))
        name = Text(str(m.get("name", "?")))
        if m.get("name") == info.get("default_model"):
            name.append(" *", style="bold")
        tps = m.get("tokens_per_sec")
        queue = m.get("queue_depth")
        in_flight = m.get("in_flight")
        table.add_row(
            name,
            Text(model_state, style=_STATE_STYLES.get(model_state, "")),
            pids,
            str(m.get("restarts", 0)),
            _ms(m.get("load_ms")),
            f"{tps:.1f}" if isinstance(tps, (int, float)) else "-",
            "-" if queue is None else (f"{queue}+{in_flight}" if in_flight else str(queue)),
            str(m.get("requests_served", "-")),
        )
    term.print(table)
    legend = "* default model; queue = waiting(+running)"
    term.print(Text(legend, style="dim"))
    for name, error in errors:
        line = Text(f"last error ({name}): ", style="bold red")
        line.append(error)
        term.print(line)
    events = info.get("events") or []
    if events:
        term.print(Text("recent events", style="bold"))
        for event in reversed(events[:5]):
            when = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
            who = event.get("worker") or "daemon"
            term.print(Text(f"  {when}  {event['kind']:<13} {who}  {event.get('detail') or ''}".rstrip(), style="dim"))
    for m in models:
        if m.get("builtin") or m.get("name") == "msting-tiny":
            term.print(Text(f"note: {m.get('name')} is the {BUILTIN_MODEL_NOTE}", style="yellow"))


def _ms(value: Any) -> str:
    return fmt_ms(value) if isinstance(value, (int, float)) else "-"
