"""pytest fixtures for the registry stand-in (tests/registries/server.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

from .server import Registries


@pytest.fixture
def registries() -> Iterator[Registries]:
    """A started stand-in with nothing published yet; stopped at teardown."""
    reg = Registries().start()
    try:
        yield reg
    finally:
        reg.close()
