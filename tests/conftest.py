"""Shared fixtures. Real files and real processes; no mocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STORIES_PATH = REPO.parent / "shared" / "models" / "stories260K.gguf"
STORIES_SHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"

@pytest.fixture(scope="session")
def builtin_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The msting-tiny model, written once per test session into a temp dir."""
    from msting.models.builtin import ensure_builtin_model

    return ensure_builtin_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def _stories_ok() -> bool:
    return STORIES_PATH.is_file() and hashlib.sha256(STORIES_PATH.read_bytes()).hexdigest() == STORIES_SHA256


@pytest.fixture
def stories_model_path(_stories_ok: bool) -> Path:
    """../shared/models/stories260K.gguf (sha256-checked), or skip the test."""
    if not _stories_ok:
        pytest.skip(f"{STORIES_PATH} is absent or does not match its sha256")
    return STORIES_PATH
