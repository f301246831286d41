"""End-to-end fixtures: a real daemon and real workers under a temporary MSTING_HOME.

Each test gets its own home (``tests/daemon_home.py``, the harness bench/ uses too): a
short directory, a free TCP port, and a config with short supervision intervals so crash
and hang tests finish quickly. Teardown kills anything the test left running.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_home import DaemonHome  # tests/daemon_home.py: shared with bench/

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """The tests only talk to their own daemons (127.0.0.1 and Unix sockets). The clients
    they use in this process (httpx, the openai package, websockets, curl) would send
    that through a developer's proxy settings."""
    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def daemon_home():
    dh = DaemonHome()
    dh.write_config()
    yield dh
    dh.cleanup()


@pytest.fixture
def corrupt_gguf(tmp_path) -> Path:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(4096))
    return path
