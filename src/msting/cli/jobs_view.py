"""How jobs read on a terminal, and following one to its end.

A job (``GET /jobs/{id}``) has a ``type`` (install, import, update, delete, load,
unload, or a profile switch), a ``state`` (queued, running, succeeded, failed,
cancelled), the ``step`` it is at, byte ``progress`` (done, total, rate, ETA) and, once
over, an ``error`` or a ``result``. :func:`follow_job` reads the job's event stream
(``GET /jobs/{id}/events``) and draws a progress bar of the daemon's own figures (bytes,
rate, ETA) on a terminal, or one line per step elsewhere.

rich is imported only when something is drawn; the pure helpers here are what the
unit tests check.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from msting.cli.status import fmt_bytes

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
_STATE_STYLES = {"queued": "dim", "running": "yellow", "succeeded": "green", "failed": "bold red", "cancelled": "magenta"}
#: How long `follow_job` tries to reach the daemon again when its event stream broke
#: (a daemon restarted by hand or by its init system is back within this).
RECONNECT_SEC = 30.0


# ------------------------------------------------------------------ pure formatting


def is_over(job: dict[str, Any]) -> bool:
    return job.get("state") in TERMINAL_STATES


def job_type(job: dict[str, Any]) -> str:
    return str(job.get("type") or job.get("kind") or "?")


def job_subject(job: dict[str, Any]) -> str:
    """What the job works on: a source, a path, a model or a profile."""
    params = job.get("params") if isinstance(job.get("params"), dict) else {}
    for key in ("source", "path", "name", "profile", "model"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return value
    target = job.get("target")
    return str(target) if target else "-"


def fmt_rate(bps: Any) -> str:
    """``12.3 MiB/s``; ``-`` when unknown."""
    if not isinstance(bps, (int, float)) or isinstance(bps, bool) or bps < 0:
        return "-"
    return f"{fmt_bytes(bps)}/s"


def fmt_eta(sec: Any) -> str:
    """``0:07``, ``1:02:03``; ``-`` when unknown."""
    if not isinstance(sec, (int, float)) or isinstance(sec, bool) or sec < 0:
        return "-"
    sec = int(round(sec))
    hours, rest = divmod(sec, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_of(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress")
    return progress if isinstance(progress, dict) else {}


def fmt_progress(job: dict[str, Any]) -> str:
    """While it runs: ``45% of 120.0 MiB, 12.0 MiB/s, ETA 0:06``; once over, the bytes
    it moved (``120.0 MiB``); ``-`` for a job that moves no bytes."""
    p = progress_of(job)
    done, total = p.get("bytes_done"), p.get("bytes_total")
    if not isinstance(done, int) or (done == 0 and not total):
        return "-"
    if is_over(job):
        return fmt_bytes(done)
    if isinstance(total, int) and total > 0:
        text = f"{min(done / total, 1.0):.0%} of {fmt_bytes(total)}"
    else:
        text = fmt_bytes(done)
    if p.get("rate_bps") is not None:
        text += f", {fmt_rate(p.get('rate_bps'))}"
    if p.get("eta_sec") is not None:
        text += f", ETA {fmt_eta(p.get('eta_sec'))}"
    return text


def error_text(job: dict[str, Any], with_code: bool = True) -> str | None:
    """The job's error as one sentence, with its code unless told otherwise:
    ``sha256 mismatch: ... (checksum_mismatch)``. A job saved by an older daemon has a
    plain string."""
    error = job.get("error")
    if not error:
        return None
    if isinstance(error, dict):
        message = str(error.get("message") or "failed")
        return f"{message} ({error['code']})" if with_code and error.get("code") else message
    return str(error)


def fmt_age(created: Any, now: float | None = None) -> str:
    if not isinstance(created, (int, float)):
        return "-"
    sec = max(0.0, (time.time() if now is None else now) - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if sec >= size:
            return f"{int(sec // size)}{unit} ago"
    return f"{int(sec)}s ago"


def job_row(job: dict[str, Any], now: float | None = None) -> list[str]:
    """One row of `msting llm jobs`: id, type, state, subject, step, progress, age, error."""
    return [str(job.get("id", "?")), job_type(job), str(job.get("state") or "?"), job_subject(job),
            str(job.get("step") or "-"), fmt_progress(job), fmt_age(job.get("created_at", job.get("created")), now),
            error_text(job) or ""]


def print_jobs(term: Any, jobs: list[dict[str, Any]]) -> None:
    """The jobs table; what each works on is the one column that folds, with the error
    of a job that failed under it."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not jobs:
        term.info("no jobs")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col in ("id", "type", "state", "step", "progress", "created", "what"):
        table.add_column(col, no_wrap=col not in ("what", "progress"), overflow="fold")
    now = time.time()
    for job in jobs:
        job_id, kind, state, subject, step, progress, created, error = job_row(job, now)
        what = Text(subject)
        if error:
            what.append(f"\n{error}", style="red")
        table.add_row(job_id, kind, Text(state, style=_STATE_STYLES.get(state, "")), step, progress, created, what)
    term.print(table)


def installed_line(result: dict[str, Any]) -> str:
    """``'tiny' (1.1 MiB, sha256 1a2b3c4d5e6f…) at /…/models/tiny.gguf``."""
    name = result.get("model") or "?"
    facts = [fmt_bytes(result.get("size_bytes"))] if result.get("size_bytes") is not None else []
    digest = result.get("sha256")
    if isinstance(digest, str) and digest:
        facts.append(f"sha256 {digest[:12]}…")
    inside = f" ({', '.join(facts)})" if facts else ""
    where = f" at {result['path']}" if result.get("path") else ""
    return f"'{name}'{inside}{where}"


# ------------------------------------------------------------------- following a job


class JobDisplay:
    """The live view of one job: on a terminal a rich progress bar (the step, bytes done
    of total, the daemon's rate and ETA), elsewhere a line whenever the step changes."""

    def __init__(self, term: Any, title: str) -> None:
        self.term = term
        self.title = title
        self.live = False
        self.progress: Any = None
        self.task: Any = None
        self.step: str | None = None

    def __enter__(self) -> JobDisplay:
        console = self.term.out
        self.live = bool(console.is_terminal and not console.is_dumb_terminal)
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[bytes]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                console=console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=None, bytes="", rate="", eta="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def update(self, job: dict[str, Any]) -> None:
        step = job.get("step") or job.get("state")
        p = progress_of(job)
        done, total = p.get("bytes_done"), p.get("bytes_total")
        if self.live:
            over = is_over(job)
            known = isinstance(total, int) and total > 0
            self.progress.update(
                self.task,
                description=f"{self.title}: {step}",
                completed=done if isinstance(done, int) else 0,
                total=total if known else None,
                bytes=(f"{fmt_bytes(done)} / {fmt_bytes(total)}" if known else fmt_bytes(done)) if done else "",
                rate="" if over else _labelled("", fmt_rate(p.get("rate_bps"))),
                eta="" if over else _labelled("ETA ", fmt_eta(p.get("eta_sec"))),
            )
        elif step != self.step:
            total_text = f" ({fmt_bytes(total)})" if isinstance(total, int) and total > 0 else ""
            self.term.dim(f"  {step}{total_text}" if not is_over(job) else f"  {step}")
        self.step = step


def _labelled(label: str, value: str) -> str:
    return "" if value == "-" else f"{label}{value}"


def follow_job(client: Any, job: dict[str, Any], display: JobDisplay, events: Iterable[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Show *job* until it is over and return it as it ended. The event stream carries
    every change; should it break (a daemon restart), the job is read again and the
    stream opened anew while the daemon answers within RECONNECT_SEC."""
    from msting.client import DaemonUnavailable, RequestTimeout

    display.update(job)
    job_id = str(job["id"])
    while not is_over(job):
        try:
            for event in (events if events is not None else client.job_events(job_id)):
                if isinstance(event, dict) and event.get("id") == job_id:
                    job = event
                    display.update(job)
                    if is_over(job):
                        return job
        except (DaemonUnavailable, RequestTimeout):
            pass  # the daemon went away (a restart): read the job again below
        events = None
        time.sleep(0.1)  # the stream ended early: read the job, then listen again
        job = _read_again(client, job_id)
        display.update(job)
    return job


def _read_again(client: Any, job_id: str) -> dict[str, Any]:
    """The job, once the daemon answers again (a restarting daemon refuses connections,
    or accepts them before it serves)."""
    from msting.client import DaemonUnavailable, RequestTimeout

    deadline = time.monotonic() + RECONNECT_SEC
    while True:
        try:
            return client.job(job_id, timeout=5.0)
        except (DaemonUnavailable, RequestTimeout):
            if time.monotonic() >= deadline:
                raise DaemonUnavailable(f"the daemon did not answer again within {RECONNECT_SEC:g} s") from None
            time.sleep(0.25)
