"""Model management: ``msting llm pull SOURCE``, ``import PATH``, ``rm NAME`` and
``search QUERY``.

Each is a job in the daemon (``POST /jobs``: install, import, delete); the command
follows it (``GET /jobs/{id}/events``) with a progress bar and exits 0 only once it
succeeded. Ctrl-C during a pull cancels the job (``DELETE /jobs/{id}``); the bytes
already fetched stay in the daemon's partial file, so the same pull later resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout (progress goes to stderr).")]
NameOpt = Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="The name to install it under (default: from the file).")]

#: The sources `pull` (and `install --model`) take, by scheme.
SOURCE_SCHEMES = ("hf", "ollama", "https", "http")
SOURCE_FORMS = ("hf://ORG/REPO/FILE.gguf, hf://ORG/REPO:QUANT (e.g. :Q4_K_M), hf://ORG/REPO, "
                "ollama://NAME:TAG, https://HOST/PATH/FILE.gguf")
#: Seconds for the daemon to answer the job's creation (a search asks the hub first).
CALL_TIMEOUT = 30.0
SEARCH_TIMEOUT = 60.0


def is_source(text: str) -> bool:
    """True for a registry or URL source (``hf://``, ``ollama://``, ``http(s)://``)."""
    scheme, sep, rest = text.partition("://")
    return bool(sep) and scheme.lower() in SOURCE_SCHEMES and bool(rest.strip("/"))


def check_source(source: str) -> None:
    """A usage error (exit 2) for something that is not a source, with a hint."""
    if is_source(source):
        return
    hint = f"sources: {SOURCE_FORMS}"
    if "://" not in source and Path(source).expanduser().exists():
        hint = f"'{source}' is a local file: `msting llm import {source}` registers it"
    raise CommandError(f"'{source}' is not a model source", ExitCode.USAGE, hint=hint)


def run_job(term: Terminal, client: Any, job: dict[str, Any], title: str, last: dict[str, Any], *,
            interrupted: str) -> dict[str, Any]:
    """Follow *job* to its end; a job that did not succeed is a CommandError (exit 1).
    Ctrl-C cancels the job, and says *interrupted*."""
    from msting.cli.jobs_view import JobDisplay, error_text, follow_job
    from msting.client import DaemonUnavailable, MstingError

    last["job"] = job
    term.dim(f"{title} (job {job.get('id')})")
    try:
        with JobDisplay(term, title) as display:
            job = follow_job(client, job, display)
    except DaemonUnavailable as exc:
        raise CommandError(f"lost the daemon while following job {job.get('id')}: {exc}",
                           ExitCode.FAILED, hint="a download resumes when the daemon starts again; `msting llm jobs` shows it") from None
    except KeyboardInterrupt:
        try:
            job = client.cancel_job(str(job["id"]), timeout=10.0)
        except MstingError as exc:
            raise CommandError(f"interrupted, and the job could not be cancelled: {exc}", ExitCode.FAILED) from None
        last["job"] = job
        if job.get("state") == "cancelled":
            raise CommandError(f"cancelled (job {job.get('id')}): {interrupted}", ExitCode.FAILED,
                               data={"cancelled": True}) from None
        # it had ended before the cancel reached it: report how, as without Ctrl-C
    last["job"] = job
    if job.get("state") != "succeeded":
        why = error_text(job) or f"it ended {job.get('state')}"
        raise CommandError(f"{title} failed: {why}", ExitCode.FAILED, data={"job_state": job.get("state")})
    return job


def _details_of(client: Any, name: Any) -> dict[str, Any] | None:
    """What the installed model's file is (its row of /llm/installed), if listed."""
    from msting.cli.models import row_details
    from msting.client import MstingError

    if not isinstance(name, str):
        return None
    try:
        listed = client.installed_models()
    except MstingError:
        return None
    return row_details(next((m for m in listed if m.get("name") == name), {}))


def _finish(term: Terminal, job: dict[str, Any], details: dict[str, Any] | None, verb: str) -> None:
    from msting.cli.jobs_view import installed_line
    from msting.cli.models import describe_details

    if term.json_mode:
        term.emit_json({"ok": True, **job, "details": details})
        return
    term.success(f"{verb} {installed_line(job.get('result') or {})}")
    if details:
        term.info(f"  {describe_details(details)}")


def _install_job(client: Any, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """POST /jobs; the daemon refusing a parameter (a 400 naming it) is a usage error."""
    from msting.client import MstingError

    try:
        return client.create_job(kind, {k: v for k, v in params.items() if v is not None}, timeout=CALL_TIMEOUT)
    except MstingError as exc:
        if exc.status == 400:
            err = exc.body.get("error") if isinstance(exc.body.get("error"), dict) else {}
            hint = f"sources: {SOURCE_FORMS}" if str(err.get("param") or "").endswith("source") else None
            raise CommandError(exc.message, ExitCode.USAGE, hint=hint, data={"http_status": 400, "error_code": exc.code}) from None
        raise


# ----------------------------------------------------------------------------- pull


def pull(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help=f"Where the model comes from: {SOURCE_FORMS}.", show_default=False)],
    sha256: Annotated[Optional[str], typer.Option("--sha256", metavar="HEX", help="The file's expected sha256; a mismatch keeps nothing.")] = None,
    name: NameOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Download a model into the data folder, with progress (bytes, rate, ETA).

    The daemon downloads it (resuming a partial file, checking the sha256 the registry
    gives or --sha256) and registers it; a profile can then name it. Ctrl-C cancels the
    download; running the same pull again resumes where it stopped.
    """
    term = Terminal(json_)
    last: dict[str, Any] = {}
    with term.failures(json_extra=last):
        check_source(source)
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        with connect(env, timeout=CALL_TIMEOUT) as client, daemon_errors(env):
            job = _install_job(client, "install", {"source": source, "sha256": sha256, "name": name})
            job = run_job(term, client, job, f"pull {source}", last,
                          interrupted=f"what was fetched is kept; `msting llm pull {source}` again resumes it")
            details = _details_of(client, (job.get("result") or {}).get("model"))
    _finish(term, job, details, "installed")


def pull_for_install(term: Terminal, client: Any, source: str) -> dict[str, Any]:
    """`msting llm install --model SOURCE`: the pull, followed the same way; its result
    (model, path, sha256, size_bytes)."""
    check_source(source)
    job = _install_job(client, "install", {"source": source})
    job = run_job(term, client, job, f"pull {source}", {},
                  interrupted=f"what was fetched is kept; `msting llm install --model {source}` again resumes it")
    return job.get("result") or {}


# --------------------------------------------------------------------------- import


def import_model(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A local GGUF model file.", show_default=False)],
    name: NameOpt = None,
    link: Annotated[bool, typer.Option("--link", help="Link the file where it is instead of copying it into the data folder.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Register a local GGUF file as an installed model (copied into the data folder, or linked)."""
    term = Terminal(json_)
    last: dict[str, Any] = {}
    with term.failures(json_extra=last):
        from msting.models.gguf_file import ModelFileError, read_gguf_info

        file = path.expanduser().absolute()
        try:
            read_gguf_info(file)
        except ModelFileError as exc:
            raise CommandError(str(exc), ExitCode.USAGE, hint="import takes a .gguf model file") from None
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        with connect(env, timeout=CALL_TIMEOUT) as client, daemon_errors(env):
            job = _install_job(client, "import", {"path": str(file), "name": name, "link": link})
            job = run_job(term, client, job, f"import {file.name}", last,
                          interrupted="nothing was registered")
            details = _details_of(client, (job.get("result") or {}).get("model"))
    _finish(term, job, details, "linked" if link else "imported")


# ------------------------------------------------------------------------------- rm


def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="An installed model (`msting llm models` lists them).", show_default=False)],
    json_: JsonOpt = False,
) -> None:
    """Delete an installed model and its file. Refused while the active profile uses it."""
    term = Terminal(json_)
    last: dict[str, Any] = {}
    with term.failures(json_extra=last):
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors
        from msting.client import MstingError

        env = load_env()
        with connect(env, timeout=CALL_TIMEOUT) as client, daemon_errors(env):
            try:
                job = client.create_job("delete", {"name": name}, timeout=CALL_TIMEOUT)
            except MstingError as exc:
                if exc.status == 409:
                    raise CommandError(exc.message, ExitCode.FAILED, data={"http_status": 409, "error_code": exc.code},
                                       hint="switch to a profile that does not use it first (`msting llm switch-profile NAME`)") from None
                if exc.status == 404:
                    raise CommandError(exc.message, ExitCode.FAILED, data={"http_status": 404, "error_code": exc.code},
                                       hint="`msting llm models` lists the models") from None
                raise
            job = run_job(term, client, job, f"rm {name}", last, interrupted="the model may be partly removed")
    if json_:
        term.emit_json({"ok": True, **job})
        return
    result = job.get("result") or {}
    freed = result.get("size_bytes") or result.get("freed_bytes")
    from msting.cli.status import fmt_bytes

    term.success(f"removed '{name}'" + (f" ({fmt_bytes(freed)} freed)" if freed else ""))


# --------------------------------------------------------------------------- search


def search(
    words: Annotated[list[str], typer.Argument(metavar="QUERY", help="Words to look for in the Hugging Face hub's model names.", show_default=False)],
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, metavar="N", help="At most N models.")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of text.")] = False,
) -> None:
    """Search the Hugging Face hub for GGUF models; each result is a source for `msting llm pull`."""
    term = Terminal(json_)
    query = " ".join(w.strip() for w in words if w.strip())
    with term.failures():
        if not query:
            raise CommandError("give some words to search for", ExitCode.USAGE)
        from msting.cli.common import load_env
        from msting.cli.status import connect, daemon_errors

        env = load_env()
        with connect(env, timeout=SEARCH_TIMEOUT) as client, daemon_errors(env):
            found = client.search_registry(query, limit=limit, timeout=SEARCH_TIMEOUT)
    if json_:
        term.emit_json({"ok": True, "query": query, "data": found})
    else:
        print_search(term, query, found)


def fmt_files(files: Any, shown: int = 3) -> str:
    """The repo's GGUF files, the first few by name: ``a.gguf, b.gguf (+4 more)``."""
    if not isinstance(files, list) or not files:
        return "-"
    names = [str(f.get("name") or f.get("path") or f.get("rfilename") or "?") if isinstance(f, dict) else str(f) for f in files]
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" (+{more} more)" if more > 0 else "")


def fmt_number(n: Any) -> str:
    """``1.2M``, ``35K``, ``812``; ``-`` when unknown."""
    if not isinstance(n, int) or isinstance(n, bool):
        return "-"
    for unit, size in (("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(f".0{unit}", unit)
    return str(n)


def print_search(term: Terminal, query: str, found: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    if not found:
        term.info(f"no models match '{query}'")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col, justify in (("source", "left"), ("downloads", "right"), ("likes", "right"), ("files", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "files", overflow="fold")
    for m in found:
        table.add_row(str(m.get("source") or f"hf://{m.get('id')}"), fmt_number(m.get("downloads")), fmt_number(m.get("likes")),
                      fmt_files(m.get("files")))
    term.print(table)
    term.dim("`msting llm pull SOURCE` installs one (add :Q4_K_M or /FILE.gguf to choose a file)")
