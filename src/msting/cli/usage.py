"""``msting llm usage``: what the requests used and cost, from the daemon's usage rows
(GET /v1/usage), grouped by service, model, day or client, with totals."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]
GroupOpt = Annotated[str, typer.Option("--group-by", "-g", help="service, model, day or client.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="From this time: an ISO 8601 date or time, Unix seconds, or an age (24h, 7d).",
                                              show_default=False)]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Before this time (the same forms as --since).", show_default=False)]

COLUMNS = (("requests", "requests"), ("prompt_tokens", "prompt"), ("completion_tokens", "completion"), ("cached_tokens", "cached"),
           ("cost_usd", "cost $"), ("cache_hits", "cache hits"), ("errors", "errors"), ("fallbacks", "fallbacks"))


def usage(group_by: GroupOpt = "service", since: SinceOpt = None, until: UntilOpt = None, json_: JsonOpt = False) -> None:
    """Show what the requests used and cost: requests, tokens, cost, cache hits, errors and fallbacks per group, with totals.

    Costs are at the prices of config.yaml (`per_model.<model>.price` of each service); a model without one costs 0.
    """
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors
        from msting.client import MstingError

        env = load_env()
        with connect(env) as client, daemon_errors(env):
            try:
                body = client.usage(group_by, since, until)
            except MstingError as exc:
                if exc.code == "invalid_parameter":
                    raise CommandError(exc.message, ExitCode.USAGE, data={"http_status": exc.status, "error_code": exc.code}) from None
                raise
    if json_:
        term.emit_json(body)
    else:
        _print(term, body)


def _cell(key: str, value: Any) -> str:
    if key == "cost_usd":
        return f"{value:.6f}"
    return str(value)


def _print(term: Terminal, body: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column(body["group_by"])
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    for group in body["groups"]:
        table.add_row(group["key"] or "(none)", *(_cell(k, group[k]) for k, _ in COLUMNS))
    table.add_row("total", *(_cell(k, body["totals"][k]) for k, _ in COLUMNS), style="bold")
    term.print(table)
