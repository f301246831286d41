"""Fixtures of the msting.config tests; their helpers are in config_testing.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from msting.config.paths import Paths, resolve_paths

# config_testing.py is importable whatever pytest's --import-mode (importlib puts no test folder on sys.path).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"MSTING_HOME": str(tmp_path / "home")})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $HOME, so that `~` in sources expands somewhere known."""
    h = tmp_path / "userhome"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h
