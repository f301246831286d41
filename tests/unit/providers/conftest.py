"""Fixtures of the msting.providers tests: the daemon tests' helpers (tests/unit/daemon/local_testing.py)."""

from __future__ import annotations

import sys
from pathlib import Path

_DAEMON_TESTS = Path(__file__).parent.parent / "daemon"
if str(_DAEMON_TESTS) not in sys.path:
    sys.path.insert(0, str(_DAEMON_TESTS))
