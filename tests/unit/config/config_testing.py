"""Helpers of the msting.config tests: writing config and profile files, parsing profile text."""

from __future__ import annotations

import textwrap
from pathlib import Path

from msting.config.paths import Paths
from msting.config.profiles.schema import Profile, parse_profile
from msting.config.yamlio import load_yaml

REPO = Path(__file__).resolve().parents[3]
SHIPPED = ("default", "embeddings", "small-instruct")
QWEN = "qwen2.5-0.5b-instruct"

MINIMAL = """
    default_model: story
    models:
      story:
        source: builtin:tiny
"""


def write_config(paths: Paths, text: str) -> Path:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(text, encoding="utf-8")
    return paths.config_file


def write_profile(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def parse_yaml(text: str, name: str = "p", source: Path | None = None) -> Profile:
    """The profile ``name`` from YAML text (dedented), as if read from ``source``."""
    return parse_profile(load_yaml(textwrap.dedent(text), source), name, source)
