#!/usr/bin/env python3
"""Switch the running msting daemon to another profile, with live progress: each step
of the switch (validate, preflight, load, verify, route, drain) as it finishes, and the
total time. With --dry-run, the plan only: what loads, what unloads, memory needed
against available. A thin wrapper over `msting llm switch-profile`.

Environment: MSTING (the msting command; default: `msting` on PATH, else this
checkout's .venv/bin/msting), MSTING_HOME.
Exit status: that of `msting llm switch-profile` (0 the new profile serves, 1 the switch
failed and the old profile keeps serving, 3 timed out); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path


def msting_command() -> list[str]:
    if os.environ.get("MSTING"):
        return shlex.split(os.environ["MSTING"])
    found = shutil.which("msting")
    if found:
        return [found]
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "msting"
    if venv.is_file() and os.access(venv, os.X_OK):
        return [str(venv)]
    sys.exit("switch_profile.py: the msting command was not found: install it (./install.sh) or set MSTING=/path/to/msting")


def main() -> None:
    parser = argparse.ArgumentParser(prog="switch_profile.py", description=__doc__.split("\n\n")[0],
                                     epilog="`msting llm profiles` lists the profiles.")
    parser.add_argument("name", metavar="NAME", help="the profile to switch to")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--timeout", metavar="S", type=float, help="seconds to wait for the switch")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of text")
    args = parser.parse_args()
    if args.timeout is not None and args.timeout < 0:
        parser.error("--timeout must be >= 0")
    cmd = [*msting_command(), "llm", "switch-profile", args.name]
    if args.dry_run:
        cmd.append("--dry-run")
    if args.timeout is not None:
        cmd += ["--timeout", repr(args.timeout)]
    if args.json:
        cmd.append("--json")
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # its progress goes straight to this terminal


if __name__ == "__main__":
    main()
