"""Restarting the daemon from its own API (`POST /v1/daemon/restart`, the debug page's
button), the way `msting llm restart` would, but in the same process.

The request puts RESTART_SIGNAL in the daemon's signal queue, so the stop is the one a
SIGTERM starts (readiness 503, drain within `drain_grace_sec`, workers stopped,
`STOPPING=1`); `_serve` then returns RESTART instead of an exit code, and once the lock,
the sockets and the pidfile are released `main` execs `python -m msting.daemon` again.
The pid stays the same, so an init system (systemd's Type=notify: the new image sends
READY=1 again) and a pidfile reader see one daemon throughout.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import NoReturn

log = logging.getLogger("msting.daemon")

RESTART_SIGNAL = signal.SIGHUP  # put in the signal queue by the API (no handler is installed for a real SIGHUP)
RESTART = 1000  # what _serve returns for a restart: never an exit code (those are 0-255)


def reexec() -> NoReturn:
    argv = [sys.executable, "-m", "msting.daemon"]
    log.info("daemon %d restarting: exec %s", os.getpid(), " ".join(argv))
    for handler in logging.getLogger("msting").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
