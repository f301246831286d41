"""``msting llm jobs`` (the daemon's jobs, newest first) and ``msting llm jobs cancel ID``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")]
STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def jobs(
    ctx: typer.Context,
    type_: Annotated[Optional[str], typer.Option("--type", metavar="TYPE", help="Only jobs of this type (install, import, update, delete, load, unload, switch).")] = None,
    state: Annotated[Optional[str], typer.Option("--state", metavar="STATE", help=f"Only jobs in this state ({', '.join(STATES)}).")] = None,
    json_: JsonOpt = False,
) -> None:
    """List the daemon's jobs (installs, imports, deletes, loads, profile switches), newest first:
    state, step, progress and error. `msting llm jobs cancel ID` cancels one."""
    if ctx.invoked_subcommand is not None:
        return
    term = Terminal(json_)
    with term.failures():
        if state is not None and state not in STATES:
            raise CommandError(f"unknown state '{state}'; the states are {', '.join(STATES)}", ExitCode.USAGE)
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        with connect(env) as client, daemon_errors(env):
            listed = client.jobs(type=type_, state=state)
    if json_:
        term.emit_json({"ok": True, "data": listed})
        return
    from msting.cli.jobs_view import print_jobs

    print_jobs(term, listed)


def cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="A job's id (`msting llm jobs` lists them).", show_default=False)],
    json_: JsonOpt = False,
) -> None:
    """Cancel a job. A cancelled download keeps what it fetched: the same pull later resumes it."""
    term = Terminal(json_)
    with term.failures():
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        from msting.cli.jobs_view import is_over

        env = load_env()
        with connect(env) as client, daemon_errors(env):
            job = client.job(job_id)
            ended = is_over(job)  # a job already over is answered unchanged
            if not ended:
                job = client.cancel_job(job_id)
    from msting.cli.jobs_view import error_text, job_subject, job_type

    state = job.get("state")
    if json_:
        term.emit_json({"ok": True, **job, "was_over": ended})
    elif not ended and state == "cancelled":
        term.success(f"cancelled job {job.get('id')} ({job_type(job)} {job_subject(job)})")
    else:
        why = f": {error_text(job)}" if error_text(job) else ""
        term.info(f"job {job.get('id')} had already ended ({state}{why}); nothing to cancel")
