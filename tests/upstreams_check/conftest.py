"""The stand-in upstreams' own checks: their fixtures, and no proxies for the clients of this
process (the official SDKs and httpx would send 127.0.0.1 through a developer's proxy)."""

from __future__ import annotations

import os

import pytest
from upstreams.plugin import llama_cpp_server, standin, standin_module  # noqa: F401  (pytest fixtures)

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    for name in list(os.environ):
        if name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)
