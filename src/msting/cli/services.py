"""``msting llm services`` and ``msting llm ping SERVICE``: the services behind the
daemon's router (its own workers ``local``, the offline ``stub`` and the configured
remote ones) and a live check of one service's URLs. How they read is in
msting.cli.services_view (shared with the services section of ``msting llm status``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import Terminal
from msting.cli.services_view import ping_verdict, print_ping, print_services, service_errors

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]
ServiceArg = Annotated[str, typer.Argument(metavar="SERVICE", help="A service name (`msting llm services` lists them).", show_default=False)]

#: A ping waits for every URL's check (each bounded by the service's short timeout).
PING_TIMEOUT = 60.0


# ------------------------------------------------------------------------- commands


def services(json_: JsonOpt = False) -> None:
    """List the services behind the daemon: status, models and each URL's state.

    For each service its API format, status, default model and models, and for each of its URLs the state (up, down, probing, cooling down until a time), latency, requests in flight and last error; above them the default service and the fallback chain.
    """
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        with connect(env) as client, daemon_errors(env), service_errors():
            body = client.services()
    if json_:
        term.emit_json(body)
    else:
        print_services(term, body)


def ping(service: ServiceArg, json_: JsonOpt = False) -> None:
    """Check each URL of a service now: ok or failed, latency, error.

    Exit 0 when at least one URL answers (the service is ready or degraded), 1 when none does, 2 for an unknown service.
    """
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        with connect(env, timeout=PING_TIMEOUT) as client, daemon_errors(env), service_errors():
            body = client.ping_service(service, timeout=PING_TIMEOUT)
    verdict = ping_verdict(body)
    result = {"ok": verdict in ("ready", "degraded"), **body, "verdict": verdict}
    if json_:
        term.emit_json(result)
    else:
        print_ping(term, body, verdict)
    raise typer.Exit(ExitCode.OK if result["ok"] else ExitCode.FAILED)
