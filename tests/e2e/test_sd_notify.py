"""The daemon under an init system: systemd's notification protocol on a real datagram
socket, from a real daemon started as the unit starts it (`msting llm start --foreground`)."""

from __future__ import annotations

import signal
import subprocess

import pytest
import yaml
from daemon_home import msting_command
from notify_socket import NotifySocket, killed_at_exit

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 400_000  # a ping every 0.2 s


def _foreground(daemon_home, notify: NotifySocket) -> subprocess.Popen:
    """As the unit runs it; its output goes to a file (a pipe nobody reads would fill and
    block the daemon's logging), as the journal takes it under systemd."""
    env = dict(daemon_home.env, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    with open(daemon_home.home / "foreground.out", "ab") as out:
        return subprocess.Popen([*msting_command(), "llm", "start", "--foreground"], env=env,
                                stdout=subprocess.DEVNULL, stderr=out)


def _output(daemon_home) -> str:
    return (daemon_home.home / "foreground.out").read_text(errors="replace")[-3000:]


def _lines(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.split("\n"))


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_status_watchdog_and_stopping_arrive_in_order(daemon_home, abstract):
    with NotifySocket(daemon_home.home, abstract) as notify, killed_at_exit(_foreground(daemon_home, notify)) as proc:
        first = notify.next()
        assert first.startswith("STATUS=starting: listening on ") and str(daemon_home.socket) in first
        ready = notify.until(lambda m: "READY=1" in m.split("\n"))
        # READY=1 only once readiness holds: the default model has generated
        with daemon_home.client() as c:
            assert c.get("/health/ready").status_code == 200
            model = c.get("/v1/status").json()["models"][0]
        assert model["state"] == "ready" and model["verified"] is True
        assert _lines(ready)["STATUS"].startswith("ready: profile default, default model msting-tiny")
        before = notify.messages[:-1]
        assert any(m.startswith("STATUS=loading: model 'msting-tiny'") for m in before), before
        assert not any("READY=1" in m for m in before)

        pings = len([m for m in notify.messages if m == "WATCHDOG=1"])
        for _ in range(3):  # the pings go on after READY=1
            notify.until(lambda m: m == "WATCHDOG=1")
        assert len([m for m in notify.messages if m == "WATCHDOG=1"]) >= pings + 3

        proc.send_signal(signal.SIGTERM)
        stopping = notify.until(lambda m: "STOPPING=1" in m.split("\n"))
        assert "draining" in _lines(stopping)["STATUS"]
        notify.until(lambda m: m.startswith("STATUS=stopping: workers stopped"))
        assert proc.wait(timeout=60) == 0, _output(daemon_home)
    seen = [next(k for k in ("READY=1", "STOPPING=1", "STATUS") if k in m) for m in notify.messages if m != "WATCHDOG=1"]
    assert seen.index("READY=1") < seen.index("STOPPING=1")
    assert seen.count("READY=1") == 1 and seen.count("STOPPING=1") == 1


def test_a_failed_model_never_sends_ready(daemon_home, corrupt_gguf):
    daemon_home.write_config({"llm": {"model": str(corrupt_gguf)}})
    with NotifySocket(daemon_home.home, abstract=False) as notify, killed_at_exit(_foreground(daemon_home, notify)) as proc:
        failed = notify.until(lambda m: m.startswith("STATUS=failed: "))
        assert "corrupt.gguf" in failed
        # the daemon stays up and alive (watchdog), but start-up is not complete
        for _ in range(3):
            notify.until(lambda m: m == "WATCHDOG=1")
        with daemon_home.client() as c:
            assert c.get("/health/ready").json()["status"] == "failed"
        proc.send_signal(signal.SIGTERM)
        notify.until(lambda m: "STOPPING=1" in m.split("\n"))
        assert proc.wait(timeout=60) == 0
    assert not any("READY=1" in m.split("\n") for m in notify.messages), notify.messages


def test_a_config_error_says_so_and_exits_78(daemon_home):
    daemon_home.write_config({"llm_service": {"prot": 1}})
    with NotifySocket(daemon_home.home, abstract=False) as notify, killed_at_exit(_foreground(daemon_home, notify)) as proc:
        status = notify.next()
        assert proc.wait(timeout=60) == 78
    assert status.startswith("STATUS=configuration error (exit 78)") and "llm_service.prot" in status
    assert "\n" not in status


def test_a_profile_switch_shows_in_the_status_line(daemon_home):
    folder = daemon_home.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alt.yaml").write_text(yaml.safe_dump({"description": "a second tiny model", "default_model": "alt-tiny",
                                                     "models": {"alt-tiny": {"source": "builtin:tiny", "n_ctx": 1024}}}))
    with NotifySocket(daemon_home.home, abstract=False) as notify, killed_at_exit(_foreground(daemon_home, notify)) as proc:
        notify.until(lambda m: "READY=1" in m.split("\n"))
        daemon_home.cli("llm", "switch-profile", "alt", check=True)
        notify.until(lambda m: m.startswith("STATUS=ready: profile alt, default model alt-tiny"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert sum("READY=1" in m.split("\n") for m in notify.messages) == 1


def test_the_daemons_own_restart_is_a_reload_not_a_stop(daemon_home):
    """POST /v1/daemon/restart drains and execs in the same pid: systemd must see
    RELOADING=1 then READY=1 (STOPPING=1 would make it wait for an exit, then kill)."""
    with NotifySocket(daemon_home.home, abstract=False) as notify, killed_at_exit(_foreground(daemon_home, notify)) as proc:
        notify.until(lambda m: "READY=1" in m.split("\n"))
        with daemon_home.client() as c:
            assert c.post("/v1/daemon/restart", json={}).status_code == 202
        reloading = notify.until(lambda m: "RELOADING=1" in m.split("\n"))
        assert _lines(reloading)["STATUS"].startswith("restarting: draining") and int(_lines(reloading)["MONOTONIC_USEC"]) > 0
        ready = notify.until(lambda m: "READY=1" in m.split("\n"))
        assert _lines(ready)["STATUS"].startswith("ready: profile default")
        with daemon_home.client() as c:
            assert c.get("/health").json()["pid"] == proc.pid and c.get("/health/ready").status_code == 200
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        notify.until(lambda m: "STOPPING=1" in m.split("\n"))
        assert proc.wait(timeout=60) == 0, _output(daemon_home)
    stops = [m for m in notify.messages if "STOPPING=1" in m.split("\n")]
    assert len(stops) == 1 and notify.messages.index(stops[0]) > notify.messages.index(ready)
