"""``msting llm route --explain REQUEST.json``: which route, model and cache outcome the
daemon's request policies would give a request, and why, without executing it (the
daemon's ``POST /v1/route/explain``). REQUEST.json is the body of a chat completion
(``messages``), a completion or an execute (``prompt``), or an embeddings request
(``input``); ``-`` reads it from stdin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]
ExplainOpt = Annotated[Path, typer.Option("--explain", metavar="REQUEST.json", show_default=False,
                                          help="The request body to explain (a JSON file, or - for stdin).")]
#: A router model is asked for real: allow for its budget and a model still loading.
EXPLAIN_TIMEOUT = 60.0


def route(explain: ExplainOpt, json_: JsonOpt = False) -> None:
    """Explain which route (a rule, or the router model's decision) and which model a request would get, and whether the response cache would answer it.

    Nothing is generated; when the active profile has a router model, it is asked for its decision. Exit 0 with the explanation, 1 when the daemon is not running, 2 for a file that is not a JSON object or a body the daemon refuses.
    """
    term = Terminal(json_)
    with term.failures():
        body = _read_body(explain)
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        from msting.client import MstingError

        with connect(env, timeout=EXPLAIN_TIMEOUT) as client, daemon_errors(env):
            try:
                result = client.explain_route(body, timeout=EXPLAIN_TIMEOUT)
            except MstingError as exc:
                if exc.status in (400, 413):  # the body is what is wrong
                    raise CommandError(f"{explain}: {exc.message}", ExitCode.USAGE) from None
                raise
    if json_:
        term.emit_json(result)
    else:
        for line in explanation_lines(result):
            term.print(line, markup=False, highlight=False)
    raise typer.Exit(ExitCode.OK)


def _read_body(path: Path) -> dict[str, Any]:
    import json
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", ExitCode.USAGE) from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{path} is not JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(body, dict):
        raise CommandError(f"{path} must hold a JSON object (a request body), not {type(body).__name__}", ExitCode.USAGE)
    return body


def explanation_lines(result: dict[str, Any]) -> list[str]:
    """The explanation as text: the decision and why, what the rules saw, each route, the
    router model's decision, the cache."""
    route = result.get("route")
    model = result.get("model") or "the default model"
    by = {"rule": "its rule matched", "router-model": "the router model chose it"}.get(result.get("by") or "", "")
    head = f"route: {route} ({by}) -> {model}" if route else f"route: none -> {model}"
    lines = [f"profile: {result.get('profile')}", head, f"why: {result.get('why')}"]
    request = result.get("request") or {}
    seen = [f"capability {request.get('capability')}", f"about {request.get('prompt_tokens')} prompt tokens"]
    if request.get("user") is not None:
        seen.append(f"user {request['user']!r}")
    if request.get("tools"):
        seen.append("tools requested")
    if request.get("headers"):
        seen.append("headers " + ", ".join(sorted(request["headers"])))
    lines.append("request: " + ", ".join(seen))
    decision = result.get("router_model")
    if decision:
        lines.append(f"router model {decision.get('model')}: {decision.get('route') or 'no decision'} in "
                     f"{decision.get('ms')} ms of {decision.get('budget_ms'):g} ({decision.get('reason')}; "
                     f"{decision.get('prompt_tokens')} prompt + {decision.get('completion_tokens')} completion tokens)")
    routes = result.get("routes") or []
    if routes:
        lines.append("rules, in order:")
    for r in routes:
        mark = "matches" if r.get("matches") else "no"
        conditions = ", ".join(f"{k}={v}" for k, v in (r.get("conditions") or {}).items()) or "always"
        lines.append(f"  {r.get('route')} -> {r.get('to')}: {mark} [{conditions}]")
        for failed in r.get("failed") or []:
            lines.append(f"      {failed}")
    cache = result.get("cache") or {}
    if not cache.get("enabled"):
        lines.append("cache: off in this profile")
    else:
        state = "an answer is cached" if cache.get("cached") else "no answer cached"
        lines.append(f"cache: {cache.get('reason')}" + (f"; {state}" if cache.get("cacheable") else ""))
    return lines
