"""``msting llm status``: the daemon, its readiness, its profile and memory, every
model's workers, the services behind the router (remote ones with each URL's state), and
whether an init system runs msting (msting.cli.init_service's `summary`, also shown when
no daemon runs).

Also the helpers the other commands that talk to a running daemon share (``profiles``,
``switch-profile``, ``models``, ``load``, ``unload``): :func:`connect`, :func:`daemon_errors`
and the formatting of bytes and keep-alives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import BUILTIN_MODEL_NOTE, CommandError, Terminal, fmt_duration, fmt_ms

if TYPE_CHECKING:
    from msting.client import MstingClient, MstingError

NOT_RUNNING = "msting daemon is not running (start it with `msting llm start`)"
NOT_ANSWERING = "the msting daemon is running but does not answer on its socket yet (starting?); `msting llm wait` waits for it"

_STATE_STYLES = {
    "ready": "green",
    "loading": "yellow",
    "degraded": "yellow",
    "failed": "bold red",
    "stopped": "dim",
}


def status(json_: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")] = False) -> None:
    """Show the daemon, its readiness, its models and services. Exit 0 if ready, 1 if not."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        info = collect_status(env, routing=not json_)
        info["init_service"] = init_service(env)
    if json_:
        term.emit_json(info)
    elif not info["running"]:
        term.info(NOT_RUNNING)
        for stale in info.get("stale", []):
            term.dim(f"stale file left by a dead daemon: {stale} (`msting llm stop` removes it)")
        term.info(f"init service: {describe_init_service(info['init_service'])}")
    else:
        print_status(term, info)
    raise typer.Exit(ExitCode.OK if info.get("ready") else ExitCode.FAILED)


def init_service(env: Any) -> dict[str, Any]:
    """Whether a systemd unit or launchd agent for msting is installed, enabled, active
    (the same inspection as `msting llm service status`, with short timeouts)."""
    from msting.cli import init_service as service

    try:
        return service.summary(env)
    except (CommandError, OSError) as exc:  # a status must show the rest whatever this says
        return {"installed": None, "init_system": None, "reason": f"cannot tell: {getattr(exc, 'message', exc)}"}


def describe_init_service(summary: dict[str, Any]) -> str:
    from msting.cli.init_service import describe_summary

    return describe_summary(summary)


def collect_status(env: Any, routing: bool = False) -> dict[str, Any]:
    """The ``/v1/status`` body plus ``running``; a not-running daemon needs no HTTP.

    `routing` (the text form) also asks ``/llm/services`` for the fallback chain's order
    (``fallback_chain``, with ``default_service``) when a service is in the chain; a
    daemon without that route just goes without."""
    base = {"socket": str(env.socket_path), "url": env.url}
    if not env.is_running():
        stale = [str(p) for p in (env.paths.pidfile, env.socket_path) if p.exists()]
        return {"running": False, "ready": False, "pid": None, **base, "message": NOT_RUNNING, "stale": stale}

    from msting.client import DaemonUnavailable, MstingError

    pid = env.running_pid()
    try:
        with env.client(timeout=5.0) as client:
            body = client.status()
            services = body.get("services") if isinstance(body.get("services"), list) else []
            if routing and any(isinstance(s, dict) and s.get("in_fallback_chain") for s in services):
                body.update(_routing(client))
    except DaemonUnavailable:
        reason = "the daemon is starting: its socket does not answer yet"
        return {"running": True, "ready": False, "pid": pid, **base, "readiness": {"status": "starting", "reason": reason}}
    except MstingError as exc:
        raise CommandError(f"the daemon (pid {pid}) did not answer /v1/status: {exc}", ExitCode.FAILED) from None
    return {"running": True, **body}


def _routing(client: MstingClient) -> dict[str, Any]:
    from msting.client import DaemonUnavailable, MstingError

    try:
        body = client.services()
    except DaemonUnavailable:
        raise
    except MstingError:  # a daemon from before the route: no services section
        return {}
    return {"default_service": body.get("default_service"), "fallback_chain": body.get("fallback_chain") or []}


# ------------------------------------------------- helpers for the daemon commands


def connect(env: Any, timeout: float = 5.0) -> MstingClient:
    """A client for the running daemon. No daemon: a CommandError with the same message
    and exit code (1) as ``status``, without any HTTP."""
    if not env.is_running():
        raise CommandError(NOT_RUNNING, ExitCode.FAILED, data={"running": False})
    return env.client(timeout=timeout)


@contextmanager
def daemon_errors(env: Any) -> Iterator[None]:
    """Turn the daemon's error answers into CommandErrors carrying its message.

    A timeout (the client's, or the daemon's 504) exits 3, anything else 1. A load
    failure's worker stderr is shown as a log tail.
    """
    from msting.client import MstingError

    try:
        yield
    except MstingError as exc:
        raise daemon_error(exc, env) from None


def daemon_error(exc: MstingError, env: Any = None) -> CommandError:
    from msting.client import DaemonUnavailable, RequestTimeout

    if isinstance(exc, DaemonUnavailable):
        if env is not None and not env.is_running():
            return CommandError(NOT_RUNNING, ExitCode.FAILED, data={"running": False})
        return CommandError(NOT_ANSWERING, ExitCode.FAILED, hint=exc.message, data={"running": True})
    if isinstance(exc, RequestTimeout):
        return CommandError(exc.message, ExitCode.TIMEOUT)
    data: dict[str, Any] = {"http_status": exc.status}
    if exc.code:
        data["error_code"] = exc.code
    err = exc.body.get("error") if isinstance(exc.body.get("error"), dict) else {}
    stderr = err.get("stderr") if isinstance(err.get("stderr"), str) else ""
    logs = {"worker stderr (last lines)": stderr.splitlines()[-20:]} if stderr.strip() else None
    code = ExitCode.TIMEOUT if exc.status == 504 else ExitCode.FAILED
    return CommandError(exc.message, code, logs=logs, data=data)


def fmt_bytes(value: Any, short: bool = False) -> str:
    """``1.5 GiB`` (``short``: ``1.5G``, for narrow table columns); ``-`` when unknown."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    if short:
        return f"{size:.0f}{unit[0]}" if unit == "B" or size >= 100 else f"{size:.1f}{unit[0]}"
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def fmt_keep_alive(model: dict[str, Any]) -> str:
    """``always`` for an always-ready model, else how long it stays loaded when idle."""
    if "keep_alive_sec" not in model:  # a daemon that does not report it
        return "-"
    sec = model["keep_alive_sec"]
    if sec is None:
        return "always"
    sec = float(sec)
    if sec < 0:
        return "kept"  # a request's negative keep_alive: loaded until unloaded
    for unit, size in (("h", 3600), ("m", 60)):
        if sec >= size and sec % size == 0:
            return f"{sec / size:g}{unit}"
    return fmt_duration(sec) if sec >= 60 else f"{sec:g}s"


def fmt_worker(worker: dict[str, Any]) -> str:
    """``1234 BUSY 3/4``: pid, state, and slots busy / total once it serves."""
    text = f"{worker.get('pid') or '-'} {worker.get('state', '?')}"
    slots, busy = worker.get("slots"), worker.get("slots_busy")
    if isinstance(slots, int) and isinstance(busy, int):
        text += f" {busy}/{slots}"
    return text


def fmt_threads(worker: dict[str, Any]) -> str | None:
    """A worker's thread count and how it was chosen: ``n_threads 2, measured: 2
    threads decoded 61.2 tok/s against 37.9 with 1``, or ``n_threads 4, as configured``."""
    threads = worker.get("threads") if isinstance(worker.get("threads"), dict) else {}
    chosen = threads.get("chosen", worker.get("n_threads"))
    if chosen is None:
        return None
    text = f"n_threads {chosen}"
    if threads.get("source") == "measured":
        text += ", measured" + (f": {threads['reason']}" if threads.get("reason") else "")
    elif threads.get("source") == "spec":
        text += ", as configured"
    return text


_UNLOAD_REASONS = {
    "keep_alive": "past its keep-alive",
    "power_saving": "power saving: memory is short",
}


def fmt_unload(model: dict[str, Any]) -> str | None:
    """When an on-demand model unloads: ``unloads in 4m12s (past its keep-alive, set by
    a request)``, ``kept loaded (a request's keep_alive)``; None when there is nothing
    to say (always ready, not loaded, busy, or a daemon that does not report it)."""
    unload = model.get("unload") if isinstance(model.get("unload"), dict) else {}
    reason = unload.get("reason")
    by = ", set by a request" if model.get("keep_alive_source") == "request" else ""
    if reason == "kept_loaded":
        return "kept loaded (a request's keep_alive)"
    if reason not in _UNLOAD_REASONS or not isinstance(unload.get("in_sec"), (int, float)):
        return None
    wait = float(unload["in_sec"])
    when = time.strftime("%H:%M:%S", time.localtime(float(unload["at"]))) if isinstance(unload.get("at"), (int, float)) else "?"
    return f"unloads in {fmt_duration(wait)} at {when} ({_UNLOAD_REASONS[reason]}{by})"


def model_details(model: dict[str, Any]) -> str | None:
    """What the table has no room for: when an on-demand model unloads, the threads
    choice of the model's workers (once for those that chose the same count the same
    way, with the first one's figures), and the prompt tokens they reused from a slot's
    cache."""
    choices: dict[str, str] = {}
    unload = fmt_unload(model)
    if unload:
        choices["unload"] = unload
    for w in model.get("workers") or []:
        text = fmt_threads(w)
        if text:
            choices.setdefault(text.split(":")[0], text)
    parts = list(choices.values())
    cached = model.get("cached_tokens")
    if isinstance(cached, int) and model.get("type") != "embeddings":
        parts.append(f"{cached} prompt tokens reused from the cache")
    return "; ".join(parts) or None


def model_labels(models: list[dict[str, Any]]) -> list[str]:
    """Row labels: an llm model's embeddings companion (same name) reads ``NAME (embeddings)``."""
    llm_names = {m.get("name") for m in models if m.get("type") != "embeddings"}
    return [
        f"{m.get('name', '?')} (embeddings)" if m.get("type") == "embeddings" and m.get("name") in llm_names else str(m.get("name", "?"))
        for m in models
    ]


def fmt_memory(memory: dict[str, Any]) -> str:
    parts = [
        f"daemon {fmt_bytes(memory.get('daemon_rss_bytes'))}",
        f"workers {fmt_bytes(memory.get('workers_rss_bytes'))}",
        f"available {fmt_bytes(memory.get('available_bytes'))}",
    ]
    budget = memory.get("budget_bytes")
    parts.append(f"budget {fmt_bytes(budget)}" if budget is not None else "no budget")
    if memory.get("pressure"):
        parts.append(f"short: {memory['pressure']} (power saving unloads idle on-demand models)")
    return " · ".join(parts)


def fmt_spare(spare: dict[str, Any]) -> str | None:
    """The warm spare worker: pid and RSS, or why there is none."""
    if not spare.get("enabled"):
        return "off (llm_service.warm_spare)"
    used = f", used for {spare.get('handed_out', 0)} worker start(s)"
    if spare.get("pid") is None:
        return f"starting once no model is loading{used}"
    rss = spare.get("rss_bytes")
    return f"pid {spare['pid']}" + (f", {fmt_bytes(rss)}" if rss else "") + used


def fmt_switch(job: dict[str, Any]) -> str:
    """One line for a running switch job: target, current step, progress."""
    steps = job.get("steps") or []
    current = next((s for s in steps if s.get("state") == "running"), None)
    where = ""
    if current is not None:
        where = f": {current.get('name')}"
        if current.get("detail"):
            where += f" ({current['detail']})"
    progress = job.get("progress")
    fraction = progress.get("fraction") if isinstance(progress, dict) else progress  # a job object, or an older daemon's number
    pct = f", {float(fraction):.0%} done" if isinstance(fraction, (int, float)) else ""
    return f"to '{job.get('target')}' (job {job.get('id')}){where}{pct}"


# -------------------------------------------------------------------------- printing


def print_status(term: Terminal, info: dict[str, Any]) -> None:
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
        ("switching", fmt_switch(info["switch"]) if info.get("switch") else None),
        ("default model", info.get("default_model")),
        ("memory", fmt_memory(info["memory"]) if isinstance(info.get("memory"), dict) else None),
        ("warm spare", fmt_spare(info["spare"]) if isinstance(info.get("spare"), dict) else None),
        ("config", info.get("config_file")),
        ("log", info.get("log_file")),
        ("init service", describe_init_service(info["init_service"]) if isinstance(info.get("init_service"), dict) else None),
    ]
    for label, value in rows:
        if value is not None:
            grid.add_row(label, Text(str(value)))
    term.print(Panel(grid, title="msting daemon", title_align="left", expand=False))

    models = info.get("models") or []
    if not models:
        term.info("no models configured")
        _services_section(term, info)
        return
    rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    details: list[tuple[str, str]] = []
    for label, m in zip(model_labels(models), models):
        workers = m.get("workers") or []
        detail = model_details(m)
        if detail and m.get("state") != "stopped":
            details.append((label, detail))
        last_error = m.get("last_error") or next((w.get("last_error") for w in workers if w.get("last_error")), None)
        if last_error:
            fatal = m.get("fatal") if isinstance(m.get("fatal"), dict) else None
            errors.append((label, str(last_error) + (f" (FATAL: {fatal['next']})" if fatal and fatal.get("next") else "")))
        model_state = str(m.get("state", "?"))
        name = Text(label)
        if m.get("name") == info.get("default_model") and m.get("type") != "embeddings":
            name.append(" *", style="bold")
        tps = m.get("tokens_per_sec")
        queue = m.get("queue_depth")
        in_flight = m.get("in_flight")
        rss = m.get("rss_bytes")
        rows.append(
            {
                "model": name,
                "state": Text(model_state, style=_STATE_STYLES.get(model_state, "")),
                "workers": "\n".join(fmt_worker(w) for w in workers) or "-",
                "rss": fmt_bytes(rss, short=True) if rss else "-",
                "keep": fmt_keep_alive(m),
                "restarts": str(m.get("restarts", 0)),
                "load": _ms(m.get("load_ms")),
                "tok/s": f"{tps:.1f}" if isinstance(tps, (int, float)) else "-",
                "queue": "-" if queue is None else (f"{queue}+{in_flight}" if in_flight else str(queue)),
                "served": str(m.get("requests_served", "-")),
            }
        )
    # A narrow terminal drops the throughput columns rather than cut a state short.
    dropped: list[str] = []
    table = _models_table(rows, dropped)
    unbounded = term.out.options.update_width(10_000)  # measure the natural width, not the clamped one
    for col in _OPTIONAL_COLUMNS:
        if term.out.measure(table, options=unbounded).maximum <= term.out.width:
            break
        dropped.append(col)
        table = _models_table(rows, dropped)
    term.print(table)
    legend = ("* default model; workers: pid, state, slots busy/total; keep = how long an idle model stays loaded "
              "(always: always-ready, never unloaded; kept: until unloaded); queue = waiting(+running)")
    if dropped:
        legend += f"; {', '.join(dropped)} hidden: the terminal is too narrow (--json has them)"
    term.print(Text(legend, style="dim"))
    for name, detail in details:
        term.print(Text(f"{name}: {detail}"))
    for name, error in errors:
        line = Text(f"last error ({name}): ", style="bold red")
        line.append(error)
        term.print(line)
    _services_section(term, info)
    events = info.get("events") or []
    if events:
        term.print(Text("recent events", style="bold"))
        for event in reversed(events[:5]):
            when = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
            who = event.get("worker") or "daemon"
            term.print(Text(f"  {when}  {event['kind']:<13} {who}  {event.get('detail') or ''}".rstrip(), style="dim"))
    builtin = dict.fromkeys(str(m.get("name")) for m in models if m.get("builtin") or m.get("name") == "msting-tiny")
    for name in builtin:  # once per model, not again for its embeddings companion
        term.print(Text(f"note: {name} is the {BUILTIN_MODEL_NOTE}", style="yellow"))


def _services_section(term: Terminal, info: dict[str, Any]) -> None:
    services = info.get("services")
    if isinstance(services, list):
        from msting.cli.services_view import print_services_section

        print_services_section(term, services, info.get("fallback_chain"), info.get("default_service"))


_COLUMNS = ("model", "state", "workers", "rss", "keep", "restarts", "load", "tok/s", "queue", "served")
#: Left out, in this order, when the table would not fit the terminal.
_OPTIONAL_COLUMNS = ("tok/s", "served", "load")


def _models_table(rows: list[dict[str, Any]], dropped: list[str]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title="models", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    columns = [c for c in _COLUMNS if c not in dropped]
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "state", "workers") else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def _ms(value: Any) -> str:
    return fmt_ms(value) if isinstance(value, (int, float)) else "-"
