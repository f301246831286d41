"""What the daemon process (``python -m msting.daemon``) exits with. Dependency-free:
the CLI imports it to interpret a daemon that exited.

Scripts and init systems rely on these numbers, so they are part of the interface.
"""

from __future__ import annotations

from enum import IntEnum


class DaemonExit(IntEnum):
    """What the daemon process (``python -m msting.daemon``) exits with."""

    OK = 0
    FAILURE = 1
    ALREADY_RUNNING = 75  #: EX_TEMPFAIL: another daemon holds the lock
    CONFIG = 78  #: EX_CONFIG: systemd's RestartPreventExitStatus=78
