"""How the services behind the daemon's router read for a human: ``msting llm services``,
``msting llm ping`` and the services section of ``msting llm status``, and the one
errors they share (:func:`service_errors`). At import time only the standard library and
the CLI's output helpers; rich when something is printed.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal, fmt_ms

SERVICES_PATH = "/llm/services"
#: `services` names at most this many models of a service; --json has them all.
MODELS_SHOWN = 6
OLD_DAEMON = "the running daemon has no /llm/services route (it is older than this msting); restart it with `msting llm restart`"

_STATUS_STYLES = {"ready": "green", "degraded": "yellow", "failed": "bold red", "loading": "yellow", "stopped": "dim"}
_URL_STYLES = {"up": "green", "probing": "yellow", "cooling_down": "yellow", "down": "bold red"}


# ------------------------------------------------------------------------- the daemon


@contextmanager
def service_errors() -> Iterator[None]:
    """The daemon's answers that are the user's to fix, as command errors: an unknown
    service (exit 2), a daemon older than the /llm/services routes (exit 1)."""
    from msting.client import MstingError

    try:
        yield
    except MstingError as exc:
        data = {"http_status": exc.status, "error_code": exc.code}
        if exc.code == "service_not_found":
            raise CommandError(exc.message, ExitCode.USAGE, data=data) from None
        if exc.code == "route_not_found":
            raise CommandError(OLD_DAEMON, ExitCode.FAILED, data=data) from None
        raise


def ping_verdict(body: dict[str, Any]) -> str:
    """ready (every URL answered), degraded (some did), failed (none did); a service
    without URLs (local, stub) is what the daemon says it is."""
    urls = [u for u in body.get("urls") or [] if isinstance(u, dict)]
    if not urls:
        return str(body.get("status") or "failed")
    answered = sum(1 for u in urls if u.get("ok"))
    if answered == len(urls):
        return "ready"
    return "degraded" if answered else "failed"


# ------------------------------------------------------------------------- formatting


def clock(ts: Any) -> str:
    """A unix time as local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(float(ts)))


def fmt_url_state(url: dict[str, Any]) -> str:
    """``up``, ``down``, ``probing``, ``cooling down until HH:MM:SS`` (and why, when the
    upstream asked to wait)."""
    state = str(url.get("state") or "?")
    if state == "cooling_down":
        until = url.get("cooling_until")
        text = f"cooling down until {clock(until)}" if isinstance(until, (int, float)) else "cooling down"
        reason = url.get("reason")
        if reason and reason != "requests failed":
            text += f" ({reason})"
        return text
    return state


def fmt_models(service: dict[str, Any], limit: int | None = MODELS_SHOWN) -> str:
    models = [str(m) for m in service.get("models") or []]
    if not models:
        return "no models listed"
    count = f"{len(models)} model{'s' if len(models) != 1 else ''}"
    if limit is None:
        return count
    shown = ", ".join(models[:limit])
    more = f", … {len(models) - limit} more" if len(models) > limit else ""
    return f"{count}: {shown}{more}"


def fmt_chain(chain: list[Any] | None) -> str:
    return " → ".join(str(s) for s in chain) if chain else "none"


def _status_text(service: dict[str, Any]) -> Any:
    from rich.text import Text

    status = str(service.get("status") or "?")
    text = Text(status, style=_STATUS_STYLES.get(status, ""))
    if service.get("reason"):
        text.append(f": {service['reason']}", style=_STATUS_STYLES.get(status, ""))
    return text


def _roles(service: dict[str, Any], chain: list[Any]) -> list[str]:
    roles = []
    if service.get("is_default"):
        roles.append("default")
    name = service.get("name")
    if name in chain:
        roles.append(f"fallback {chain.index(name) + 1} of {len(chain)}")
    elif service.get("in_fallback_chain"):
        roles.append("in the fallback chain")
    return roles


def _last_error(url: dict[str, Any], now: float) -> str:
    error = url.get("last_error")
    if not error:
        return ""
    at = url.get("last_error_at")
    if isinstance(at, (int, float)) and url.get("state") == "up":
        from msting.cli.output import fmt_duration

        return f"{error} ({fmt_duration(max(0.0, now - at))} ago)"
    return str(error)


def urls_table(urls: list[dict[str, Any]]) -> Any:
    """Each URL: state, latency, requests in flight, served / failed (the last errors
    go below the table: they are long)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("url", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("in flight", justify="right", no_wrap=True)
    table.add_column("served", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    for url in urls:
        latency = url.get("latency_ms")
        table.add_row(
            str(url.get("url")),
            Text(fmt_url_state(url), style=_URL_STYLES.get(str(url.get("state")), "")),
            fmt_ms(latency) if isinstance(latency, (int, float)) else "-",
            str(url.get("in_flight", 0)),
            str(url.get("served", 0)),
            str(url.get("failed", 0)),
        )
    return table


def print_urls(term: Terminal, urls: list[dict[str, Any]], now: float | None = None, indent: int = 2) -> None:
    from rich.padding import Padding
    from rich.text import Text

    now = time.time() if now is None else now
    term.print(Padding(urls_table(urls), (0, 0, 0, indent), expand=False))
    for url in urls:
        if url.get("last_error"):
            line = Text()
            line.append(f"last error of {url.get('url')}: ", style="bold red" if url.get("state") != "up" else "dim")
            line.append(_last_error(url, now), style="dim" if url.get("state") == "up" else "")
            _indented(term, line, indent)


def _indented(term: Terminal, text: Any, indent: int = 2) -> None:
    """`text` indented, its wrapped lines too."""
    from rich.padding import Padding

    term.print(Padding(text, (0, 0, 0, indent), expand=False))


def print_services(term: Terminal, body: dict[str, Any], now: float | None = None) -> None:
    """The /llm/services body for a human: a header with the default service and the
    fallback chain, then a block per service."""
    from rich.text import Text

    chain = list(body.get("fallback_chain") or [])
    head = Text()
    head.append("default service: ", style="bold")
    head.append(str(body.get("default_service") or "?"))
    head.append(" · ")
    head.append("fallback chain: ", style="bold")
    head.append(fmt_chain(chain))
    term.print(head)
    for service in body.get("data") or []:
        if not isinstance(service, dict):
            continue
        term.print()
        line = Text()
        line.append(str(service.get("name", "?")), style="bold")
        line.append(f" ({service.get('api_format', '?')})  ")
        line.append_text(_status_text(service))
        roles = _roles(service, chain)
        if roles:
            line.append(f"  [{', '.join(roles)}]", style="cyan")
        term.print(line)
        default_model = service.get("default_model")
        facts = [f"default model {default_model}" if default_model else "no default model", fmt_models(service)]
        if service.get("key_source") not in (None, "none"):
            facts.append(f"API key from {service['key_source']}")
        if service.get("api_format") == "stub":
            facts.append("offline: its replies are not from a model")
        elif service.get("api_format") == "local":
            facts.append("the daemon's own workers")
        _indented(term, Text(" · ".join(facts)))
        urls = [u for u in service.get("urls") or [] if isinstance(u, dict)]
        if urls:
            print_urls(term, urls, now)


def print_ping(term: Terminal, body: dict[str, Any], verdict: str) -> None:
    from rich.text import Text

    urls = [u for u in body.get("urls") or [] if isinstance(u, dict)]
    line = Text()
    line.append(str(body.get("name", "?")), style="bold")
    line.append(": ")
    line.append(verdict, style=_STATUS_STYLES.get(verdict, ""))
    if urls:
        answered = sum(1 for u in urls if u.get("ok"))
        line.append(f" ({answered} of {len(urls)} URL{'s' if len(urls) != 1 else ''} answered)")
    elif body.get("reason"):
        line.append(f" ({body['reason']})")
    if urls and body.get("status") and body.get("status") != verdict:
        line.append(f"; the daemon reports it {body['status']}", style="dim")
    term.print(line)
    if not urls:
        term.dim("  no URLs to check: a built-in service (its status is the daemon's own)")
    for url in urls:
        row = Text()
        if url.get("ok"):
            row.append("✓ ", style="green")
            row.append(str(url.get("url")))
            row.append("  ok", style="green")
            latency = url.get("latency_ms")
            row.append(f"  {fmt_ms(latency) if isinstance(latency, (int, float)) else '-'}")
            if isinstance(url.get("models"), int):
                row.append(f"  {url['models']} model{'s' if url['models'] != 1 else ''}", style="dim")
        else:
            row.append("✗ ", style="red")
            row.append(str(url.get("url")))
            row.append("  failed", style="bold red")
            if url.get("error"):
                row.append(f"  {url['error']}")
        _indented(term, row)


def print_services_section(term: Terminal, services: list[dict[str, Any]], chain: list[Any] | None = None,
                           default: str | None = None) -> None:
    """``msting llm status``'s few lines on the services: each remote one (and the stub
    when it is the default or in the fallback chain) with its status and each URL's
    state. Nothing when only the built-in services exist and `local` is the default."""
    from rich.text import Text

    services = [s for s in services if isinstance(s, dict)]
    if default is None:
        default = next((str(s.get("name")) for s in services if s.get("is_default")), None)
    remote = [s for s in services if not s.get("builtin")]
    if not remote and default in (None, "local"):
        return
    if chain is None:
        chain = [s.get("name") for s in services if s.get("in_fallback_chain")]  # order unknown: the listing's
    # `local` is the rest of `status`; the stub only matters where requests may end up in it.
    shown = [s for s in services if not s.get("builtin") or s.get("name") != "local" and (s.get("is_default") or s.get("in_fallback_chain"))]
    title = Text("services", style="bold")
    title.append(f"  default {default or '?'} · fallback {fmt_chain(chain)}", style="dim")
    term.print(title)
    width = max(len(str(s.get("name", "?"))) for s in shown)
    for service in shown:
        line = Text(f"{str(service.get('name', '?')):<{width}}  ")
        line.append_text(_status_text(service))
        if not service.get("builtin"):
            line.append(f"  {service.get('api_format', '?')} · {fmt_models(service, limit=None)}", style="dim")
        _indented(term, line)
        for url in service.get("urls") or []:
            if not isinstance(url, dict):
                continue
            row = Text(f"{url.get('url')}  ")
            row.append(fmt_url_state(url), style=_URL_STYLES.get(str(url.get("state")), ""))
            latency = url.get("latency_ms")
            if isinstance(latency, (int, float)) and url.get("state") == "up":
                row.append(f"  {fmt_ms(latency)}", style="dim")
            if url.get("in_flight"):
                row.append(f"  {url['in_flight']} in flight", style="dim")
            if url.get("state") != "up" and url.get("last_error"):
                row.append(f"  {url['last_error']}", style="dim")
            _indented(term, row, width + 6)
