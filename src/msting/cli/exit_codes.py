"""The CLI's exit codes (the daemon's are in msting.daemon.exit_codes).

Scripts and init systems rely on these numbers, so they are part of the interface:
change them only with a note in the changelog.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What ``msting`` itself exits with."""

    OK = 0  #: ready / done
    FAILED = 1  #: not running, or failed
    USAGE = 2  #: usage or config error (Typer's own usage errors are 2 as well)
    TIMEOUT = 3  #: timed out


#: Appended to the top-level and ``llm`` --help (Typer keeps the line breaks).
EXIT_CODES_EPILOG = (
    "Exit codes:\n"
    "  0  ready / ok\n"
    "  1  not running, or failed\n"
    "  2  usage or config error\n"
    "  3  timed out"
)
