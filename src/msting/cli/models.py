"""``msting llm models | load NAME | unload NAME``: the active profile's models and the
installed ones, and loading or unloading a model by hand."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal, fmt_ms
from msting.cli.status import connect, daemon_errors, fmt_bytes, fmt_keep_alive, fmt_worker

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]
ModelArg = Annotated[str, typer.Argument(metavar="NAME", help="A model of the active profile (`msting llm models` lists them), or 'default'.", show_default=False)]

ANNOUNCE_AFTER_SEC = 0.3  # `load` says "loading ..." once the daemon has not answered for this long
_STATE_STYLES = {"ready": "green", "loading": "yellow", "degraded": "yellow", "failed": "bold red", "stopped": "dim"}


# --------------------------------------------------------------------------- models


def models(json_: JsonOpt = False) -> None:
    """List the active profile's models (type, state, context length, what each file is:
    quantization, parameters, chat template, tools, code; workers and memory), then the
    installed models (pulled or imported) and whether the profile uses each."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        with connect(env) as client, daemon_errors(env):
            listed = client.models()
            info = client.status()
            installed = _installed(client)
    result = {
        "ok": True,
        "profile": info.get("profile"),
        "default_model": info.get("default_model"),
        "models": merge_models(listed, info.get("models") or []),
        "installed": installed,
    }
    if json_:
        term.emit_json(result)
    else:
        print_models(term, result)


def _installed(client: Any) -> list[dict[str, Any]] | None:
    """The installed models (GET /llm/installed), each with its ``details``; None from a
    daemon without the route."""
    from msting.client import MstingError

    try:
        rows = client.installed_models()
    except MstingError as exc:
        if exc.status == 404:
            return None
        raise
    return [{**row, "details": row_details(row)} for row in rows]


def row_details(row: dict[str, Any]) -> dict[str, Any] | None:
    """What an installed model's file is (its ``details``), None when unknown."""
    value = row.get("details")
    return value if isinstance(value, dict) and value else None


def merge_models(listed: list[dict[str, Any]], shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model of ``/v1/models``, with its workers and memory from
    ``/v1/status`` (an llm model's embeddings companion counts as part of it)."""
    rows = []
    for model in listed:
        name = model.get("id")
        parts = [m for m in shown if m.get("name") == name]
        main = next((m for m in parts if m.get("type") == model.get("type")), parts[0] if parts else {})
        workers = []
        for part in [main, *(p for p in parts if p is not main)]:
            role = "embeddings" if part is not main else None
            for w in part.get("workers") or []:
                workers.append({"pid": w.get("pid"), "state": w.get("state"), "slots": w.get("slots"), "slots_busy": w.get("slots_busy"),
                                "rss_bytes": w.get("rss_bytes"), "role": role})
        rss = [p.get("rss_bytes") for p in parts if isinstance(p.get("rss_bytes"), (int, float))]
        rows.append(
            {
                "name": name,
                "type": model.get("type"),
                "state": model.get("state"),
                "context_length": model.get("context_length"),
                "aliases": model.get("aliases") or [],
                "always_ready": main.get("always_ready"),
                "keep_alive_sec": main.get("keep_alive_sec"),
                "rss_bytes": sum(rss) if rss else None,
                "workers": workers,
                "details": model.get("details"),
            }
        )
    return rows


def print_models(term: Terminal, result: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = result["models"]
    if not rows:
        term.info(f"profile '{result.get('profile')}' has no models")
        if result.get("installed"):
            print_installed(term, result["installed"])
        return
    title = f"models of profile '{result['profile']}'" if result.get("profile") else "models"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col, justify in (
        ("model", "left"),
        ("type", "left"),
        ("state", "left"),
        ("context", "right"),
        ("quant", "left"),
        ("params", "right"),
        ("features", "left"),
        ("keep-alive", "right"),
        ("workers", "left"),
        ("rss", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=col != "workers")
    for m in rows:
        name = Text(str(m["name"]))
        if m["name"] == result.get("default_model"):
            name.append(" *", style="bold")
        state = str(m.get("state") or "?")
        ctx = m.get("context_length")
        details = m.get("details") or {}
        workers = [
            f"{fmt_worker(w)} {fmt_bytes(w.get('rss_bytes'), short=True)}" + (f" ({w['role']})" if w.get("role") else "")
            for w in m["workers"]
        ]
        table.add_row(
            name,
            str(m.get("type") or "?"),
            Text(state, style=_STATE_STYLES.get(state, "")),
            str(ctx) if ctx is not None else "-",
            str(details.get("quantization") or "-"),
            fmt_count(details.get("n_params")),
            ", ".join(features(details)) or "-",
            fmt_keep_alive(m),
            "\n".join(workers) or "-",
            fmt_bytes(m["rss_bytes"], short=True) if m.get("rss_bytes") else "-",
        )
    term.print(table)
    if result.get("installed"):
        print_installed(term, result["installed"])
    legend = "* default model; quant, params, features: read from the model file (chat: a chat template; tools: it renders tools; " \
             "code: a code model; vision: a projector); keep-alive = how long an idle model stays loaded (always: always-ready); workers: pid, state, slots busy/total, RSS"
    term.print(Text(legend, style="dim"))


def print_installed(term: Terminal, rows: list[dict[str, Any]]) -> None:
    """The installed models: what each file is, where it came from, whether the active
    profile uses it (a profile names one as ``source: installed:NAME``)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title="installed models", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  collapse_padding=True)
    for col, justify in (("name", "left"), ("quant", "left"), ("params", "right"), ("size", "right"), ("features", "left"),
                         ("in use", "left"), ("source", "left")):
        table.add_column(col, justify=justify, no_wrap=col not in ("source", "features"), overflow="fold")
    for row in rows:
        details = row.get("details") or {}
        use = Text("yes", style="green") if row.get("in_use") else Text("no", style="dim")
        if row.get("present") is False:
            use = Text("file missing", style="bold red")
        table.add_row(str(row.get("name", "?")), str(details.get("quantization") or "-"), fmt_count(details.get("n_params")),
                      fmt_bytes(row.get("size_bytes"), short=True), ", ".join(features(details)) or "-", use,
                      Text(str(row.get("source") or "-") + (" (linked)" if row.get("linked") else "")))
    term.print(table)


_FEATURES = (("instructed", "chat"), ("tooling", "tools"), ("coding", "code"))


def features(details: dict[str, Any]) -> list[str]:
    """The model file's flags as short words: chat, tools, code, vision, embeddings."""
    words = [word for key, word in _FEATURES if details.get(key)]
    kind = details.get("type")
    if kind == "vlm":
        words.append("vision")
    elif kind == "embeddings":
        words.append("embeddings")
    if details.get("is_mlx"):
        words.append("mlx")
    return words


def describe_details(details: dict[str, Any]) -> str:
    """One line of what a model file is: ``llm, llama, Q4_K_M, 1.5B params, context
    32768, 1.0 GiB; chat, tools``."""
    facts = [str(details.get(k)) for k in ("type", "arch", "quantization") if details.get(k)]
    if details.get("n_params"):
        facts.append(f"{fmt_count(details['n_params'])} params")
    if details.get("context_length"):
        facts.append(f"context {details['context_length']}")
    if details.get("size_bytes") is not None:
        facts.append(fmt_bytes(details["size_bytes"]))
    words = features(details)
    return ", ".join(facts) + (f"; {', '.join(words)}" if words else "")


def fmt_count(n: Any) -> str:
    """A parameter count: ``260K``, ``1.5B``; ``-`` when unknown."""
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return "-"
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


# ----------------------------------------------------------------------------- load


def load(
    name: ModelArg,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds the daemon waits for the model to be ready (default: startup_timeout_sec)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Load a model (if it is not loaded) and wait until it is ready and verified."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        wait = float(env.config.llm_service.startup_timeout_sec) if timeout is None else timeout
        with connect(env) as client, daemon_errors(env):
            # Said only when the load takes a while: an unknown name or an already
            # loaded model answers at once, and "loading" before an error misleads.
            announce = None
            if not json_:
                announce = threading.Timer(ANNOUNCE_AFTER_SEC, term.dim, args=(f"loading '{name}' (waiting up to {wait:g} s)",))
                announce.daemon = True
                announce.start()
            started = time.perf_counter()
            try:
                body = client.load_model(name, timeout=wait + 10.0, wait_sec=timeout)
            finally:
                if announce is not None:
                    announce.cancel()
            elapsed_ms = (time.perf_counter() - started) * 1000.0
    result = {"ok": True, **body, "elapsed_ms": round(elapsed_ms, 1)}
    if json_:
        term.emit_json(result)
        return
    model = body.get("model", name)
    backend = (body.get("info") or {}).get("backend")
    on = f" on {backend.upper()}" if isinstance(backend, str) else ""
    if body.get("already_loaded"):
        term.success(f"model '{model}' is already loaded{on} (state {body.get('state')})")
    else:
        load_ms = body.get("load_ms")
        took = fmt_ms(load_ms if isinstance(load_ms, (int, float)) else elapsed_ms)
        term.success(f"model '{model}' loaded{on} in {took} (state {body.get('state')})")


# --------------------------------------------------------------------------- unload


def unload(name: ModelArg, json_: JsonOpt = False) -> None:
    """Unload a model: its workers finish their current request and stop.

    An always-ready model of the active profile cannot be unloaded; switch profiles instead.
    """
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        with connect(env, timeout=env.stop_timeout) as client, daemon_errors(env):
            body = client.unload_model(name, timeout=env.stop_timeout)
    stopped = list(dict.fromkeys(body.get("stopped_pids") or []))  # in order, once each
    alive = list(dict.fromkeys(body.get("still_alive") or []))
    model = body.get("model", name)
    result = {"ok": not alive, **body, "stopped_pids": stopped, "still_alive": alive}
    with term.failures():
        if alive:
            raise CommandError(
                f"model '{model}' was unloaded but these workers are still alive: {', '.join(map(str, alive))}",
                ExitCode.FAILED,
                data=result,
            )
    if json_:
        term.emit_json(result)
    elif stopped:
        term.success(f"model '{model}' unloaded: stopped worker{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))}")
    else:
        term.success(f"model '{model}' was not loaded; nothing to stop (state {body.get('state')})")
