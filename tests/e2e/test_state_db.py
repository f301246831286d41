"""A state database the daemon cannot use: a clear message naming the file, and an
exit code that tells systemd not to restart it in a loop."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_a_corrupt_state_database_is_refused_with_its_path(daemon_home):
    db = daemon_home.home / "data" / "state.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    result = daemon_home.cli("llm", "start", "--timeout", "60")
    out = result.stdout + result.stderr
    assert result.returncode == 2, out  # the CLI's usage/config error: the daemon exited 78
    assert "exit code 78" in out
    assert f"cannot use the state database {db}: file is not a database" in out
    assert "move it aside" in out
    assert db.read_bytes() == b"this is not a database" * 100  # nothing overwritten
    assert daemon_home.daemon_pid() is None
