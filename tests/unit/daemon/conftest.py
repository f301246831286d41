"""Fixtures of the msting.daemon tests; helpers are in local_testing.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


# local_testing.py is importable whatever pytest's --import-mode (importlib puts no test folder on sys.path).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def stories(stories_model_path: Path) -> Path:
    """The real GGUF model of ../shared/models (sha256-checked by tests/conftest.py); never copied into the repo."""
    return stories_model_path
