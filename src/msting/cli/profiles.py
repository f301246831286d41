"""``msting llm profiles`` and ``msting llm switch-profile NAME``.

A switch runs inside the daemon as a job (``POST /v1/profiles/switch`` answers 202 with
it); this command follows ``GET /v1/jobs/{id}``, prints each step as it finishes, and
exits 0 only once the job succeeded and ``/v1/status`` reports the new profile ready.
Interrupting the command does not stop the switch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal, fmt_ms
from msting.cli.status import connect, daemon_errors, fmt_bytes

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]

#: How often the job is polled.
POLL_SEC = 0.1
#: After the job succeeded, how long /v1/status may take to report the profile ready.
SETTLE_SEC = 5.0

_MODES = {
    "parallel": "the new models load while the current ones keep serving",
    "drain-first": "not enough memory for both: new requests are held while the current models drain and stop, then the new ones load",
    "refused": "not enough memory for this profile even after unloading the current models",
}
_STEP_MARKS = {"done": ("✓", "green"), "failed": ("✗", "red"), "skipped": ("-", "dim")}


# ------------------------------------------------------------------------- profiles


def profiles(json_: JsonOpt = False) -> None:
    """List the profiles: models, default model, estimated memory, and whether each is valid."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env

        env = load_env()
        with connect(env) as client, daemon_errors(env):
            body = client.profiles(timeout=30.0)  # the daemon reads every model file's header
    if json_:
        term.emit_json({"ok": True, **body})
    else:
        print_profiles(term, body)


def print_profiles(term: Terminal, body: dict[str, Any]) -> None:
    from rich.text import Text

    listed = body.get("data") or []
    if not listed:
        term.info("no profiles")
        return
    active = body.get("active")
    for p in listed:
        is_active = bool(p.get("active")) or p.get("name") == active
        valid = p.get("valid", True)
        head = Text("● " if is_active else "  ", style="bold green")
        head.append(str(p.get("name", "?")), style="bold")
        head.append(f"  default {p.get('default_model') or '-'}")
        head.append(f"  ~{fmt_bytes(p.get('estimated_bytes'))}" if p.get("estimated_bytes") else "")
        if not valid:
            head.append(f"  invalid ({_count(len(p.get('problems') or []), 'problem')})", style="bold red")
        term.print(head)
        if p.get("description"):
            term.print(Text(f"    {p['description']}", style="dim"))
        term.print(Text("    models: " + (", ".join(_model_label(m) for m in p.get("models") or []) or "-")))
        for problem in p.get("problems") or []:
            term.print(Text(f"    - {problem}", style="red"))
    term.print(Text("● active profile; memory: estimated, with every model loaded; ~ loads on demand", style="dim"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _model_label(model: dict[str, Any]) -> str:
    label = str(model.get("name", "?"))
    replicas = model.get("replicas")
    if isinstance(replicas, int) and replicas > 1:
        label += f"×{replicas}"
    if model.get("type") == "embeddings":
        label += " (embeddings)"
    if model.get("always_ready") is False:
        label = "~" + label
    return label


# ------------------------------------------------------------------- switch-profile


@dataclass
class Outcome:
    ok: bool
    code: int
    message: str


def switch_profile(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The profile to switch to (`msting llm profiles` lists them).", show_default=False)],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (models to load and unload, memory needed against available); change nothing.")
    ] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds to wait for the switch (default: from startup_timeout_sec and stop_timeout_sec)."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Switch the daemon to another profile without dropping a request.

    Shows each step as it finishes and the total switch time. Exit 0 only when the new
    profile serves; 1 if the switch failed (the current profile keeps serving); 3 on timeout.
    """
    term = Terminal(json_)
    last: dict[str, Any] = {}  # the job as last seen, for the JSON error object
    with term.failures(json_extra=last):
        from msting.cli.common import load_env

        env = load_env()
        client = connect(env, timeout=30.0)
        try:
            with daemon_errors(env):
                if dry_run:
                    plan = client.switch_profile(name, dry_run=True)
                else:
                    wait = switch_timeout(env) if timeout is None else timeout
                    job, outcome = run_switch(term, client, name, wait, last)
        finally:
            client.close()
    if dry_run:
        finish_dry_run(term, plan)
        return
    if json_:
        term.emit_json({**job, "ok": outcome.ok, "exit_code": outcome.code, "message": outcome.message})
        if not outcome.ok:
            term.error(outcome.message.splitlines()[0])
    elif outcome.ok:
        term.success(outcome.message)
        print_result(term, job.get("result") or {})
    else:
        term.error(outcome.message)
    raise typer.Exit(outcome.code)


def switch_timeout(env: Any) -> float:
    """Loading and verifying the new models, plus draining and stopping the old ones."""
    return 2 * env.startup_timeout + env.stop_timeout


def run_switch(term: Terminal, client: Any, name: str, timeout: float, last: dict[str, Any]) -> tuple[dict[str, Any], Outcome]:
    """Start the switch and follow its job to the end (or the timeout)."""
    from msting.client import MstingError

    deadline = time.monotonic() + timeout
    started = time.monotonic()
    try:
        job = client.switch_profile(name)
    except MstingError as exc:
        if exc.code == "switch_in_progress":
            raise CommandError(exc.message, ExitCode.FAILED, hint="`msting llm status` shows its progress", data={"error_code": exc.code}) from None
        raise
    last.clear()
    last["job"] = job
    target = job.get("target") or name
    term.info(f"switching to profile '{target}' (job {job.get('id')})")
    printer = StepPrinter(term)
    try:
        with printer:
            while True:
                printer.update(job, time.monotonic() - started)
                if job.get("state") != "running":
                    break
                if time.monotonic() >= deadline:
                    return job, _timed_out(job, target, timeout)
                time.sleep(POLL_SEC)
                job = client.job(str(job["id"]))
                last["job"] = job
    except KeyboardInterrupt:
        raise CommandError(
            f"interrupted; the switch to '{target}' keeps running in the daemon (job {job.get('id')})",
            ExitCode.FAILED,
            hint="`msting llm status` shows its progress",
        ) from None

    if job.get("state") != "succeeded":
        from msting.cli.jobs_view import error_text

        error = error_text(job, with_code=False) or f"the switch ended in state '{job.get('state')}'"
        routed = any(s.get("name") == "switch" and s.get("state") == "done" for s in job.get("steps") or [])
        after = "routing had already moved to the new profile" if routed else "the previous profile keeps serving"
        return job, Outcome(False, ExitCode.FAILED, f"switch to '{target}' failed: {error}\n{after}")

    # The job says it is done; the daemon must also say the new profile serves.
    profile = (job.get("result") or {}).get("profile") or target
    info: dict[str, Any] = {}
    settle = min(deadline, time.monotonic() + SETTLE_SEC)
    while True:
        info = client.status()
        on_demand = (info.get("readiness") or {}).get("status") == "idle"  # every model loads on request
        if info.get("profile") == profile and (info.get("ready") or on_demand):
            break
        if time.monotonic() >= settle:
            readiness = info.get("readiness") or {}
            why = f"{readiness.get('status')}: {readiness.get('reason')}" if readiness.get("reason") else str(readiness.get("status"))
            if info.get("profile") != profile:
                message = f"the switch job succeeded but the daemon reports profile '{info.get('profile')}', not '{profile}'"
            else:
                message = f"switched to '{profile}', but the daemon is not ready ({why})"
            return job, Outcome(False, ExitCode.FAILED, message)
        time.sleep(POLL_SEC)
    duration = (job.get("result") or {}).get("duration_ms") or job.get("duration_ms")
    if not isinstance(duration, (int, float)):
        duration = (time.monotonic() - started) * 1000.0
    mode = (job.get("result") or {}).get("mode")
    how = f" ({mode})" if mode else ""
    switched = (job.get("result") or {}).get("switched_ms")
    when = f"in {fmt_ms(switched)} (old workers stopped by {fmt_ms(duration)})" if isinstance(switched, (int, float)) else f"in {fmt_ms(duration)}"
    state = "its models load on their first request" if on_demand else "it is ready"
    return job, Outcome(True, ExitCode.OK, f"switched to profile '{profile}' {when}{how}; {state}")


def _timed_out(job: dict[str, Any], target: str, timeout: float) -> Outcome:
    step = next((s for s in job.get("steps") or [] if s.get("state") == "running"), None)
    at = f", at step '{step.get('name')}'" if step else ""
    return Outcome(
        False,
        ExitCode.TIMEOUT,
        f"timed out after {timeout:g} s waiting for the switch to '{target}' (job {job.get('id')}{at}); "
        "it keeps running in the daemon: `msting llm status` shows its progress",
    )


class StepPrinter:
    """Prints each step once it has finished; on a terminal, a spinner shows the running one."""

    def __init__(self, term: Terminal) -> None:
        self.term = term
        self.printed: set[str] = set()
        self.live: Any = None

    def __enter__(self) -> StepPrinter:
        console = self.term.out
        if console.is_terminal and not console.is_dumb_terminal:
            self.live = console.status("starting the switch", spinner="dots")
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def update(self, job: dict[str, Any], elapsed: float) -> None:
        finished = job.get("state") != "running"
        steps = job.get("steps") or []
        for step in steps:
            name = str(step.get("name"))
            state = step.get("state")
            if state == "running" and finished:
                state = "failed"  # the step the job failed in
            if name in self.printed or state not in _STEP_MARKS:
                continue
            self.printed.add(name)
            self._print_step(name, state, step, job)
        if self.live is not None and not finished:
            current = next((s for s in steps if s.get("state") == "running"), None)
            if current is not None:
                detail = f": {current['detail']}" if current.get("detail") else ""
                self.live.update(f"{current.get('name')}{detail} [{elapsed:.1f} s]")
            else:
                self.live.update(f"switching [{elapsed:.1f} s]")

    def _print_step(self, name: str, state: str, step: dict[str, Any], job: dict[str, Any]) -> None:
        from rich.text import Text

        mark, style = _STEP_MARKS[state]
        detail = str(step.get("detail") or "")
        duration = step.get("duration_ms")
        if state == "failed":
            detail = f"{detail} (failed)" if detail else "failed"
            started, ended = step.get("started"), job.get("finished")
            if duration is None and isinstance(started, (int, float)) and isinstance(ended, (int, float)):
                duration = max(0.0, (ended - started) * 1000.0)
        elif state == "skipped":
            detail = detail or "skipped"
        text = Text()
        text.append(f"  {mark} ", style=style)
        text.append(f"{name:<10}" if detail else name, style="dim" if state == "skipped" else "bold")
        text.append(detail, style="dim" if state == "skipped" else "")
        if state != "skipped" and isinstance(duration, (int, float)):
            text.append(f"  [{fmt_ms(duration)}]", style="dim")
        self.term.print(text)


def print_result(term: Terminal, result: dict[str, Any]) -> None:
    for label, key in (("loaded", "load"), ("kept", "keep"), ("unloaded", "unload"), ("on demand", "on_demand")):
        if result.get(key):
            term.info(f"  {label:<10} {', '.join(map(str, result[key]))}")
    if result.get("default_model"):
        term.info(f"  {'default':<10} {result['default_model']}")


# -------------------------------------------------------------------------- dry run


def finish_dry_run(term: Terminal, plan: dict[str, Any]) -> None:
    refused = plan.get("mode") == "refused"
    memory = plan.get("memory") or {}
    if term.json_mode:
        term.emit_json({"ok": not refused, **plan})
    else:
        print_plan(term, plan)
    if refused:
        term.error(f"the switch to '{plan.get('profile')}' would be refused: {memory.get('message') or _MODES['refused']}")
        raise typer.Exit(ExitCode.FAILED)


def print_plan(term: Terminal, plan: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    mode = str(plan.get("mode") or "?")
    style = {"parallel": "bold green", "drain-first": "bold yellow", "refused": "bold red"}.get(mode, "bold")
    title = Text(f"plan: '{plan.get('from_profile')}' → '{plan.get('profile')}'  ")
    title.append(mode, style=style)
    term.print(title)

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("how", Text(_MODES.get(mode, mode)))
    for label, key, empty in (
        ("load", "load", "nothing"),
        ("keep", "keep", "nothing"),
        ("unload", "unload", "nothing"),
        ("on demand", "on_demand", "none"),
    ):
        names = plan.get(key) or []
        grid.add_row(label, Text(", ".join(map(str, names)) if names else empty, style="" if names else "dim"))
    grid.add_row("default model", Text(str(plan.get("default_model") or "-")))
    memory = plan.get("memory") or {}
    grid.add_row("memory", Text(_fmt_plan_memory(memory)))
    if memory.get("message"):
        grid.add_row("", Text(str(memory["message"]), style=style.replace("bold ", "")))
    term.print(grid)
    if mode != "refused":
        term.dim("dry run: nothing was changed")


def _fmt_plan_memory(memory: dict[str, Any]) -> str:
    text = f"needs {fmt_bytes(memory.get('needed_bytes'))}, available {fmt_bytes(memory.get('available_bytes'))}"
    freed = memory.get("freed_by_unload_bytes")
    if freed:
        text += f" (+{fmt_bytes(freed)} freed by unloading)"
    budget = memory.get("budget_bytes")
    text += f", budget {fmt_bytes(budget)}" if budget is not None else ", no budget"
    return text
