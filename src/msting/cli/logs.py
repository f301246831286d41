"""``msting llm logs [-f] [-n N]``: tail (and follow) the daemon's log file."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError, Terminal

FOLLOW_POLL_SEC = 0.25


def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (survives log rotation); Ctrl-C stops.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, metavar="N", help="How many of the last lines to print.")] = 50,
) -> None:
    """Print the last lines of the daemon's log file."""
    term = Terminal()
    with term.failures():
        path = _log_path(term)
    out = sys.stdout.buffer
    try:
        fh = _open(path)
        if fh is None and not follow:
            term.error(f"no daemon log at {path} yet (has the daemon been started?)")
            raise typer.Exit(ExitCode.FAILED)
        if fh is not None:
            out.write(_tail(fh, lines))
            out.flush()
        if follow:
            _follow(path, fh, out)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. `msting llm logs -f | head`
        _silence_stdout()


def _log_path(term: Terminal) -> Path:
    """The configured log file; with a broken config, the default one (logs help most then)."""
    from msting.cli.common import load_env

    try:
        return load_env().log_file
    except CommandError as exc:
        from msting.config.paths import resolve_paths

        from msting.config.errors import ConfigError
        from msting.config.paths import check_home

        try:
            check_home()
        except ConfigError:  # MSTING_HOME itself is wrong: there is no default log either
            raise exc from None
        default = resolve_paths().daemon_log
        term.warn(exc.message.splitlines()[0] + "; showing the default log file")
        return default


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _tail(fh: BinaryIO, n: int) -> bytes:
    """The last ``n`` lines of ``fh``; leaves the position at the end."""
    fh.seek(0, os.SEEK_END)
    end = pos = fh.tell()
    data = b""
    while pos > 0 and data.count(b"\n") <= n:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
    fh.seek(end)
    if n == 0:
        return b""
    lines = data.splitlines(keepends=True)[-n:]
    text = b"".join(lines)
    return text if not text or text.endswith(b"\n") else text + b"\n"


def _follow(path: Path, fh: BinaryIO | None, out: BinaryIO) -> None:
    """Print what is appended to ``path``. Reopens the file from its start when it is
    replaced (new inode: rotation) or shrinks (truncation)."""
    while True:
        if fh is not None:
            chunk = fh.read()
            if chunk:
                out.write(chunk)
                out.flush()
                continue
        time.sleep(FOLLOW_POLL_SEC)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue  # between rotation steps: keep the old file until a new one appears
        if fh is None:
            fh = _open(path)
            continue
        current = os.fstat(fh.fileno())
        if st.st_ino != current.st_ino or st.st_dev != current.st_dev or st.st_size < fh.tell():
            rest = fh.read()  # lines written to the old file just before it was rotated
            if rest:
                out.write(rest)
                out.flush()
            fh.close()
            fh = _open(path)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; after EPIPE that would print another traceback.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
