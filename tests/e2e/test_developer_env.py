"""A daemon started by the tests sees the environment the harness builds, not the
developer's: their own API key, MSTING_* settings, failpoints, systemd or proxy
variables must not change what a test sees (tests/child_env.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

HOSTILE = {
    "LLM_API_KEY": "a-developer-key",  # would make every TCP request without it a 401
    "MSTING_HOME": "/nonexistent",
    "MSTING_LLM_PORT": "1",
    "MSTING_WORKER_FAILPOINTS": "crash_on_prompt=Once",  # would kill the worker below
    "NOTIFY_SOCKET": "/nonexistent/notify",
    "OPENAI_API_KEY": "x",
    "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
    "HTTP_PROXY": "http://127.0.0.1:1",
    "ALL_PROXY": "http://127.0.0.1:1",
}


def test_a_developer_environment_does_not_reach_the_daemon_or_its_workers(daemon_home, monkeypatch):
    for name, value in HOSTILE.items():
        monkeypatch.setenv(name, value)
    dh = type(daemon_home)(daemon_home.home)  # built now, under that environment (same home, cleaned up by the fixture)
    assert dh.env["MSTING_HOME"] == str(daemon_home.home) and dh.env["MSTING_LLM_PORT"] == str(dh.port)
    dh.start()
    with dh.tcp_client() as c:  # no API key sent
        r = c.post("/generate", json={"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["text"]
    processes = dh.our_processes()  # the daemon, the worker and (maybe already) the spare
    assert dh.daemon_pid() in [p.pid for p in processes] and len(processes) >= 2
    for proc in processes:
        env = proc.environ()
        leaked = {name for name in HOSTILE if name in env and env[name] == HOSTILE[name]}
        assert not leaked, (proc.pid, proc.cmdline(), leaked)
        assert env["MSTING_HOME"] == str(dh.home) and env["MSTING_LLM_PORT"] == str(dh.port)
