"""Where an installed model's file is: `<models dir>/<name>.gguf`. A profile names an
installed model as `source: installed:NAME` (msting llm pull / import put it there;
the daemon's `llm_models` table records where it came from)."""

from __future__ import annotations

from pathlib import Path

PREFIX = "installed:"


def installed_name(source: str | None) -> str | None:
    """NAME of `installed:NAME`, else None."""
    if source and source.startswith(PREFIX):
        return source[len(PREFIX):]
    return None


def installed_path(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / f"{name}.gguf"
