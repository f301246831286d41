"""``msting llm health``: run the readiness checks now, each with its result and timing.

The same three checks end ``msting llm install``: it succeeds only once a model has
really generated tokens.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import Terminal, fmt_ms

HEALTH_TIMEOUT = 5.0
PROBE_PROMPT = "Once upon a time"
PROBE_TOKENS = 10


@dataclass
class CheckResult:
    name: str  #: health, load, generate
    title: str
    ok: bool | None = None  #: None: skipped because an earlier check failed
    ms: float | None = None
    detail: str = ""
    timed_out: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ms"] = None if self.ms is None else round(self.ms, 2)
        return d


def run_checks(term: Terminal, env: Any, load_timeout: float) -> list[CheckResult]:
    """(1) /health answers within 5 s, (2) /models/load of the default model succeeds,
    (3) a 10-token /generate returns text. Stops at the first failure."""
    from msting.client import MstingError, RequestTimeout

    checks = [
        CheckResult("health", f"/health answers within {HEALTH_TIMEOUT:g} s"),
        CheckResult("load", "the default model loads (/models/load)"),
        CheckResult("generate", f"a {PROBE_TOKENS}-token /generate returns text"),
    ]
    steps = {"health": _check_health, "load": _check_load, "generate": _check_generate}
    client = env.client(timeout=HEALTH_TIMEOUT)
    try:
        failed = False
        for check in checks:
            if failed:
                term.step_skip(f"{check.title}: skipped")
                continue
            started = time.perf_counter()
            try:
                check.detail, check.data = steps[check.name](client, load_timeout)
                check.ok = True
            except MstingError as exc:
                check.ok = False
                check.timed_out = isinstance(exc, RequestTimeout) or exc.status == 504
                check.detail = str(exc)
                if check.name == "health" and exc.code == "daemon_unavailable":
                    check.detail += "; start it with `msting llm start`"
            except _CheckFailed as exc:
                check.ok = False
                check.detail = str(exc)
            check.ms = (time.perf_counter() - started) * 1000
            if check.ok:
                term.step_ok(f"{check.title}: {check.detail} [{fmt_ms(check.ms)}]")
            else:
                term.step_fail(f"{check.title}: {check.detail} [{fmt_ms(check.ms)}]")
                failed = True
    finally:
        client.close()
    return checks


class _CheckFailed(Exception):
    pass


def _check_health(client: Any, _load_timeout: float) -> tuple[str, dict[str, Any]]:
    body = client.health(timeout=HEALTH_TIMEOUT)
    if body.get("status") != "ok":
        raise _CheckFailed(f"unexpected answer: {body}")
    return f"ok (daemon pid {body.get('pid')}, version {body.get('version')})", body


def _check_load(client: Any, load_timeout: float) -> tuple[str, dict[str, Any]]:
    body = client.load_model("default", timeout=load_timeout)
    load_ms = body.get("load_ms")
    how = "already loaded" if body.get("already_loaded") else "loaded"
    took = f", load took {fmt_ms(load_ms)}" if isinstance(load_ms, (int, float)) else ""
    backend = (body.get("info") or {}).get("backend")
    on = f" on {backend.upper()}" if isinstance(backend, str) else ""
    return f"{body.get('model')} {how}{on} (state {body.get('state')}{took})", body


def _check_generate(client: Any, load_timeout: float) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    body = client.generate(PROBE_PROMPT, max_tokens=PROBE_TOKENS, timeout=load_timeout)
    elapsed = time.perf_counter() - started
    text = body.get("text") or ""
    if not text.strip():
        raise _CheckFailed(f"the model returned no text (finish_reason {body.get('finish_reason')})")
    tokens = (body.get("usage") or {}).get("completion_tokens")
    tps = (body.get("timings") or {}).get("predicted_per_second")
    if not isinstance(tps, (int, float)) and isinstance(tokens, int) and elapsed > 0:
        tps = tokens / elapsed
    body["tokens_per_sec"] = tps
    rate = f", {tps:.1f} tok/s" if isinstance(tps, (int, float)) else ""
    preview = " ".join(text.split())
    if len(preview) > 60:
        preview = preview[:57] + "..."
    return f"{tokens if tokens is not None else '?'} tokens{rate}: {preview!r}", body


def checks_json(checks: list[CheckResult]) -> dict[str, Any]:
    failed = next((c for c in checks if c.ok is False), None)
    return {
        "ok": failed is None,
        "failed_step": failed.name if failed else None,
        "checks": [c.as_dict() for c in checks],
    }


def health(
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds allowed for the model load and the generate (default: startup_timeout_sec + 10)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")] = False,
) -> None:
    """Run the readiness checks now: /health, model load, a 10-token generate."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        if not json_:
            term.info(f"checking the msting daemon at {env.socket_path}")
        checks = run_checks(term, env, env.startup_timeout if timeout is None else timeout)
    result = checks_json(checks)
    if json_:
        term.emit_json(result)
    elif result["ok"]:
        term.success("all checks passed")
    else:
        term.error(f"check '{result['failed_step']}' failed")
    raise typer.Exit(ExitCode.OK if result["ok"] else ExitCode.FAILED)
